"""A parameter's first state: its step counter and the algorithm's tensors, in the
optimizer's state format, in flat buffers where the fused kernels will step it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from adamkit.optimizers.hyperparameters import scalar_dtype
from adamkit.state import allocate_flat_state, local_tensor
from adamkit.state.formats import SCALE_SUFFIX, StateSpec, blocks_of, constant_codes

if TYPE_CHECKING:
    from adamkit.optimizers.base import RuleOptimizer


def initial_state(param: Tensor, spec: StateSpec) -> dict[str, Tensor]:
    """The algorithm's state tensors for a parameter seen for the first time, each real
    component at its fill (a complex one at ``fill + fill j``, as torch's Adagrad), in
    ``spec``'s storage format. A fill of None is state the rule makes on its first step."""
    state = {}
    for name, fill in spec.fills.items():
        dtype = spec.storage_dtype(param, name)
        if fill is not None and dtype is torch.int8:
            state[name] = torch.full_like(param, constant_codes(fill), dtype=dtype, memory_format=torch.preserve_format)
            blocks = blocks_of(local_tensor(param))  # a shard's blocks: each rank scales its own
            state[name + SCALE_SUFFIX] = torch.full((blocks,), fill, dtype=torch.float32, device=param.device)
        elif fill is not None:
            state[name] = torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format)
            (torch.view_as_real(state[name]) if param.is_complex() else state[name]).fill_(fill)
    return state


def new_state(optimizer: RuleOptimizer, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
    """A parameter's whole first state, its ``step`` counter and the rule's scalar state
    included (on the CPU, or on the parameter's device when ``capturable`` or ``fused``,
    with torch's dtypes)."""
    state: dict[str, Tensor] = {}
    if optimizer.counts_steps:
        if group.get("fused"):
            if not (param.device.type in _get_fused_kernels_supported_devices() and torch.is_floating_point(param)):
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of "
                    f"supported devices: {_get_fused_kernels_supported_devices()} "
                    f"but {param.dtype} and {param.device.type}"
                )
        on_device = group.get("capturable") or group.get("fused")
        for name, fill in {"step": 0.0, **optimizer.scalar_fills(group)}.items():
            state[name] = (
                torch.full((), fill, dtype=scalar_dtype(group.get("fused")), device=param.device)
                if on_device
                else torch.tensor(fill, dtype=scalar_dtype())
            )
    state.update(initial_state(param, optimizer.state_spec(group)))
    return state


def create_state_now(optimizer: RuleOptimizer, params: list[Tensor], group: dict[str, Any]) -> None:
    """Give ``params`` (of ``group``) their initial state now, not at their first step
    (torch's Adagrad does); in flat buffers where the fused kernel will use it."""
    created: dict[int, dict[str, Tensor]] = {}
    if optimizer.uses_fused_kernel(group):
        batches: dict[tuple, list[Tensor]] = {}
        for p in params:
            if optimizer.fused_takes(p):
                batches.setdefault((p.dtype, p.device), []).append(p)
        spec = optimizer.state_spec(group)
        fills = {name: fill for name, fill in spec.fills.items() if fill is not None}
        for batch in batches.values():
            made = allocate_flat_state(
                batch, fills, step_dtype=spec.step_dtype, scalar_fills=spec.scalar_fills, storage=spec.storage_dtype
            )
            created.update(zip(map(id, batch), made))
    for p in params:
        optimizer.state[p] = created.get(id(p)) or new_state(optimizer, p, group)
