"""Fused kernels: one pass over every parameter of a group, whatever runs the pass.

This module is the part every fused kernel shares; ``fused_cpu`` (numba) and
``fused_cuda`` (Triton) supply the pass itself. A kernel takes dense tensors of its
device and of fp32, fp64, bf16, fp16 or complex dtype (complex as the real view),
in any dimension order (contiguous, transposed, channels_last), with gradient and state
laid out like the parameter. A tensor that is not (a non-dense parameter, a gradient in
another layout) is stepped through contiguous copies, so every dense parameter gets the
same correctly rounded arithmetic. Sparse gradients and other devices are left to the
eager kernel.

The pass works on raw addresses of the user's own tensors. A plan records them once;
each step re-reads and checks, mostly in C loops over lists, what could have moved: each
parameter's address, each gradient's address, dtype, size, device and layout, and the
state per buffer (``FusedPlan.state_unchanged``). Anything else rebuilds the plan, and
the plan holds references to every tensor whose memory it uses.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from adamkit.rules import Rule
from adamkit.state import TrackedState, allocate_flat_state, is_dense, local_tensor
from adamkit.state.formats import SCALE_SUFFIX, StateSpec, blocks_of, recode

SLOT_COUNT = 3
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


def _entry_fits(t: Tensor, like: Tensor | int | None) -> bool:
    if like is None:
        return step_usable(t)
    if isinstance(like, int):
        return _scales_fit(t, like)
    return same_strides(t, like)


def _scales_fit(t: Tensor | None, blocks: int) -> bool:
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
    entry_params: list[Tensor | int | None]  # what each entry must match: the local parameter it is laid
    # out like, the number of blocks for an int8 slot's scales, None for a step counter
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
        asks for it and a slot is stored in bf16. A group's tensors under the threshold
        keep fp32 state, and their pass compiles without the rounding's key."""
        return spec.stochastic and torch.bfloat16 in self.slot_dtypes

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
    step_addresses = None
    if step_dtype is not None:
        step_addresses = np.array([s["step"].data_ptr() for s in param_states], np.int64)
        entries += [(s, "step", None) for s in param_states]
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


class GroupLayout(NamedTuple):
    """A parameter group's parameters with a gradient, sorted by how they are stepped."""

    with_grad: list[Tensor]
    plans: list[FusedPlan]
    staged: list[Tensor]  # stepped through contiguous copies
    rest: list[Tensor]  # not taken: for the next kernel
    staged_fresh: set[int]  # ids of staged parameters whose state was just created
    tensor_ids: dict[int, int]  # id(param) -> its place among the group's stepped parameters


def _plain_numbers(hp: Mapping) -> dict:
    """Tensor hyperparameters (lr, betas) as Python numbers: coefficients are computed
    in double precision with correctly rounded operations."""
    plain = dict(hp)
    for key in ("lr", "betas"):
        value = hp.get(key)
        if isinstance(value, Tensor):
            plain[key] = value.item()
        elif isinstance(value, tuple):
            plain[key] = tuple(v.item() if isinstance(v, Tensor) else v for v in value)
    return plain


Launch = Callable[[], list[Tensor]]
"""A prepared pass: run, it writes parameters and state and returns the stepped
parameters whose all-zero gradient did not keep them still."""


class PreparedGroup(NamedTuple):
    """What a kernel made ready for one group's step, nothing written yet."""

    rest: list[Tensor]  # parameters for the next kernel
    launches: list[Launch]
    stepped: int  # parameters the launches step


class FusedKernel:
    """Steps a parameter group's tensors of one device type in fused passes, remembering
    each group's layout.

    The optimizer hands over the group's parameters that have a gradient and its state;
    ``prepare_group`` lays out the ones it takes, compiles what they need and returns
    the passes that will step them, plus the rest for the next kernel. Preparing writes
    nothing but the state of parameters seen for the first time (noted in ``created``,
    so that a step that fails can take it back); the writes happen when the passes run.
    A subclass names its device type and work-item size and implements ``prepare_launch``.
    """

    name: str
    device_type: str
    item_elements: int

    def __init__(self) -> None:
        self._layouts: dict[int, GroupLayout] = {}

    def forget(self) -> None:
        """Drop every plan (the state was replaced, e.g. by ``load_state_dict``)."""
        self._layouts.clear()

    def prepare_group(
        self,
        rule: Rule,
        group_key: int,
        params: list[Tensor],
        grads: list[Tensor],
        states: dict[Tensor, dict[str, Tensor]],
        spec: StateSpec,
        hp: Mapping,
        *,
        decoupled_weight_decay: bool,
        report_moved: bool,
        created: list[Tensor],
    ) -> PreparedGroup:
        """Prepare the step of what this kernel takes of ``params`` (with ``grads``;
        ``spec`` says what their state is). Parameters whose state it creates are
        appended to ``created``, also when it raises."""
        steps = self.checked(group_key, params, grads, states)
        layout = self._layouts.get(group_key)
        if steps is None:
            self._layouts.pop(group_key, None)
            layout = self._lay_out(rule, params, grads, states, spec, created)
            self._layouts[group_key] = layout
            steps = self._plan_addresses(layout, params, grads, states)
        hp = _plain_numbers(hp)
        options = dict(decoupled_weight_decay=decoupled_weight_decay, report_moved=report_moved)
        launches, stepped, rest = [], 0, list(layout.rest)
        for plan, addresses in steps:
            if addresses is None:  # a plan made this moment must hold; if not, a later kernel steps it
                rest += plan.params
                continue
            launches.append(self.prepare_launch(rule, plan, addresses, hp, spec, **options))
            stepped += len(plan.params)
        if layout.staged:
            grad_of = dict(zip(map(id, params), grads))
            staged_grads = [grad_of[id(p)] for p in layout.staged]
            launches.append(self._prepare_staged(rule, layout, staged_grads, states, spec, hp, **options))
            stepped += len(layout.staged)
        return PreparedGroup(rest, launches, stepped)

    def checked(self, group_key: int, params: list[Tensor], grads: list[Tensor], states: Mapping) -> list[tuple] | None:
        """The per-step checks: the group's plans with this step's addresses, or None if
        its layout must be made anew (``adamkit bench`` times this)."""
        layout = self._layouts.get(group_key)
        if not (
            layout is not None
            and len(layout.with_grad) == len(params)
            and all(map(operator.is_, layout.with_grad, params))
            and self._same_kinds(layout, params, grads)
        ):
            return None
        steps = self._plan_addresses(layout, params, grads, states)
        return None if any(addresses is None for _, addresses in steps) else steps

    def prepare_launch(
        self, rule: Rule, plan: FusedPlan, addresses: tuple[np.ndarray, np.ndarray], hp: Mapping, spec: StateSpec,
        *, decoupled_weight_decay: bool, report_moved: bool,
    ) -> Launch:
        """Make ready one step of ``rule`` over ``plan``'s parameters at ``addresses``
        (parameter and gradient addresses, from ``plan.addresses``): compiled, with
        correctly rounded coefficients for each parameter's next step count, state
        written in its storage dtype (stochastically rounded if ``spec`` says so). The
        launch advances the step counters and runs the pass. With ``report_moved``, it
        returns parameters whose gradient was all zeros and whose value still changed
        (weight decay, momentum), possibly found a step later."""
        raise NotImplementedError

    @property
    def on_device(self) -> Callable[[Tensor], bool]:
        """Reads whether a tensor is on this kernel's device type (``Tensor.is_cpu``...): the
        optimizer hands each kernel only its own tensors, at one attribute read each."""
        return operator.attrgetter(f"is_{self.device_type}")

    @classmethod
    def supports(cls, t: Tensor) -> bool:
        """``t`` (a local tensor) is of this kernel's device type and of a dtype it computes."""
        return t.layout is torch.strided and t.device.type == cls.device_type and storage_dtype(t.dtype) in FLOAT_DTYPES

    def takes(self, param: Tensor, grad: Tensor) -> bool:
        """Whether this kernel steps ``param`` (directly or through copies); else a later kernel does."""
        param, grad = local_tensor(param), local_tensor(grad)
        return (
            self.supports(param)
            and grad.layout is torch.strided
            and grad.dtype is param.dtype
            and grad.device == param.device
            and grad.shape == param.shape
        )

    def _kind(self, param: Tensor, grad: Tensor) -> str:
        if not self.takes(param, grad):
            return "rest"
        local = local_tensor(param)
        return "direct" if is_dense(local) and same_layout(local_tensor(grad), local) else "staged"

    def _same_kinds(self, layout: GroupLayout, params: list[Tensor], grads: list[Tensor]) -> bool:
        """The parameters stepped through copies or left to the next kernel last time still are."""
        if not (layout.staged or layout.rest):
            return True
        grad_of = dict(zip(map(id, params), grads))
        return all(self._kind(p, grad_of[id(p)]) == "staged" for p in layout.staged) and all(
            self._kind(p, grad_of[id(p)]) == "rest" for p in layout.rest
        )

    @staticmethod
    def _plan_addresses(layout: GroupLayout, params, grads, states) -> list[tuple]:
        if len(layout.plans) == 1 and len(layout.plans[0].params) == len(params):
            return [(layout.plans[0], layout.plans[0].addresses(grads, states))]
        grad_of = dict(zip(map(id, params), grads))
        return [(plan, plan.addresses([grad_of[id(p)] for p in plan.params], states)) for plan in layout.plans]

    def _lay_out(self, rule, params, grads, states, spec: StateSpec, created: list[Tensor]) -> GroupLayout:
        """Sort ``params`` into plans (by dtype, device, state storage and step dtype),
        copies and the rest, creating the state of parameters seen for the first time
        (appended to ``created``)."""
        kinds = [self._kind(p, g) for p, g in zip(params, grads)]
        taken = [p for p, kind in zip(params, kinds) if kind != "rest"]
        fresh = self._create_state(taken, states, spec, created)
        step_dtype = spec.step_dtype
        slot_names = tuple(spec.fills)
        tensor_ids = {id(p): spec.tensor_ids.get(id(p), position) for position, p in enumerate(params)}
        by_key: dict[tuple, list[Tensor]] = {}
        staged, rest = [], [p for p, kind in zip(params, kinds) if kind == "rest"]
        for p, kind in zip(params, kinds):
            if kind == "rest":
                continue
            state, local = states.get(p, {}), local_tensor(p)
            if not self._state_usable(state, local, slot_names, step_dtype is not None):
                rest.append(p)
            elif kind == "staged" or not all(same_strides(local_tensor(state[n]), local) for n in slot_names):
                staged.append(p)
            else:
                storage = tuple(local_tensor(state[n]).dtype for n in slot_names)
                key = (p.dtype, local.device, storage, state["step"].dtype if step_dtype else None)
                by_key.setdefault(key, []).append(p)
        plans = [
            build_plan(rule, batch, states, slot_names, [id(p) in fresh for p in batch], key[3], self.item_elements,
                       [tensor_ids[id(p)] for p in batch])
            for key, batch in by_key.items()
        ]
        for plan in plans:  # each plan saw the state before the next one added to it
            plan.state_values = list(states.values())
        return GroupLayout(list(params), plans, staged, rest, {id(p) for p in staged if id(p) in fresh}, tensor_ids)

    def _state_usable(self, state: Mapping[str, Tensor], local: Tensor, slot_names: Sequence[str], counts_steps: bool) -> bool:
        """Every state entry the rule needs is there, on the parameter's device and of its
        shape, of a float dtype, and not tracked by autograd; layout aside, which copies can fix."""
        for name in slot_names:
            value = state.get(name)
            if value is None or value.requires_grad:
                return False
            value = local_tensor(value)
            same_kind = value.dtype is local.dtype or not (value.dtype.is_complex or local.dtype.is_complex)
            coded = value.dtype is torch.int8 and value.layout is torch.strided and value.device.type == self.device_type
            if not ((self.supports(value) or coded) and same_kind and value.device == local.device
                    and value.shape == local.shape):
                return False
            if coded and not _scales_fit(state.get(name + SCALE_SUFFIX), blocks_of(local)):
                return False
        return not counts_steps or step_usable(state.get("step"))

    @staticmethod
    def _create_state(params, states, spec: StateSpec, created: list[Tensor]) -> set[int]:
        """State for parameters without any, in flat buffers; returns their ids and
        appends them to ``created``. A fill of None marks state the rule makes on its
        first step (SGD's momentum buffer): it starts at 0 and the parameter is flagged fresh."""
        new = [p for p in params if not states.get(p)]
        fills = {name: 0.0 if fill is None else fill for name, fill in spec.fills.items()}
        if not new or not (fills or spec.step_dtype is not None):
            return set()
        by_kind: dict[tuple, list[Tensor]] = {}
        for p in new:
            by_kind.setdefault((p.dtype, local_tensor(p).device), []).append(p)
        for batch in by_kind.values():
            made = allocate_flat_state(batch, fills, step_dtype=spec.step_dtype, storage=spec.storage_dtype)
            for p, state in zip(batch, made):
                states[p] = state
                created.append(p)
        return {id(p) for p in new}

    def _prepare_staged(self, rule, layout, grads, states, spec, hp, *, decoupled_weight_decay, report_moved) -> Launch:
        """Prepare the step of ``layout.staged`` through copies laid out like dense
        parameters; the launch steps the copies and copies them back."""
        work_states, work_grads, owner, copies = {}, {}, {}, []
        batches: dict[tuple, list[Tensor]] = {}
        for param, grad in zip(layout.staged, grads):
            local = local_tensor(param).detach()
            work = local if is_dense(local) else local.contiguous()
            if work is not local:
                copies.append((local, work))
            grad = local_tensor(grad)
            work_grads[id(work)] = grad if same_layout(grad, work) else torch.empty_like(work).copy_(grad)
            state = {name: local_tensor(value) for name, value in states.get(param, {}).items()}
            work_states[work] = work_state = dict(state)
            for name, value in state.items():
                if name == "step" or name.endswith(SCALE_SUFFIX) or same_strides(value, work):
                    continue
                if value.dtype is torch.int8:  # codes and scales in the copy's memory order, and back
                    scales = state[name + SCALE_SUFFIX]
                    work_state[name], work_state[name + SCALE_SUFFIX] = recode(value, scales, like=work)
                    copies.append((_Recoded(value, scales), _Recoded(work_state[name], work_state[name + SCALE_SUFFIX])))
                else:
                    work_state[name] = torch.empty_like(work, dtype=value.dtype).copy_(value)
                    copies.append((value, work_state[name]))
            owner[id(work)] = param
            step = work_state.get("step")
            storage = tuple(work_state[n].dtype for n in spec.fills)
            batches.setdefault((work.dtype, work.device, storage, None if step is None else step.dtype), []).append(work)
        launches = []
        for (_, _, _, step_dtype), batch in batches.items():
            fresh = [id(owner[id(w)]) in layout.staged_fresh for w in batch]
            ids = [layout.tensor_ids[id(owner[id(w)])] for w in batch]
            plan = build_plan(rule, batch, work_states, tuple(spec.fills), fresh, step_dtype, self.item_elements, ids)
            addresses = (plan.param_addresses, addresses_of([work_grads[id(w)] for w in batch]))
            launches.append(self.prepare_launch(
                rule, plan, addresses, hp, spec, decoupled_weight_decay=decoupled_weight_decay, report_moved=report_moved
            ))

        def launch() -> list[Tensor]:
            moved = [owner[id(w)] for run in launches for w in run()]
            layout.staged_fresh.clear()
            for target, source in copies:
                target.copy_(source)
            return moved

        launch.holds = (work_grads, work_states)  # the passes hold raw addresses of these copies: keep them alive
        return launch


class _Recoded(NamedTuple):
    """int8 state (codes and block scales) that a copy re-codes into its own layout."""

    codes: Tensor
    scales: Tensor

    def copy_(self, source: _Recoded) -> None:
        codes, scales = recode(source.codes, source.scales, like=self.codes)
        self.codes.copy_(codes)
        self.scales.copy_(scales)
