"""Per-parameter optimizer state carved out of contiguous buffers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _like_param(local: Tensor, param: Tensor) -> Tensor:
    """``local`` wrapped as a DTensor placed like ``param`` when ``param`` is one."""
    if local_tensor(param) is param:
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def allocate_flat_state(
    params: Sequence[Tensor],
    fills: Mapping[str, float],
    *,
    step_dtype: torch.dtype | None,
    initial: Sequence[Mapping[str, Tensor]] | None = None,
) -> list[dict[str, Tensor]]:
    """New state for ``params`` (one device and dtype), each entry a view into a shared buffer.

    ``fills`` names the state tensors and their initial value; ``initial``, if given,
    holds existing per-parameter values to copy in instead (a loaded checkpoint). With
    ``step_dtype``, each parameter also gets a 0-dim ``step`` view into one buffer of
    step counts, as torch's 0-dim ``step`` tensors. State tensors are shaped like the
    parameter (DTensors for DTensor parameters) and contiguous.

    >>> a, b = torch.zeros(2, 3), torch.zeros(4)
    >>> states = allocate_flat_state([a, b], {"exp_avg": 0.0}, step_dtype=torch.float32)
    >>> states[1]["exp_avg"].shape, states[0]["exp_avg"].untyped_storage().nbytes()
    (torch.Size([4]), 40)
    """
    locals_ = [local_tensor(p) for p in params]
    sizes = [t.numel() for t in locals_]
    device, dtype = locals_[0].device, locals_[0].dtype
    states: list[dict[str, Tensor]] = [{} for _ in params]
    if step_dtype is not None:
        steps = torch.zeros(len(params), dtype=step_dtype)
        for index, state in enumerate(states):
            if initial is not None and "step" in initial[index]:
                steps[index] = initial[index]["step"]
            state["step"] = steps[index]
    for name, fill in fills.items():
        buffer = torch.full((sum(sizes),), fill, dtype=dtype, device=device)
        for state, param, local, chunk, index in zip(states, params, locals_, buffer.split(sizes), range(len(params))):
            view = chunk.view(local.shape)
            if initial is not None and name in initial[index]:
                view.copy_(local_tensor(initial[index][name]))
            state[name] = _like_param(view, param)
    return states
