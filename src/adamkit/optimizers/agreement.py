"""Gradient checks that every rank agrees on, for optimizers under ``torch.distributed``.

An optimizer looks at gradient values for ``skip_nonfinite`` (skip the step if any
gradient holds NaN or Inf) and for the zero-gradient warning, and skips a step that a
``torch.amp.GradScaler`` found overflowed. Decided on each rank from the gradient it
holds, ranks would part ways: under FSDP2 one rank skips a step its neighbour takes,
because the NaN is in its shard; under DDP a gradient changed on one rank after the
all-reduce makes that replica skip alone; under ``ZeroRedundancyOptimizer`` each rank
steps its own part of the model, so half of it would step. So each rank's findings go
into one small ``all_reduce`` per step, and every rank acts on the result.

Which ranks: the optimizer's ``process_group``, by default torch.distributed's default
group when it is initialized. Every rank of that group must call ``step()`` together
(as DDP, FSDP2 and ``ZeroRedundancyOptimizer`` do) and, if it holds sharded
parameters (DTensors), hold the same ones in the same order (FSDP2 and tensor
parallelism over the group's ranks do). A group of one rank, or torch.distributed not
initialized, means no collective.

What is reduced, each a flag set on any rank (``MAX``):

- with a GradScaler: it found this rank's gradients overflowed (the scale it sets next
  stays its own decision: under FSDP2 torch's ``ShardedGradScaler`` agrees on it when
  ``scaler.unscale_(optimizer)`` runs before ``scaler.step``);
- with ``skip_nonfinite``: a gradient on this rank holds NaN or Inf;
- with the zero-gradient warning, per DTensor parameter: this rank's shard of its
  gradient has a nonzero element, and this rank's shard moved in the step before,
  while the whole gradient was zeros. The second is known only after a step, so it
  rides on the next step's reduction: the warning comes one step late.

A plain tensor is whole on each rank that holds it (a DDP replica, the one owner under
``ZeroRedundancyOptimizer``), so its zero check needs no one else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class GradientChecks(NamedTuple):
    """One step's gradient checks, the same on every rank of the agreement group."""

    overflowed: bool  # a GradScaler said to skip the step
    finite: bool  # every gradient holds only finite values (True when skip_nonfinite is off)
    sharded: frozenset[Tensor]  # DTensor parameters: the kernels' own zero-gradient reports on them are not used
    zero: list[Tensor]  # DTensor parameters whose whole gradient is zeros, not warned about yet: watched this step
    moved_earlier: list[Tensor]  # DTensor parameters a step moved (on some rank) while their whole gradient was zeros


def is_sharded(param: Tensor) -> bool:
    """Whether ``param`` is a DTensor (FSDP2, tensor parallelism): each rank holds a shard,
    or a replica, and sees its gradient only in part."""
    return hasattr(param, "to_local")


def agreement_group(process_group: ProcessGroup | None) -> ProcessGroup | None:
    """The group whose ranks must agree on the gradient checks: ``process_group``, or
    the default group if it is None; None when there is no other rank to agree with.

    >>> agreement_group(None) is None  # torch.distributed is not initialized here
    True
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def flags_device(group: ProcessGroup) -> torch.device:
    """Where ``group``'s backend reduces: the CPU for gloo and MPI, else this rank's accelerator (NCCL: its GPU)."""
    backend = str(dist.get_backend(group))
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    accelerator = torch.accelerator.current_accelerator()  # XCCL and others (torch >= 2.6)
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def on_any_rank(flags: Sequence[bool], group: ProcessGroup) -> np.ndarray:
    """Each of ``flags`` OR-ed over the ranks of ``group``: one ``all_reduce``. Every
    rank must pass as many flags, in the same order."""
    tensor = torch.tensor(list(flags), dtype=torch.int32, device=flags_device(group))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return tensor.cpu().numpy().astype(bool)
