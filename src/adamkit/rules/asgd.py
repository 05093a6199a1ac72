"""ASGD (Polyak & Juditsky, 1992): SGD with a decaying step size and a running average
of the iterates, ``ax``, which is the estimate to use once training has settled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, is_tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath, as_number


class ASGDCoefficients(NamedTuple):
    decay_factor: Any
    step_scale: Any
    average_weight: Any
    averages: bool  # False while mu is 1: ax is a copy of the parameter
    eta: Any  # the next step's eta and mu, kept in the state
    mu: Any


def asgd_coefficients(
    hp: Mapping, step: float | Tensor, fresh: bool = False, scalars: ScalarMath = TORCH,
    eta: Any = None, mu: Any = None,
) -> ASGDCoefficients:
    """This step uses the ``eta`` and ``mu`` (0-dim tensors) the last one left; the next
    ones are ``eta = lr / (1 + lambd lr t)^alpha`` and ``mu = 1 / max(1, t - t0)``, in
    Python numbers as torch computes them (in the tensors' dtype on the capturable path,
    and where ``lr`` is a tensor)."""
    lr, lambd, alpha, t0 = hp["lr"], hp["lambd"], hp["alpha"], hp["t0"]
    if is_tensor(step) and hp.get("capturable"):
        next_eta = lr / ((1 + lambd * lr * step) ** alpha)
        next_mu = 1 / torch.maximum(step - t0, torch.ones_like(step))
        return ASGDCoefficients(1 - lambd * eta, -eta, mu, True, next_eta, next_mu)
    step = as_number(step)
    eta_value = eta.item()
    power = (lambda base, exponent: base**exponent) if is_tensor(lr) else scalars.power
    next_eta = torch.as_tensor(lr / power(1 + lambd * lr * step, alpha))
    next_mu = torch.as_tensor(1 / max(1, step - t0))
    return ASGDCoefficients(1 - lambd * eta_value, -eta_value, mu.item(), mu.item() != 1, next_eta, next_mu)


def asgd_update(param, grad, ax, unused1, unused2, unused3, c: ASGDCoefficients):
    """One ASGD step, elementwise:

        param = param (1 - lambd eta) - eta g
        ax = ax + mu (param - ax)          (ax = param while mu is 1)

    >>> import torch
    >>> hp = {"lr": 0.1, "lambd": 0.0, "alpha": 0.75, "t0": 1e6}
    >>> c = asgd_coefficients(hp, 1.0, eta=torch.tensor(0.1), mu=torch.tensor(1.0))
    >>> asgd_update(torch.tensor([1.0]), torch.tensor([2.0]), torch.zeros(1), None, None, None, c)
    (tensor([0.8000]), tensor([0.8000]), None, None, None)
    """
    param = ops.add_scaled(param * c.decay_factor, grad, c.step_scale)
    if c.averages:
        ax = ax + (param - ax) * c.average_weight
    else:
        ax = ops.clone(param)
    return param, ax, unused1, unused2, unused3


asgd = Rule(
    "asgd", ("ax",), asgd_coefficients, asgd_update, decays_real_view=True, scalar_state=(("eta", 0.0), ("mu", 1.0)),
)
