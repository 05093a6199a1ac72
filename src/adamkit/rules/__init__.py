"""Update rules: the math of each algorithm, written once.

A rule is a pure function ``rule(param, grad, state, hp, step) -> (param, state)``.
It reads tensors and hyperparameters and returns new tensors; it never writes to its
inputs. Kernels (``adamkit.kernels``) decide how the rule is run over many tensors and
write the results back; optimizers (``adamkit.optimizers``) decide which tensors exist.

The operations inside a rule are chosen to be the same, in the same order, as
``torch.optim``'s for-loop implementation, so results agree bit for bit.
"""

from adamkit.rules.adagrad import adagrad
from adamkit.rules.adam import adam, bias_corrected_update
from adamkit.rules.rmsprop import rmsprop
from adamkit.rules.sgd import sgd
from adamkit.rules.transforms import maximize_and_weight_decay
from adamkit.rules.yogi import yogi

__all__ = ["adagrad", "adam", "bias_corrected_update", "maximize_and_weight_decay", "rmsprop", "sgd", "yogi"]
