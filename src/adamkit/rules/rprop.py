"""Rprop (Riedmiller & Braun, 1993): a step size per element that grows while the
gradient keeps its sign and shrinks when it flips; only the gradient's sign is used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath


class RpropCoefficients(NamedTuple):
    etaminus: Any
    etaplus: Any
    step_size_min: Any
    step_size_max: Any


def rprop_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH
) -> RpropCoefficients:
    return RpropCoefficients(*hp["etas"], *hp["step_sizes"])


def rprop_update(param, grad, prev, step_size, unused2, unused3, c: RpropCoefficients):
    """One Rprop step, elementwise (``s`` the step size, ``g'`` the previous gradient):

        s = clamp(s * (etaplus if g g' > 0, etaminus if g g' < 0, else 1), min, max)
        g = 0 where g g' < 0 (no step, and no flip seen at the next one)
        param -= sign(g) s ;  g' = g

    torch's order of selects: the factor is built in the gradient's dtype and compared
    with ``etaminus`` in it.

    >>> import torch
    >>> c = rprop_coefficients({"etas": (0.5, 1.2), "step_sizes": (1e-6, 50)}, 1.0)
    >>> rprop_update(torch.tensor([1.0, 1.0]), torch.tensor([3.0, -3.0]), torch.tensor([1.0, 1.0]),
    ...              torch.tensor([0.1, 0.1]), None, None, c)
    (tensor([0.8800, 1.0000]), tensor([3., 0.]), tensor([0.1200, 0.0500]), None, None)
    """
    sign = ops.sign(grad * prev)
    factor = ops.where(sign > 0, c.etaplus, sign)
    factor = ops.where(factor < 0, c.etaminus, factor)
    factor = ops.where(factor != 0, factor, 1.0)
    step_size = ops.clamp(step_size * factor, c.step_size_min, c.step_size_max)
    grad = ops.where(factor != c.etaminus, grad, 0.0)
    return ops.addcmul(param, ops.sign(grad), step_size, -1), grad, step_size, unused2, unused3


rprop = Rule("rprop", ("prev", "step_size"), rprop_coefficients, rprop_update)
