"""Where a group's tensors live, laid out for a fused pass, and the per-step checks that
nothing has moved since.

The pass works on raw addresses of the user's own tensors. A plan (``FusedPlan``)
records them once; each step re-reads and checks, mostly in C loops over lists, what
could have moved: each parameter's address, each gradient's address, dtype, size,
device and layout, and the state per buffer (``FusedPlan.state_unchanged``). Anything
else rebuilds the plan, and the plan holds references to every tensor whose memory it
uses. ``adamkit.kernels.fused`` decides which tensors go into plans.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adamkit.rules import SLOT_COUNT, Rule
from adamkit.state import TrackedState, local_tensor
from adamkit.state.formats import SCALE_SUFFIX, StateSpec, blocks_of

STEP_DTYPES = (torch.float32, torch.float64)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_dtype_of = operator.attrgetter("dtype")
_device_of = operator.attrgetter("device")
_version_of = operator.attrgetter("_version")


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype a pass reads: complex tensors are handled as their real view."""
    return dtype.to_real() if dtype.is_complex else dtype


def same_strides(t: Tensor, like: Tensor) -> bool:
    """Element i of ``t`` lies where element i of ``like`` does, counted in elements
    (both local tensors): same device and shape, equal strides wherever a dimension has
    more than one element."""
    return (
        t.layout is torch.strided
        and t.device == like.device
        and t.shape == like.shape
        and all(a == b for a, b, size in zip(t.stride(), like.stride(), like.shape) if size != 1)
    )


def same_layout(t: Tensor, like: Tensor) -> bool:
    """``t`` can be read element for element alongside ``like``: ``same_strides`` and dtype."""
    return t.dtype is like.dtype and same_strides(t, like)


def element_count(t: Tensor) -> int:
    return t.numel() * (2 if t.dtype.is_complex else 1)


def step_usable(step) -> bool:
    return (
        isinstance(step, Tensor)
        and step.dtype in STEP_DTYPES
        and step.device.type == "cpu"
        and step.dim() == 0
        and not step.requires_grad
    )


def work_items(numels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tensors cut into items of at most ``size`` elements: (tensor, start, end) per item."""
    counts = np.maximum(1, -(-numels // size))
    items = np.repeat(np.arange(numels.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    starts = (np.arange(items.size) - first) * size
    ends = np.minimum(starts + size, numels[items])
    return items, starts, ends


def addresses_of(tensors: Sequence[Tensor]) -> np.ndarray:
    return np.fromiter(map(Tensor.data_ptr, tensors), np.int64, len(tensors))


def _use_counts(storages: list) -> list[int]:
    """How many tensors (and storage objects) use each storage."""
    return [torch._C._storage_Use_Count(storage._cdata) for storage in storages]


def _grads_on(device: torch.device) -> Callable[[list[Tensor]], bool]:
    """A check that every tensor of a list is on ``device``; on the CPU one attribute read each."""
    if device.type == "cpu":
        is_cpu = operator.attrgetter("is_cpu")
        return lambda tensors: all(map(is_cpu, tensors))
    return lambda tensors: all(map(operator.eq, map(_device_of, tensors), repeat(device)))


def _entry_fits(t: Tensor, like: Tensor | int | torch.dtype) -> bool:
    if isinstance(like, torch.dtype):
        return step_usable(t) and t.dtype is like
    if isinstance(like, int):
        return scales_fit(t, like)
    return same_strides(t, like)


def scales_fit(t: Tensor | None, blocks: int) -> bool:
    return (
        isinstance(t, Tensor) and t.dtype is torch.float32 and t.dim() == 1 and t.numel() == blocks
        and t.is_contiguous() and not t.requires_grad
    )


def _storage_owner(t: Tensor) -> Tensor:
    """The tensor whose version counter ``t`` shares: its base if it is a view."""
    return t if t._base is None else t._base


@dataclass
class FusedPlan:
    """Where some of a group's tensors of one dtype live, laid out for the fused pass.

    ``params`` are the parameters (their local tensors, for DTensors, in ``locals_``).
    Each step, ``addresses`` checks that nothing the plan relies on has changed and
    returns the parameter and gradient addresses; None means: build a new plan.
    ``items``, ``starts`` and ``ends`` cut the tensors into the kernel's work items.
    """

    params: list[Tensor]
    locals_: list[Tensor]
    dtype: torch.dtype
    device: torch.device
    numels: np.ndarray  # torch's numel of each parameter
    elements: np.ndarray  # elements the kernel walks (twice the numel for complex)
    contiguous: list[bool]
    strided: list[int]  # positions of non-contiguous parameters, whose grads need a stride check
    slots: list[np.ndarray | None]
    slot_dtypes: list[torch.dtype | None]  # each slot's storage dtype, real (None: the rule keeps no such state)
    scales: list[np.ndarray | None]  # an int8 slot's block scales, per parameter
    tensor_ids: np.ndarray  # each parameter's place among the group's stepped ones: keys its rounding noise
    step_addresses: np.ndarray | None
    step_dtype: torch.dtype | None
    scalar_addresses: dict[str, np.ndarray]  # the rule's scalar state (``Rule.scalar_state``), of the step's dtype
    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    fresh: np.ndarray
    param_addresses: np.ndarray
    state_mapping: Mapping
    state_values: list[dict]
    entry_states: list[dict]
    entry_names: list[str]
    entry_values: list[Tensor]  # the state tensors, as the user sees them
    entry_locals: list[Tensor]
    entry_params: list[Tensor | int | torch.dtype]  # what each entry must match: the local parameter it is
    # laid out like, the number of blocks for an int8 slot's scales, the dtype of a step counter or scalar state
    entry_addresses: np.ndarray
    untracked: list[int]  # entries whose dict is not a TrackedState: checked one by one
    owners: list[Tensor]  # one tensor per version counter the state tensors use
    versions: list[int]
    storages: list  # the storages the state tensors use, kept alive here
    use_counts: list[int]
    writes: int  # TrackedState.writes when the plan was last checked in full
    grads_on_device: Callable[[list[Tensor]], bool]
    distributed: bool
    launch_data: dict[str, Any] = field(default_factory=dict)  # what a kernel keeps for this plan (device tables)

    def rounds_stochastically(self, spec: StateSpec) -> bool:
        """Whether a pass over this plan rounds state stochastically: only where the format
        asks for it and a slot is stored in bf16 or int8. A group's tensors under the
        threshold keep fp32 state, and their pass compiles without the rounding's key."""
        return spec.stochastic and bool({torch.bfloat16, torch.int8} & set(self.slot_dtypes))

    def state_unchanged(self, states: Mapping[Tensor, dict]) -> bool:
        """The optimizer's state holds the same tensors, at the same addresses, with the
        same shape and layout as when the plan was made.

        Per step this reads a few numbers, not every state tensor: whether any state dict
        was written (``TrackedState.writes``), each storage's use count (``.data = ...``
        or ``set_`` on a state tensor lets go of its storage; a live extra view holds it
        once more) and version counter (in-place operations, ``resize_``,
        ``as_strided_``). If any moved, every entry is checked one by one.
        """
        if not (
            states is self.state_mapping
            and len(states) == len(self.state_values)
            and all(map(operator.is_, states.values(), self.state_values))
        ):
            return False
        untracked = self.untracked
        if (
            TrackedState.writes == self.writes
            and _use_counts(self.storages) == self.use_counts
            and list(map(_version_of, self.owners)) == self.versions
            and all(self.entry_states[i].get(self.entry_names[i]) is self.entry_values[i] for i in untracked)
            and all(local_tensor(self.entry_values[i]).data_ptr() == self.entry_addresses[i] for i in untracked)
        ):
            return True
        return self._check_every_entry()

    def _check_every_entry(self) -> bool:
        if not all(map(operator.is_, map(dict.get, self.entry_states, self.entry_names), self.entry_values)):
            return False
        entry_locals = list(map(local_tensor, self.entry_values)) if self.distributed else self.entry_values
        if not np.array_equal(addresses_of(entry_locals), self.entry_addresses):
            return False  # `.data = ...` or `set_` moved a state tensor
        if not all(_entry_fits(t, like) for t, like in zip(entry_locals, self.entry_params)):
            return False  # resize_, as_strided_ or set_ in place
        self.writes = TrackedState.writes
        self.use_counts = _use_counts(self.storages)
        self.versions = list(map(_version_of, self.owners))
        return True

    def addresses(self, grads: list[Tensor], states: Mapping[Tensor, dict]) -> tuple[np.ndarray, np.ndarray] | None:
        """(parameter, gradient) addresses for this step, or None if the plan is stale.

        ``grads`` are the parameters' gradients, in order. The gradient setter checks
        dtype, device and size, but ``grad.data = ...`` bypasses it, and reading past a
        tensor's end must be impossible: so all are checked, every step.
        """
        if not self.state_unchanged(states):
            return None
        locals_ = list(map(local_tensor, self.params)) if self.distributed else self.params
        param_addresses = addresses_of(locals_)
        if not np.array_equal(param_addresses, self.param_addresses):
            return None
        grads = list(map(local_tensor, grads)) if self.distributed else grads
        try:
            laid_out = list(map(Tensor.is_contiguous, grads)) == self.contiguous
        except RuntimeError:  # layouts without strides (sparse CSR, mkldnn)
            return None
        if not (
            laid_out
            and self.grads_on_device(grads)
            and all(map(operator.is_, map(_dtype_of, grads), repeat(self.dtype)))
            and np.array_equal(np.fromiter(map(Tensor.numel, grads), np.int64, len(grads)), self.numels)
            and all(same_layout(grads[i], locals_[i]) for i in self.strided)
        ):
            return None
        return param_addresses, addresses_of(grads)


def build_plan(
    rule: Rule,
    params: Sequence[Tensor],
    states: Mapping[Tensor, dict[str, Tensor]],
    slot_names: Sequence[str],
    fresh: Sequence[bool],
    step_dtype: torch.dtype | None,
    item_elements: int,
    tensor_ids: Sequence[int],
) -> FusedPlan:
    """Lay out ``params`` (one dtype and device; dense, with usable state of one storage
    dtype per slot, laid out like them) for a fused pass over work items of ``item_elements``."""
    locals_ = [local_tensor(p) for p in params]
    param_states = [states.get(p, {}) for p in params]
    slots = np.zeros((SLOT_COUNT, len(params)), np.int64)
    positions = [rule.slots.index(name) for name in slot_names]
    slot_dtypes = [None] * SLOT_COUNT
    for name, row in zip(slot_names, positions):
        slot_dtypes[row] = storage_dtype(local_tensor(param_states[0][name]).dtype) if params else None
    scales = np.zeros((SLOT_COUNT, len(params)), np.int64)
    entries = []
    for column, (state, local) in enumerate(zip(param_states, locals_)):
        for name, row in zip(slot_names, positions):
            slots[row, column] = local_tensor(state[name]).data_ptr()
            entries.append((state, name, local))
            if slot_dtypes[row] is torch.int8:
                scales[row, column] = state[name + SCALE_SUFFIX].data_ptr()
                entries.append((state, name + SCALE_SUFFIX, blocks_of(local)))
    step_addresses, scalar_addresses = None, {}
    if step_dtype is not None:
        step_addresses = np.array([s["step"].data_ptr() for s in param_states], np.int64)
        entries += [(s, "step", step_dtype) for s in param_states]
        for name, _ in rule.scalar_state:
            scalar_addresses[name] = np.array([s[name].data_ptr() for s in param_states], np.int64)
            entries += [(s, name, step_dtype) for s in param_states]
    entry_states = [state for state, _, _ in entries]
    entry_names = [name for _, name, _ in entries]
    entry_values = [state[name] for state, name, _ in entries]
    entry_locals = [local_tensor(t) for t in entry_values]
    owners = list({id(owner): owner for owner in map(_storage_owner, entry_locals)}.values())
    storages = list({s._cdata: s for s in (t.untyped_storage() for t in entry_locals)}.values())
    elements = np.array([element_count(t) for t in locals_], np.int64)
    items, starts, ends = work_items(elements, item_elements)
    contiguous = [t.is_contiguous() for t in locals_]
    return FusedPlan(
        params=list(params),
        locals_=locals_,
        dtype=locals_[0].dtype,
        device=locals_[0].device,
        numels=np.array([t.numel() for t in locals_], np.int64),
        elements=elements,
        contiguous=contiguous,
        strided=[i for i, c in enumerate(contiguous) if not c],
        slots=[slots[row] if row in positions else None for row in range(SLOT_COUNT)],
        slot_dtypes=slot_dtypes,
        scales=[scales[row] if slot_dtypes[row] is torch.int8 else None for row in range(SLOT_COUNT)],
        tensor_ids=np.array(tensor_ids, np.int64),
        step_addresses=step_addresses,
        step_dtype=step_dtype,
        scalar_addresses=scalar_addresses,
        items=items,
        starts=starts,
        ends=ends,
        fresh=np.array(fresh, np.bool_),
        param_addresses=addresses_of(locals_),
        state_mapping=states,
        state_values=list(states.values()),
        entry_states=entry_states,
        entry_names=entry_names,
        entry_values=entry_values,
        entry_locals=entry_locals,
        entry_params=[like for _, _, like in entries],
        entry_addresses=addresses_of(entry_locals),
        untracked=[i for i, state in enumerate(entry_states) if type(state) is not TrackedState],
        owners=owners,
        versions=list(map(_version_of, owners)),
        storages=storages,
        use_counts=_use_counts(storages),
        writes=TrackedState.writes,
        grads_on_device=_grads_on(locals_[0].device),
        distributed=any(local is not p for local, p in zip(locals_, params)),
    )
