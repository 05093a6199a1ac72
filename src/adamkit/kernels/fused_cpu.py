"""The fused CPU kernel: one parallel pass over every parameter of a group (numba).

Each element is loaded once, run through the rule's ``update`` (compiled from the
same Python function the eager kernel runs on tensors, with ``scalar_ops`` supplying
the elementwise operations), and stored once: 28 bytes per parameter for fp32 Adam,
the least the step can move. Tensors are cut into work items of at most
``WORK_ITEM_ELEMENTS`` so that many small tensors and a few large ones spread evenly
over the threads. Compiled code is cached on disk; hyperparameters are arguments, so
schedulers never cause recompilation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import operator
from itertools import repeat
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from adamkit.kernels.scalar_ops import COMPUTE_TYPES, STORAGE_TYPES, load, pointer, store
from adamkit.rules import Rule, decay_coefficients, maximize_and_weight_decay
from adamkit.state import allocate_flat_state, local_tensor

WORK_ITEM_ELEMENTS = 1 << 15
SLOT_COUNT = 3
_JIT = {"error_model": "numpy", "cache": True}

_decay = njit(**_JIT)(maximize_and_weight_decay)
_compiled_updates: dict = {}


def _compiled(update):
    if update not in _compiled_updates:
        _compiled_updates[update] = njit(**_JIT)(update)
    return _compiled_updates[update]


@njit(parallel=True, **_JIT)
def _fused_pass(update, decay, c, like, params, grads, slot0, slot1, slot2, items, starts, ends, changed):
    """Run ``update`` over every element of the work items.

    A slot the parameters lack is None: numba then compiles that slot's code away (a
    store that might alias the gradient would keep the loop from vectorizing), and the
    rule reads the gradient in its place and never uses it. Unless ``changed`` is None
    (also compiled away), it records per work item whether any parameter element changed.
    """
    for w in prange(items.shape[0]):
        t = items[w]
        p = pointer(params[t], like)
        g = pointer(grads[t], like)
        s0 = g if slot0 is None else pointer(slot0[t], like)
        s1 = g if slot1 is None else pointer(slot1[t], like)
        s2 = g if slot2 is None else pointer(slot2[t], like)
        moved = False
        for i in range(starts[w], ends[w]):
            old = load(p, i)
            grad = load(g, i)
            new, decayed_grad = _decay(old, grad, decay)
            new, y0, y1, y2 = update(new, decayed_grad, load(s0, i), load(s1, i), load(s2, i), c)
            store(p, i, new)
            if slot0 is not None:
                store(s0, i, y0)
            if slot1 is not None:
                store(s1, i, y1)
            if slot2 is not None:
                store(s2, i, y2)
            if changed is not None:
                moved |= load(p, i) != old  # as stored: bf16/fp16 rounding may keep it
        if changed is not None:
            changed[w] = moved


@njit(**_JIT)
def _advance_steps(addresses, like):
    """Add 1 to each step counter (in its own dtype, as ``step += 1``) and return the new values."""
    out = np.empty(addresses.shape[0], np.float64)
    for k in range(addresses.shape[0]):
        counter = pointer(addresses[k], like)
        counter[0] = counter[0] + 1
        out[k] = counter[0]
    return out


@njit(**_JIT)
def _all_zero(addresses, numels, like):
    """Per tensor: every element is zero (and there is at least one). Most gradients
    stop at their first element, so this costs next to nothing."""
    zero = np.zeros(addresses.shape[0], np.bool_)
    for t in range(addresses.shape[0]):
        g = pointer(addresses[t], like)
        zero[t] = numels[t] > 0
        for i in range(numels[t]):
            if load(g, i) != 0:
                zero[t] = False
                break
    return zero


@njit(parallel=True, **_JIT)
def _all_finite(addresses, items, starts, ends, like):
    """Per work item: every element is finite. No early exit, so the loop vectorizes."""
    finite = np.ones(items.shape[0], np.bool_)
    for w in prange(items.shape[0]):
        g = pointer(addresses[items[w]], like)
        bad = False
        for i in range(starts[w], ends[w]):
            x = load(g, i)
            bad |= x - x != 0  # NaN for NaN and for +-Inf
        finite[w] = not bad
    return finite


def _laid_out_like(t: Tensor, param: Tensor) -> bool:
    """``t`` (local) can be read element for element alongside ``param``'s local tensor."""
    return (
        t.layout is torch.strided
        and t.dtype is param.dtype
        and t.device.type == "cpu"
        and t.shape == param.shape
        and t.is_contiguous()
    )


def eligible(param: Tensor, grad: Tensor) -> bool:
    """Whether the fused kernel can update ``param`` with ``grad`` (else the eager kernel runs)."""
    param = local_tensor(param)
    return param.dtype in STORAGE_TYPES and _laid_out_like(param, param) and _laid_out_like(local_tensor(grad), param)


def _state_usable(state: Mapping[str, Tensor], param: Tensor, slot_names: Sequence[str], step_dtype) -> bool:
    local = local_tensor(param)
    for name in slot_names:
        value = state.get(name)
        if value is None:
            return False
        if value.requires_grad or not _laid_out_like(local_tensor(value), local):
            return False
    if step_dtype is not None:
        step = state.get("step")
        return isinstance(step, Tensor) and step.dtype is step_dtype and step.device.type == "cpu" and step.dim() == 0
    return True


def _work_items(numels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    counts = np.maximum(1, -(-numels // WORK_ITEM_ELEMENTS))
    items = np.repeat(np.arange(numels.size), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    starts = (np.arange(items.size) - first) * WORK_ITEM_ELEMENTS
    ends = np.minimum(starts + WORK_ITEM_ELEMENTS, numels[items])
    return items, starts, ends


@dataclass
class FusedPlan:
    """Where one parameter group's tensors of one dtype live, laid out for the fused pass.

    Built when the group's parameters with a gradient change. Each step then only
    reads the tensors' addresses and checks, mostly in C loops, that nothing it relies
    on has moved: the same parameters at the same addresses, the optimizer's own state
    tensors, and gradients of the right dtype, size and layout.
    """

    params: list[Tensor]
    dtype: torch.dtype  # of the parameters' local tensors
    like: np.ndarray
    numels: np.ndarray
    slots: list[np.ndarray | None]
    step_addresses: np.ndarray | None
    step_like: np.ndarray | None
    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    fresh: np.ndarray
    entry_states: list[dict] = field(default_factory=list)
    entry_names: list[str] = field(default_factory=list)
    entry_values: list[Tensor] = field(default_factory=list)
    param_addresses: np.ndarray | None = None
    state_mapping: Mapping | None = None
    state_values: list[dict] = field(default_factory=list)
    distributed: bool = False

    def addresses(self, grads: list[Tensor], states: Mapping[Tensor, dict]) -> tuple[np.ndarray, np.ndarray] | None:
        """(parameter, gradient) addresses for this step, or None if the plan is stale.

        ``grads`` are the parameters' gradients, in order. ``states`` is the optimizer's
        state; its values are compared in order, which needs no hashing of tensors.
        """
        params = self.params
        if not (
            states is self.state_mapping
            and len(states) == len(self.state_values)
            and all(map(operator.is_, states.values(), self.state_values))
            and all(map(operator.is_, map(dict.get, self.entry_states, self.entry_names), self.entry_values))
        ):
            return None
        locals_ = list(map(local_tensor, params)) if self.distributed else params
        grad_locals = list(map(local_tensor, grads)) if self.distributed else grads
        param_addresses = np.fromiter(map(Tensor.data_ptr, locals_), np.int64, len(params))
        if not np.array_equal(param_addresses, self.param_addresses):
            return None
        # Checked every step, even for last step's gradient objects: ``grad.data = ...``,
        # ``set_`` and ``resize_`` change a tensor in place.
        if not _dense_like(grad_locals, self.dtype, self.numels):
            return None
        return param_addresses, np.fromiter(map(Tensor.data_ptr, grad_locals), np.int64, len(params))


_dtype_of = operator.attrgetter("dtype")
_is_cpu = operator.attrgetter("is_cpu")


def _contiguous_on_cpu(tensors: Sequence[Tensor]) -> bool:
    """Every tensor is contiguous and on the CPU. Attribute reads mapped over the list
    cost a fraction of a per-tensor Python expression."""
    try:
        return all(map(Tensor.is_contiguous, tensors)) and all(map(_is_cpu, tensors))  # False for sparse COO
    except RuntimeError:  # other layouts (sparse CSR, mkldnn) have no strides
        return False


def _dense_like(tensors: list[Tensor], dtype: torch.dtype, numels: np.ndarray) -> bool:
    """Every tensor is a contiguous CPU tensor of ``dtype`` with ``numels`` elements.

    The gradient setter already enforces dtype, device and size, but ``grad.data = ...``
    bypasses it, and reading past a tensor's end must be impossible.
    """
    return (
        _contiguous_on_cpu(tensors)
        and all(map(operator.is_, map(_dtype_of, tensors), repeat(dtype)))
        and np.array_equal(np.fromiter(map(Tensor.numel, tensors), np.int64, len(tensors)), numels)
    )


class GroupLayout(NamedTuple):
    """A parameter group's parameters with a gradient, split between kernels."""

    with_grad: list[Tensor]
    plans: list[FusedPlan]
    rest: list[Tensor]
    ineligible: list[Tensor]  # in ``rest`` only for their tensors' layout or dtype, which may change


def plan(
    rule: Rule,
    params: Sequence[Tensor],
    states: dict[Tensor, dict[str, Tensor]],
    fills: Mapping[str, float | None],
    *,
    step_dtype: torch.dtype | None,
) -> FusedPlan | None:
    """Lay out ``params`` (one dtype, all eligible) for the fused pass; None if their state cannot be used.

    Parameters without state get it here, in flat buffers (``adamkit.state``); a fill
    of None marks state the rule creates on its first step (SGD's momentum buffer),
    which is then flagged ``fresh``.
    """
    slot_names = tuple(fills)
    new = [p for p in params if not states.get(p)]
    created = {name: 0.0 if fill is None else fill for name, fill in fills.items()}
    if new and (created or step_dtype is not None):
        for p, state in zip(new, allocate_flat_state(new, created, step_dtype=step_dtype)):
            states[p] = state
    new_ids = {id(p) for p in new}
    fresh = np.array([id(p) in new_ids for p in params], np.bool_)
    param_states = [states.get(p, {}) for p in params]
    if not all(_state_usable(s, p, slot_names, step_dtype) for s, p in zip(param_states, params)):
        return None
    dtype = local_tensor(params[0]).dtype
    numels = np.array([local_tensor(p).numel() for p in params], np.int64)
    slots = np.zeros((SLOT_COUNT, len(params)), np.int64)
    positions = [rule.slots.index(name) for name in slot_names]
    entries = []
    for column, state in enumerate(param_states):
        for name, row in zip(slot_names, positions):
            slots[row, column] = local_tensor(state[name]).data_ptr()
            entries.append((state, name, state[name]))
    slot_arrays = [slots[row] if row in positions else None for row in range(SLOT_COUNT)]
    step_addresses = step_like = None
    if step_dtype is not None:
        step_addresses = np.array([s["step"].data_ptr() for s in param_states], np.int64)
        step_like = np.zeros(0, STORAGE_TYPES[step_dtype])
        entries += [(s, "step", s["step"]) for s in param_states]
    items, starts, ends = _work_items(numels)
    entry_states, entry_names, entry_values = (list(column) for column in zip(*entries)) if entries else ([], [], [])
    return FusedPlan(
        list(params), dtype, np.zeros(0, STORAGE_TYPES[dtype]), numels, slot_arrays,
        step_addresses, step_like, items, starts, ends, fresh, entry_states, entry_names, entry_values,
        param_addresses=np.array([local_tensor(p).data_ptr() for p in params], np.int64),
        state_mapping=states,
        state_values=list(states.values()),
        distributed=any(local_tensor(p) is not p for p in params),
    )


def fused_step(
    rule: Rule,
    plan: FusedPlan,
    addresses: tuple[np.ndarray, np.ndarray],
    hp: Mapping,
    *,
    decoupled_weight_decay: bool,
    report_moved: bool = True,
) -> list[Tensor]:
    """One step of ``rule`` over ``plan``'s parameters at ``addresses`` (from
    ``plan.addresses``). With ``report_moved``, returns the parameters whose gradient
    was all zeros and whose value still changed (weight decay, momentum)."""
    params = plan.params
    param_addresses, grad_addresses = addresses
    compute = COMPUTE_TYPES[plan.dtype]
    decay = _cast(decay_coefficients(hp, decoupled=decoupled_weight_decay), compute)
    # Parameters with an all-zero gradient run in a pass that also notes what changed;
    # the rest (nearly always all of them) in one that does not, at full speed.
    watched = _all_zero(grad_addresses, plan.numels, plan.like) if report_moved else np.zeros(len(params), np.bool_)
    counts_steps = plan.step_addresses is not None
    steps = _advance_steps(plan.step_addresses, plan.step_like) if counts_steps else np.zeros(len(params))
    keys = np.stack([steps, plan.fresh])
    plan.fresh = np.zeros(len(params), np.bool_)
    moved = np.zeros(len(params), np.bool_)
    uniform = (keys == keys[:, :1]).all()
    for step, fresh in (keys[:, :1] if uniform else np.unique(keys, axis=1)).T:
        c = _cast(rule.coefficients(hp, float(step) if counts_steps else None, bool(fresh)), compute)
        # Parameters whose step counts differ (one added later) need their own coefficients.
        same_key = (keys[0] == step) & (keys[1] == fresh)
        for watch in (False, True):
            tensors = same_key & (watched == watch)
            if not tensors.any():
                continue
            chosen = slice(None) if tensors.all() else np.flatnonzero(tensors[plan.items])
            items = plan.items[chosen]
            changed = np.zeros(len(items), np.bool_) if watch else None
            _fused_pass(
                _compiled(rule.update), decay, c, plan.like, param_addresses, grad_addresses, *plan.slots,
                items, plan.starts[chosen], plan.ends[chosen], changed,
            )
            if watch:
                moved[items[changed]] = True
    return [params[i] for i in np.flatnonzero(moved)]


def _cast(coefficients, compute):
    """Numbers become the compute type, as torch casts a Python scalar to the tensor's type."""
    return type(coefficients)(
        *(value if isinstance(value, bool) else compute(float(value)) for value in coefficients)
    )


def readable(tensors: Sequence[Tensor]) -> list[bool]:
    """Per tensor: a numba kernel can read it (contiguous, on the CPU, of a supported dtype)."""
    locals_ = list(map(local_tensor, tensors))
    if _contiguous_on_cpu(locals_) and set(map(_dtype_of, locals_)) <= STORAGE_TYPES.keys():
        return [True] * len(locals_)
    return [eligible(t, t) for t in locals_]


def all_finite(grads: Sequence[Tensor]) -> bool:
    """Whether every element of ``grads`` (all ``readable``) is finite."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for grad in map(local_tensor, grads):
        by_dtype.setdefault(grad.dtype, []).append(grad)
    for dtype, tensors in by_dtype.items():
        addresses = np.fromiter(map(Tensor.data_ptr, tensors), np.int64, len(tensors))
        numels = np.fromiter(map(Tensor.numel, tensors), np.int64, len(tensors))
        if not _all_finite(addresses, *_work_items(numels), np.zeros(0, STORAGE_TYPES[dtype])).all():
            return False
    return True
