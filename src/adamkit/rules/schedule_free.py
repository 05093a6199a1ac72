"""Schedule-Free AdamW (Defazio et al., 2024, "The Road Less Scheduled"): no learning-rate
schedule; the parameter is kept at ``y``, an interpolation of ``z`` (the SGD-like
iterate) and ``x`` (a weighted average of the ``z`` sequence, the one to evaluate).
Updated in the ``y`` form of the reference implementation (schedulefree's
``AdamWScheduleFree``): ``x`` is never stored, ``train()``/``eval()`` move between ``y``
and ``x``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import Tensor

from adamkit.rules import ops
from adamkit.rules.rule import Rule
from adamkit.rules.scalars import TORCH, ScalarMath, as_number


def schedule_free_group_step(hp: Mapping) -> dict[str, Any]:
    """The group's bookkeeping after this step, under schedulefree's names: the step
    count ``k``, the warmed-up ``scheduled_lr``, its running maximum ``lr_max`` and the
    sum of the averaging weights ``(k+1)^r lr_max^weight_lr_power``.

    >>> hp = {"lr": 0.1, "k": 0, "warmup_steps": 2, "lr_max": -1.0, "weight_sum": 0.0, "r": 0.0, "weight_lr_power": 2.0}
    >>> schedule_free_group_step(hp)
    {'k': 1, 'scheduled_lr': 0.05, 'lr_max': 0.05, 'weight_sum': 0.0025000000000000005}
    """
    k, warmup = hp["k"], hp["warmup_steps"]
    lr = as_number(hp["lr"])
    scheduled_lr = lr * ((k + 1) / warmup if k < warmup else 1.0)
    lr_max = max(scheduled_lr, hp["lr_max"])
    weight = ((k + 1) ** hp["r"]) * (lr_max ** hp["weight_lr_power"])
    return {"k": k + 1, "scheduled_lr": scheduled_lr, "lr_max": lr_max, "weight_sum": hp["weight_sum"] + weight}


class ScheduleFreeCoefficients(NamedTuple):
    fresh: bool  # z starts at the parameter
    beta2: Any
    one_minus_beta2: Any
    bias_correction2: Any
    eps: Any
    weight_decay: Any
    average_weight: Any  # c_(k+1): the new z's weight in x
    y_step_scale: Any
    z_step_scale: Any


def schedule_free_coefficients(
    hp: Mapping, step: float | Tensor | None, fresh: bool = False, scalars: ScalarMath = TORCH
) -> ScheduleFreeCoefficients:
    """From the group's values after ``schedule_free_group_step`` (``hp``), with
    schedulefree's expressions."""
    beta1, beta2 = hp["betas"]
    k, lr = hp["k"], hp["scheduled_lr"]
    weight = (k**hp["r"]) * (hp["lr_max"] ** hp["weight_lr_power"])
    average_weight = weight / hp["weight_sum"] if hp["weight_sum"] != 0 else 0.0
    return ScheduleFreeCoefficients(
        fresh, beta2, 1 - beta2, 1 - scalars.power(beta2, k), hp["eps"], hp["weight_decay"], average_weight,
        lr * (beta1 * (1 - average_weight) - 1), -lr,
    )


def schedule_free_update(param, grad, z, exp_avg_sq, unused2, unused3, c: ScheduleFreeCoefficients):
    """One step, elementwise, on ``y`` (the parameter):

        v = beta2 v + (1 - beta2) g^2 ;  n = g / (sqrt(v / (1 - beta2^k)) + eps) + wd y
        y = (1 - c) y + c z - lr (1 - beta1 (1 - c)) n
        z = z - lr n

    >>> import torch
    >>> hp = {"betas": (0.9, 0.999), "eps": 0.0, "weight_decay": 0.0, "k": 1, "scheduled_lr": 0.1,
    ...       "lr_max": 0.1, "weight_sum": 0.01, "r": 0.0, "weight_lr_power": 2.0}
    >>> c = schedule_free_coefficients(hp, None, fresh=True)
    >>> zeros = torch.zeros(1)
    >>> schedule_free_update(torch.tensor([1.0]), torch.tensor([2.0]), zeros, zeros, None, None, c)[:3]
    (tensor([0.9000]), tensor([0.9000]), tensor([0.0040]))
    """
    if c.fresh:
        z = ops.clone(param)
    exp_avg_sq = ops.ema_square(exp_avg_sq, grad, c.beta2, c.one_minus_beta2)
    normalized = ops.div(grad, ops.sqrt(ops.div(exp_avg_sq, c.bias_correction2)) + c.eps)
    if c.weight_decay != 0:  # at y, on the normalized gradient
        normalized = ops.add_scaled(normalized, param, c.weight_decay)
    param = ops.add_scaled(ops.lerp(param, z, c.average_weight), normalized, c.y_step_scale)
    return param, ops.add_scaled(z, normalized, c.z_step_scale), exp_avg_sq, unused2, unused3


schedule_free_adamw = Rule(
    "schedule_free_adamw", ("z", "exp_avg_sq"), schedule_free_coefficients, schedule_free_update,
    group_step=schedule_free_group_step, decays_in_update=True, full_precision_slots=("z",),
)
