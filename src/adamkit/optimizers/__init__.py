"""The public optimizer classes, each a ``torch.optim.Optimizer``."""

from adamkit.optimizers.adagrad import Adagrad
from adamkit.optimizers.adam import Adam, AdamW
from adamkit.optimizers.base import RuleOptimizer
from adamkit.optimizers.rmsprop import RMSprop
from adamkit.optimizers.sgd import SGD
from adamkit.optimizers.yogi import Yogi

__all__ = ["Adagrad", "Adam", "AdamW", "RMSprop", "RuleOptimizer", "SGD", "Yogi"]
