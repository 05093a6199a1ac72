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
from dataclasses import dataclass, field

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from adamkit.kernels import scalar_ops
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
def _fused_pass(update, decay, c, like, params, grads, slots, has_slot, items, starts, ends, report):
    """Run ``update`` over every element of the work items; ``report[w]`` gets
    (gradient had a nonzero, parameter changed) for work item ``w``."""
    for w in prange(items.shape[0]):
        t = items[w]
        p = pointer(params[t], like)
        g = pointer(grads[t], like)
        # A slot the parameter lacks reads the gradient as a placeholder and is never written.
        s0 = pointer(slots[0, t] if has_slot[0] else grads[t], like)
        s1 = pointer(slots[1, t] if has_slot[1] else grads[t], like)
        s2 = pointer(slots[2, t] if has_slot[2] else grads[t], like)
        grad_nonzero = False
        changed = False
        for i in range(starts[w], ends[w]):
            old = load(p, i)
            grad = load(g, i)
            new, decayed_grad = _decay(old, grad, decay)
            new, y0, y1, y2 = update(new, decayed_grad, load(s0, i), load(s1, i), load(s2, i), c)
            store(p, i, new)
            if has_slot[0]:
                store(s0, i, y0)
            if has_slot[1]:
                store(s1, i, y1)
            if has_slot[2]:
                store(s2, i, y2)
            grad_nonzero |= grad != 0
            changed |= new != old
        report[w, 0] = grad_nonzero
        report[w, 1] = changed


@njit(**_JIT)
def _advance_steps(addresses, like):
    """Add 1 to each step counter (in its own dtype, as ``step += 1``) and return the new values."""
    out = np.empty(addresses.shape[0], np.float64)
    for k in range(addresses.shape[0]):
        counter = pointer(addresses[k], like)
        counter[0] = counter[0] + 1
        out[k] = counter[0]
    return out


@njit(parallel=True, **_JIT)
def _all_finite(addresses, numels, like):
    finite = np.ones(addresses.shape[0], np.bool_)
    for t in prange(addresses.shape[0]):
        g = pointer(addresses[t], like)
        for i in range(numels[t]):
            x = load(g, i)
            if not (x - x == 0):
                finite[t] = False
                break
    return finite


def eligible(param: Tensor, grad: Tensor) -> bool:
    """Whether the fused kernel can update ``param`` with ``grad`` (else the eager kernel runs)."""
    param, grad = local_tensor(param), local_tensor(grad)
    return (
        param.device.type == "cpu"
        and param.dtype in STORAGE_TYPES
        and grad.layout is torch.strided
        and grad.dtype is param.dtype
        and grad.device.type == "cpu"
        and grad.shape == param.shape
        and param.is_contiguous()
        and grad.is_contiguous()
    )


def _state_usable(state: Mapping[str, Tensor], param: Tensor, slot_names: Sequence[str], step_dtype) -> bool:
    local = local_tensor(param)
    for name in slot_names:
        value = state.get(name)
        if value is None:
            return False
        value = local_tensor(value)
        if not (
            value.dtype is local.dtype
            and value.device.type == "cpu"
            and value.shape == local.shape
            and value.is_contiguous()
            and not value.requires_grad
        ):
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

    Built when the group's parameters with a gradient change; ``is_current`` checks
    that the state tensors it points to are still the optimizer's.
    """

    params: list[Tensor]
    states: list[dict[str, Tensor]]
    slot_names: tuple[str, ...]
    like: np.ndarray
    numels: np.ndarray
    slots: np.ndarray
    has_slot: tuple[bool, bool, bool]
    step_addresses: np.ndarray | None
    step_like: np.ndarray | None
    items: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    fresh: np.ndarray
    _entries: list[tuple[dict, str, Tensor]] = field(default_factory=list)

    def is_current(self, params: Sequence[Tensor], states: Mapping[Tensor, dict]) -> bool:
        return (
            len(params) == len(self.params)
            and all(a is b for a, b in zip(params, self.params))
            and all(states.get(p, {}) is s or not (s or states.get(p)) for p, s in zip(params, self.states))
            and all(state.get(name) is value for state, name, value in self._entries)
        )


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
    storage = STORAGE_TYPES[local_tensor(params[0]).dtype]
    numels = np.array([local_tensor(p).numel() for p in params], np.int64)
    slots = np.zeros((SLOT_COUNT, len(params)), np.int64)
    positions = [rule.slots.index(name) for name in slot_names]
    entries = []
    for column, (state, p) in enumerate(zip(param_states, params)):
        for name, row in zip(slot_names, positions):
            slots[row, column] = local_tensor(state[name]).data_ptr()
            entries.append((state, name, state[name]))
    has_slot = tuple(row in positions for row in range(SLOT_COUNT))
    step_addresses = step_like = None
    if step_dtype is not None:
        step_addresses = np.array([s["step"].data_ptr() for s in param_states], np.int64)
        step_like = np.zeros(0, STORAGE_TYPES[step_dtype])
        entries += [(s, "step", s["step"]) for s in param_states]
    items, starts, ends = _work_items(numels)
    return FusedPlan(
        list(params), param_states, slot_names, np.zeros(0, storage), numels, slots, has_slot,
        step_addresses, step_like, items, starts, ends, fresh, entries,
    )


def fused_step(
    rule: Rule, plan: FusedPlan, hp: Mapping, *, decoupled_weight_decay: bool
) -> list[Tensor]:
    """One step of ``rule`` over ``plan``'s parameters; returns those whose gradient was
    all zeros and whose value still changed (weight decay, momentum)."""
    params = plan.params
    param_addresses = np.array([local_tensor(p).data_ptr() for p in params], np.int64)
    grad_addresses = np.array([local_tensor(p.grad).data_ptr() for p in params], np.int64)
    compute = COMPUTE_TYPES[local_tensor(params[0]).dtype]
    decay = _cast(decay_coefficients(hp, decoupled=decoupled_weight_decay), compute)
    counts_steps = plan.step_addresses is not None
    steps = _advance_steps(plan.step_addresses, plan.step_like) if counts_steps else np.zeros(len(params))
    keys = np.stack([steps, plan.fresh])
    plan.fresh = np.zeros(len(params), np.bool_)
    report = np.zeros((plan.items.size, 2), np.bool_)
    unique = np.unique(keys, axis=1)
    for step, fresh in unique.T:
        c = _cast(rule.coefficients(hp, float(step) if counts_steps else None, bool(fresh)), compute)
        # Parameters whose step counts differ (one added later) need their own coefficients.
        chosen = np.flatnonzero(((keys[0] == step) & (keys[1] == fresh))[plan.items])
        if unique.shape[1] == 1:
            chosen = slice(None)
        part = report[chosen]
        _fused_pass(
            _compiled(rule.update), decay, c, plan.like, param_addresses, grad_addresses, plan.slots,
            plan.has_slot, plan.items[chosen], plan.starts[chosen], plan.ends[chosen], part,
        )
        report[chosen] = part
    grad_nonzero = np.zeros(len(params), np.bool_)
    changed = np.zeros(len(params), np.bool_)
    np.logical_or.at(grad_nonzero, plan.items, report[:, 0])
    np.logical_or.at(changed, plan.items, report[:, 1])
    return [params[i] for i in np.flatnonzero(~grad_nonzero & changed & (plan.numels > 0))]


def _cast(coefficients, compute):
    """Numbers become the compute type, as torch casts a Python scalar to the tensor's type."""
    return type(coefficients)(
        *(value if isinstance(value, bool) else compute(float(value)) for value in coefficients)
    )


def all_finite(grads: Sequence[Tensor]) -> bool:
    """Whether every element of ``grads`` (all eligible for the fused kernel) is finite."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for grad in grads:
        by_dtype.setdefault(grad.dtype, []).append(local_tensor(grad))
    for dtype, tensors in by_dtype.items():
        addresses = np.array([t.data_ptr() for t in tensors], np.int64)
        numels = np.array([t.numel() for t in tensors], np.int64)
        if not _all_finite(addresses, numels, np.zeros(0, STORAGE_TYPES[dtype])).all():
            return False
    return True
