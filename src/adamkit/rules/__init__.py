"""Update rules: the math of each algorithm, written once.

A rule (:class:`Rule`) is a coefficient function, run once per step, and an
elementwise ``update`` written with ``adamkit.rules.ops`` and plain arithmetic. The
update never writes to its inputs. Kernels (``adamkit.kernels``) decide how it is run
over many tensors and write the results back; optimizers (``adamkit.optimizers``)
decide which tensors exist.

The operations inside a rule are the same, in the same order, as ``torch.optim``'s
for-loop implementation, so the eager kernel's results agree with it bit for bit.
"""

from adamkit.rules.adadelta import adadelta
from adamkit.rules.adagrad import adagrad
from adamkit.rules.adam import adam, bias_corrections
from adamkit.rules.adamax import adamax
from adamkit.rules.ademamix import ademamix
from adamkit.rules.adan import adan
from adamkit.rules.adopt import adopt
from adamkit.rules.asgd import asgd
from adamkit.rules.lion import lion
from adamkit.rules.nadam import nadam
from adamkit.rules.radam import radam
from adamkit.rules.rmsprop import rmsprop
from adamkit.rules.rprop import rprop
from adamkit.rules.rule import SLOT_COUNT, Rule, bind
from adamkit.rules.schedule_free import schedule_free_adamw
from adamkit.rules.scalars import EXACT, TORCH, ScalarMath
from adamkit.rules.sgd import sgd
from adamkit.rules.transforms import GradientTransform, gradient_transform, transform_gradient
from adamkit.rules.yogi import yogi

__all__ = [
    "GradientTransform",
    "EXACT",
    "SLOT_COUNT",
    "Rule",
    "ScalarMath",
    "TORCH",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "ademamix",
    "adan",
    "adopt",
    "asgd",
    "bias_corrections",
    "bind",
    "gradient_transform",
    "lion",
    "transform_gradient",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
    "schedule_free_adamw",
    "sgd",
    "yogi",
]
