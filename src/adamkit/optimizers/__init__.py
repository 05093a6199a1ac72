"""The public optimizer classes, each a ``torch.optim.Optimizer``."""

from adamkit.optimizers.adam import Adam, AdamW
from adamkit.optimizers.base import RuleOptimizer

__all__ = ["Adam", "AdamW", "RuleOptimizer"]
