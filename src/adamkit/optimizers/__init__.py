"""The public optimizer classes, each a ``torch.optim.Optimizer``."""

from adamkit.optimizers.adadelta import Adadelta
from adamkit.optimizers.adagrad import Adagrad
from adamkit.optimizers.adam import Adam, AdamW
from adamkit.optimizers.adamax import Adamax
from adamkit.optimizers.ademamix import AdEMAMix
from adamkit.optimizers.adan import Adan
from adamkit.optimizers.adopt import ADOPT
from adamkit.optimizers.asgd import ASGD
from adamkit.optimizers.base import RuleOptimizer
from adamkit.optimizers.lion import Lion
from adamkit.optimizers.nadam import NAdam
from adamkit.optimizers.radam import RAdam
from adamkit.optimizers.dispatch import warmup
from adamkit.optimizers.rmsprop import RMSprop
from adamkit.optimizers.rprop import Rprop
from adamkit.optimizers.schedule_free import ScheduleFreeAdamW
from adamkit.optimizers.sgd import SGD
from adamkit.optimizers.yogi import Yogi

__all__ = ["ADOPT", "ASGD", "AdEMAMix", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "Adan", "Lion", "NAdam", "RAdam", "RMSprop", "Rprop", "RuleOptimizer", "SGD", "ScheduleFreeAdamW", "Yogi", "warmup"]
