"""The GradScaler protocol: a ``torch.amp.GradScaler`` hands the loss scale to the step.

An optimizer whose class sets ``_step_supports_amp_scaling`` gets, from
``GradScaler.step``, the attributes ``found_inf`` (whether a gradient overflowed; the
step must then change nothing) and ``grad_scale`` (the scale to divide gradients by),
instead of the scaler unscaling and checking the gradients itself, as with torch's fused
optimizers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer


class ScalerVerdict(NamedTuple):
    scaled: bool  # a GradScaler drives this step
    overflowed: bool  # it found an overflow: skip the step
    grad_scale: Tensor | None  # what to divide gradients by, if anything


def scaler_verdict(optimizer: Optimizer) -> ScalerVerdict:
    """What a GradScaler said about this step (nothing, without one)."""
    found_inf = getattr(optimizer, "found_inf", None)
    overflowed = found_inf is not None and bool(found_inf)  # one host sync on a GPU, as GradScaler's own path
    return ScalerVerdict(found_inf is not None, overflowed, getattr(optimizer, "grad_scale", None))


def unscale_grads(params: list[Tensor], grad_scale: Tensor) -> None:
    """Divide the gradients of ``params`` by the loss scale, in place, as torch's fused
    optimizers do (GradScaler's scales are powers of two: exact)."""
    by_device: dict[tuple, list[Tensor]] = {}
    for p in params:
        grad = p.grad
        if grad.is_sparse:
            grad.div_(grad_scale.to(grad.device))
        else:
            by_device.setdefault((grad.device, grad.dtype), []).append(grad)
    for (device, _), grads in by_device.items():
        torch._foreach_div_(grads, grad_scale.to(device))
