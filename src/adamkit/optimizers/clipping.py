"""Gradient clipping by global norm inside the step (``max_grad_norm=`` on every optimizer).

``torch.nn.utils.clip_grad_norm_(params, max_norm)`` before ``step()`` reads every
gradient for the norm, then reads and writes it again to scale it: 12 bytes per fp32
parameter on top of the step's own. Inside the step the gradients are read once for
the norm and never written: each kernel multiplies a gradient by the coefficient as it
loads it, so clipping adds 4 bytes per parameter. The gradients are left as they were.

The norm is that of the gradients of every parameter the step moves (frozen ones and
those without a gradient take no part), the coefficient torch's:
``min(max_grad_norm / (norm + 1e-6), 1)``, computed with the same tensor operations.
Where no group uses a fused kernel (``foreach=False``, ``differentiable``,
``capturable``), or the norm type is neither 2 nor inf, or a gradient is a DTensor,
the norm is computed as ``clip_grad_norm_(foreach=False)`` computes it, so that a step
equals ``clip_grad_norm_(foreach=False)`` then torch's for-loop step bit for bit.
Otherwise each dense CPU gradient's sum of squares (or largest magnitude) is taken in
fp64 in a fixed order by the fused CPU kernel's loops and the partial sums are added
exactly (``math.fsum``): the same bits on every machine and thread count, and closer to
the true norm than torch's fp32 sums. Other gradients (CUDA) are reduced with torch's
multi-tensor norm on their device, without waiting for it.

Under ``ZeroRedundancyOptimizer`` each rank's optimizer holds another part of the
parameters: ``parts_group`` finds that out (once), and the norm is then the ranks' sums
all-reduced, one collective per step. DDP replicas hold the same parameters: their
gradients are whole on every rank, and no collective is made. FSDP2's DTensors go
through torch's norm, whose DTensor reduction spans the shards.

>>> import torch, adamkit
>>> w = torch.nn.Parameter(torch.zeros(2))
>>> optimizer = adamkit.SGD([w], lr=1.0, max_grad_norm=1.0)
>>> w.grad = torch.tensor([3.0, 4.0])
>>> optimizer.step()
>>> optimizer.last_grad_norm, w.detach(), w.grad  # a step of norm 1; the gradient as it was
(tensor(5.), tensor([-0.6000, -0.8000]), tensor([3., 4.]))
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from adamkit.kernels import fused_cpu
from adamkit.optimizers.agreement import agreement_group, flags_device, is_sharded
from adamkit.state import local_tensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from adamkit.optimizers.base import RuleOptimizer

NORM_EPS = 1e-6  # added to the norm before dividing, as torch's clip_grad_norm_ does


def clip_coefficient(optimizer: RuleOptimizer) -> Tensor | None:
    """This step's clipping coefficient (a 0-dim tensor on the first gradient's device),
    or None if the optimizer does not clip. Stores the norm before clipping as
    ``optimizer.last_grad_norm``; raises as ``clip_grad_norm_(error_if_nonfinite=True)``
    does, before anything is written."""
    if optimizer.max_grad_norm is None:
        return None
    grads = [p.grad for p in optimizer.unfrozen_with_grad()]
    norm_type = float(optimizer.norm_type)
    parts = parts_group(optimizer)
    if parts is None and not grads:
        optimizer.last_grad_norm = torch.tensor(0.0)
        return None
    if parts is not None:  # every rank of the group takes this branch: one all-reduce
        total = total_norm_over_parts(optimizer, grads, norm_type, parts)
    elif _as_torch_computes_it(optimizer, grads, norm_type):
        total = torch_total_norm(grads, norm_type)
    else:
        total = fused_total_norm(grads, norm_type)
    if hasattr(total, "full_tensor"):  # a DTensor: the norm over every shard
        total = total.full_tensor()
    if optimizer.error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it "
            "cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
            "anyway, set `error_if_nonfinite=False`"
        )
    optimizer.last_grad_norm = total.detach()
    return torch.clamp(optimizer.max_grad_norm / (total + NORM_EPS), max=1.0)


def compile_norm(optimizer: RuleOptimizer) -> None:
    """Compile the loop a clipping step takes its norm with, with the gradients there are
    now (``adamkit.warmup``); no collective, nothing stored."""
    grads = [p.grad for p in optimizer.unfrozen_with_grad()]
    norm_type = float(optimizer.norm_type)
    if optimizer.max_grad_norm is not None and grads and not _as_torch_computes_it(optimizer, grads, norm_type):
        fused_total_norm(grads, norm_type)


def parts_group(optimizer: RuleOptimizer) -> ProcessGroup | None:
    """The group of ranks that each hold another part of the parameters
    (``ZeroRedundancyOptimizer``'s partitions): the norm is over all their gradients
    together. None where every rank of the agreement group holds the same parameters
    (DDP replicas, bit for bit), where they are DTensors (their norm spans the shards
    already), or where there is no other rank. Decided once per set of parameters, by
    comparing each rank's count, elements and first values in one all-reduce."""
    group = agreement_group(optimizer.process_group)
    if group is None:
        return None
    params = [p for group_ in optimizer.param_groups for p in group_["params"]]
    if any(map(is_sharded, params)):
        return None
    decided = optimizer.__dict__.get("_parts_decided")
    if decided is None or decided[0] != len(params):
        firsts = math.fsum(float(p.detach().reshape(-1)[0]) for p in params if p.numel())
        fingerprint = [len(params), sum(p.numel() for p in params), firsts]
        both = torch.tensor(fingerprint + [-value for value in fingerprint], dtype=torch.float64)
        both = both.to(flags_device(group))
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
        highest, lowest = both[:3], -both[3:]
        decided = optimizer._parts_decided = (len(params), bool((highest != lowest).any()))
    return group if decided[1] else None


def total_norm_over_parts(
    optimizer: RuleOptimizer, grads: list[Tensor], norm_type: float, group: ProcessGroup
) -> Tensor:
    """The norm of every rank's ``grads`` together: each rank's sum of |g|^p (largest
    |g| for inf) in fp64, all-reduced over ``group``; in the parameters' dtype, on the
    device of this rank's first parameter."""
    first = next(p for group_ in optimizer.param_groups for p in group_["params"])
    norms = [
        torch.linalg.vector_norm(_stored_values(g), norm_type, dtype=torch.float64)
        for g in grads
    ]
    partial = torch.zeros((), dtype=torch.float64)
    if norms:
        partial = torch.stack(norms).amax() if norm_type == math.inf else (torch.stack(norms) ** norm_type).sum()
    reduced = partial.to(flags_device(group))
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX if norm_type == math.inf else dist.ReduceOp.SUM, group=group)
    total = reduced if norm_type == math.inf else reduced ** (1 / norm_type)
    return total.to(first.device, first.real.dtype if first.is_complex() else first.dtype)


def _stored_values(grad: Tensor) -> Tensor:
    """A gradient's values for its norm: a sparse one's stored values, coalesced."""
    return grad.coalesce().values() if grad.is_sparse else grad


def _as_torch_computes_it(optimizer: RuleOptimizer, grads: list[Tensor], norm_type: float) -> bool:
    return (
        norm_type not in (2.0, math.inf)
        or not any(optimizer.uses_fused_kernel(group) for group in optimizer.param_groups)
        or any(hasattr(g, "full_tensor") for g in grads)
    )


def torch_total_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    """The norm of ``grads`` as ``clip_grad_norm_(foreach=False)`` computes it: one
    ``vector_norm`` per gradient, grouped by device and dtype, then the norm of those.
    A sparse gradient counts its stored values."""
    first_device = grads[0].device
    kinds: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for grad in grads:
        kinds.setdefault((grad.device, grad.dtype), []).append(_stored_values(grad))
    norms = [torch.linalg.vector_norm(g, norm_type) for kind in kinds.values() for g in kind]
    return torch.linalg.vector_norm(torch.stack([norm.to(first_device) for norm in norms]), norm_type)


def fused_total_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    """The 2-norm or inf-norm of ``grads``, in the dtype torch's would have: partial sums
    of squares (largest magnitudes) in fp64, exact for fp32 gradients, combined on the
    first gradient's device."""
    squares = norm_type == 2.0
    dtype = functools.reduce(torch.promote_types, {g.dtype for g in grads}).to_real()  # as torch.stack's result
    first_device = grads[0].device
    locals_ = [local_tensor(g) for g in grads]
    dense = [g for g in locals_ if not g.is_sparse and not g.is_complex()]
    on_cpu = [g for g, readable in zip(dense, fused_cpu.readable(dense)) if readable]
    taken = set(map(id, on_cpu))
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in locals_:
        if id(g) not in taken:
            by_device.setdefault(g.device, []).append(_stored_values(g))
    if not by_device:  # CPU only: a correctly rounded square root of the exact sum of the parts
        partial = fused_cpu.norm_partial(on_cpu, squares)
        return torch.tensor(math.sqrt(partial) if squares else partial, dtype=torch.float64).to(dtype)
    parts = [torch.tensor(fused_cpu.norm_partial(on_cpu, squares), dtype=torch.float64, device=first_device)]
    for device_grads in by_device.values():
        norms = torch.stack([n.to(torch.float64) for n in torch._foreach_norm(device_grads, norm_type)])
        parts.append((norms.square().sum() if squares else norms.amax()).to(first_device))
    stacked = torch.stack(parts)
    return (stacked.sum().sqrt() if squares else stacked.amax()).to(dtype)
