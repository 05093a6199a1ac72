"""The checks that read gradient values before a step, and the zero-gradient warning.

Two checks look at gradients: ``skip_nonfinite`` (skip the step if any gradient holds
NaN or Inf) and the zero-gradient watch (warn once per parameter when weight decay or
momentum moved a parameter whose gradient was all zeros). Where the fused CPU kernel's
loops can read a gradient in place they do (most stop at the first nonzero element);
other gradients take one ``aminmax`` each. Under ``torch.distributed`` the verdicts are
agreed by all ranks (``adamkit.optimizers.agreement``), so no rank steps alone.
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from adamkit.kernels import fused_cpu
from adamkit.optimizers.agreement import GradientChecks, agreement_group, is_sharded, on_any_rank
from adamkit.state import local_tensor

if TYPE_CHECKING:
    from adamkit.optimizers.base import RuleOptimizer

_grad_of = operator.attrgetter("grad")


def local_copies(params: list[Tensor]) -> list[Tensor]:
    """Copies of ``params``' values (a DTensor's local shard: comparing DTensors is a collective)."""
    return [local_tensor(p).detach().clone() for p in params]


def changed(params: list[Tensor], copies: list[Tensor]) -> list[Tensor]:
    """The parameters whose values differ from their ``local_copies``."""
    return [p for p, old in zip(params, copies) if not torch.equal(local_tensor(p).detach(), old)]


def grad_extremes(params: list[Tensor]) -> dict[Tensor, tuple[float, float]]:
    """(min, max) of each parameter's gradient: one pass each and one host sync per device.

    A gradient is finite when both are, all zeros when both are 0 (NaN compares
    unequal, so a NaN gradient is never "all zeros").
    """
    with_values, extremes = [], []
    for p in params:
        grad = local_tensor(p.grad)  # this rank's shard of a DTensor
        if grad.device.type == "meta":
            continue  # no values to look at
        if grad.is_sparse:
            grad = grad.coalesce().values()
        if torch.is_complex(grad):
            grad = torch.view_as_real(grad)
        if grad.numel():
            with_values.append(p)
            extremes.append(torch.stack(torch.aminmax(grad.detach())).float())
    by_device: dict[torch.device, list[int]] = {}
    for index, pair in enumerate(extremes):
        by_device.setdefault(pair.device, []).append(index)
    found = {}
    for indices in by_device.values():  # one copy to the host per device
        values = torch.stack([extremes[i] for i in indices]).cpu().tolist()
        found.update(zip((with_values[i] for i in indices), map(tuple, values)))
    return found


def grads_finite(optimizer: RuleOptimizer) -> bool:
    """Whether every unfrozen gradient is finite; the fused kernel's check where it applies."""
    params = optimizer.unfrozen_with_grad()
    grads = list(map(_grad_of, params))
    flags = fused_cpu.readable(grads)
    other = [p for p, readable in zip(params, flags) if not readable]
    readable = [g for g, flag in zip(grads, flags) if flag]
    return fused_cpu.all_finite(readable) and all(
        math.isfinite(low) and math.isfinite(high) for low, high in grad_extremes(other).values()
    )


def grads_nonzero(params: list[Tensor]) -> list[bool]:
    """Per parameter: its gradient (this rank's shard of it) has a nonzero element; the
    fused kernel's read where it applies, else one ``aminmax``."""
    grads = list(map(_grad_of, params))
    flags = fused_cpu.readable(grads)
    read = iter(fused_cpu.any_nonzero([g for g, flag in zip(grads, flags) if flag]))
    extremes = grad_extremes([p for p, flag in zip(params, flags) if not flag])
    return [next(read) if flag else extremes.get(p, (0.0, 0.0)) != (0.0, 0.0) for p, flag in zip(params, flags)]


def agreed_checks(optimizer: RuleOptimizer, overflowed: bool, scaled: bool) -> GradientChecks:
    """This step's gradient checks, as every rank of the agreement group sees them
    (``adamkit.optimizers.agreement``); without a group, this rank's own.
    ``overflowed``: a GradScaler (``scaled``: one is in use) said to skip this step."""
    finite = not optimizer.skip_nonfinite or grads_finite(optimizer)
    group = agreement_group(optimizer.process_group)
    if group is None:
        return GradientChecks(overflowed, finite, frozenset(), [], [])
    # A capturable step must not wait for the device (CUDA graphs): no zero-grad check.
    sharded = [
        p for g in optimizer.param_groups if not g.get("capturable") for p in g["params"] if is_sharded(p)
    ]
    watched = sharded if optimizer.warn_zero_grad_update else []
    if not (scaled or optimizer.skip_nonfinite or watched):
        return GradientChecks(overflowed, finite, frozenset(sharded), [], [])
    stepping = [p.grad is not None and p not in optimizer.frozen for p in watched]
    stepped = [p for p, steps in zip(watched, stepping) if steps]
    nonzero_of = dict(zip(stepped, grads_nonzero(stepped)))
    nonzero = [nonzero_of.get(p, False) for p in watched]
    moved = [p in optimizer._moved_shards for p in watched]
    flags = on_any_rank([overflowed, not finite, *nonzero, *moved], group)
    optimizer._moved_shards = set()
    zero = [
        p for p, steps, anywhere in zip(watched, stepping, flags[2:])
        if steps and not anywhere and p not in optimizer._warned_zero_grad
    ]
    return GradientChecks(
        overflowed=flags[0],
        finite=not flags[1],
        sharded=frozenset(sharded),
        zero=zero,
        moved_earlier=[p for p, anywhere in zip(watched, flags[2 + len(watched):]) if anywhere],
    )


def warn_moved(optimizer: RuleOptimizer, params: list[Tensor], stacklevel: int) -> None:
    """Warn, once per parameter, that a step moved ``params`` although their gradient was all zeros."""
    for p in params:
        if p in optimizer._warned_zero_grad:
            continue
        optimizer._warned_zero_grad.add(p)
        warnings.warn(
            f"{type(optimizer).__name__}: a parameter of shape {tuple(p.shape)} has an all-zero "
            "gradient but a step changed it (weight decay or momentum). A zero gradient "
            "does not freeze a parameter: use adamkit.freeze(optimizer, params), or set its "
            ".grad to None. Pass warn_zero_grad_update=False to silence this warning.",
            stacklevel=stacklevel + 1,
        )
