"""AdaGrad (Duchi, Hazan & Singer, 2011) with learning-rate decay."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath


class AdagradCoefficients(NamedTuple):
    eps: Any
    neg_clr: Any


def adagrad_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> AdagradCoefficients:
    """At step ``step`` (1 on the first call) the rate is ``lr / (1 + (step - 1) lr_decay)``."""
    return AdagradCoefficients(hp["eps"], -(hp["lr"] / (1 + (step - 1) * hp["lr_decay"])))


def adagrad_update(param, grad, state_sum, unused1, unused2, unused3, c: AdagradCoefficients):
    """One AdaGrad step:

        s = s + g^2
        param -= lr / (1 + (step - 1) lr_decay) * g / (sqrt(s) + eps)

    >>> c = adagrad_coefficients({"lr": 0.1, "lr_decay": 0.0, "eps": 0.0}, 1.0)
    >>> adagrad_update(torch.tensor([1.0]), torch.tensor([2.0]), torch.zeros(1), None, None, None, c)
    (tensor([0.9000]), tensor([4.]), None, None, None)
    """
    state_sum = ops.addcmul(state_sum, grad, grad, 1)
    std = ops.sqrt(state_sum) + c.eps
    return ops.addcdiv(param, grad, std, c.neg_clr), state_sum, unused1, unused2, unused3


def adagrad_sparse_update(param: Tensor, grad: Tensor, state_sum: Tensor, c: AdagradCoefficients):
    """AdaGrad on a sparse gradient: only the rows it touches change.

    The update is non-linear in g, so duplicate indices are summed first.
    """
    grad = grad.coalesce()
    indices, values = grad._indices(), grad._values()
    state_sum = state_sum.add(_sparse_like(grad, indices, values.pow(2)))
    std_values = ops.sqrt(state_sum.sparse_mask(grad)._values()).add_(c.eps)
    return param.add(_sparse_like(grad, indices, values / std_values), alpha=c.neg_clr), state_sum


def _sparse_like(grad: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    return torch.sparse_coo_tensor(indices, values, grad.size())


adagrad = Rule("adagrad", ("sum",), adagrad_coefficients, adagrad_update, adagrad_sparse_update)
