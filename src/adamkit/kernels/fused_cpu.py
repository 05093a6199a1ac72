"""The fused CPU kernel: one parallel pass over every parameter of a group (numba).

Each element is loaded once, run through the rule's ``update`` (the same Python
function the eager kernel runs on tensors, bound to ``scalar_ops`` and compiled by
numba, see ``cpu_loops``), and stored once: 28 bytes per parameter for fp32 Adam, the
least the step can move. Tensors are cut into work items of at most
``WORK_ITEM_ELEMENTS`` so that many small tensors and a few large ones spread evenly
over torch's thread count (``CompiledLoops.run_over_items``). Hyperparameters are
arguments, so schedulers never recompile. What it takes, and how each step checks its
plan, is ``adamkit.kernels.fused``'s part.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from adamkit.kernels.compile_cache import helper_loops, loops_for
from adamkit.kernels.fused import FusedKernel, Launch
from adamkit.kernels.plan import FusedPlan, addresses_of, element_count, storage_dtype, work_items
from adamkit.kernels.scalar_ops import COMPUTE_TYPES, STORAGE_TYPES
from adamkit.rules import EXACT, Rule, gradient_transform
from adamkit.state.formats import StateSpec
from adamkit.state import is_dense, local_tensor

WORK_ITEM_ELEMENTS = 1 << 15

_dtype_of = operator.attrgetter("dtype")
_is_cpu = operator.attrgetter("is_cpu")


def _like(dtype: torch.dtype) -> np.ndarray:
    return np.zeros(0, np.int8 if dtype is torch.int8 else STORAGE_TYPES[storage_dtype(dtype)])


def _cast(coefficients, compute):
    """Numbers become the compute type, as torch casts a Python scalar to the tensor's type."""
    return type(coefficients)(
        *(value if isinstance(value, bool) else compute(float(value)) for value in coefficients)
    )


class FusedCpuKernel(FusedKernel):
    """The default kernel for CPU tensors (see the module's documentation)."""

    name = "fused_cpu"
    device_type = "cpu"
    item_elements = WORK_ITEM_ELEMENTS

    def prepare_launch(
        self, rule: Rule, plan: FusedPlan, addresses: tuple[np.ndarray, np.ndarray], hp: Mapping, spec: StateSpec,
        *, decoupled_weight_decay: bool, report_moved: bool,
    ) -> Launch:
        """``FusedKernel.prepare_launch`` on the CPU: the all-zero gradients are found
        first (most stop at their first element) and stepped in a pass of their own that
        notes whether anything changed; the rest in one that does not, at full speed."""
        loops = loops_for(rule.name, rule.update)
        params = plan.params
        param_addresses, grad_addresses = addresses
        dtype = storage_dtype(plan.dtype)
        like = _like(dtype)
        compute = COMPUTE_TYPES[dtype]
        transform = gradient_transform(hp, decoupled=decoupled_weight_decay, in_update=rule.decays_in_update, grad_scale=1.0)
        transform = _cast(transform, compute)
        if report_moved:
            watched = helper_loops().run("all_zero", (dtype,), grad_addresses, plan.elements, like)
        else:
            watched = np.zeros(len(params), np.bool_)
        sets, advance = coefficient_sets(rule, plan, hp)
        slot_likes = [like if dtype is None else _like(dtype) for dtype in plan.slot_dtypes]
        slot_types = tuple(plan.slot_dtypes)
        passes = []  # (specialization, arguments, work items, their changed flags or None)
        for step, chosen_params, coefficients in sets:
            noise = None
            if plan.rounds_stochastically(spec):
                noise = (np.uint32(spec.seed & 0xFFFFFFFF), np.uint32(int(spec.rounds if step is None else step) & 0xFFFFFFFF))
            c = _cast(coefficients, compute)
            for watch in (False, True):
                tensors = chosen_params & (watched == watch)
                if not tensors.any():
                    continue
                chosen = slice(None) if tensors.all() else np.flatnonzero(tensors[plan.items])
                items = plan.items[chosen]
                changed = np.zeros(len(items), np.bool_)
                specialization = (dtype, slot_types, noise is None, type(c))
                arguments = (
                    c, transform, like, param_addresses, grad_addresses, *plan.slots, *slot_likes, *plan.scales,
                    noise, plan.tensor_ids, watch,
                )
                work = (items, plan.starts[chosen], plan.ends[chosen], changed)
                loops.ensure("fused_pass", specialization, *arguments, *work)
                passes.append((specialization, arguments, work))

        def launch(grad_scale: Tensor | None) -> list[Tensor]:
            advance()
            moved = np.zeros(len(params), np.bool_)
            clipped = None if grad_scale is None else transform._replace(grad_scale=compute(float(grad_scale)))
            for specialization, arguments, (items, starts, ends, changed) in passes:
                if clipped is not None:
                    arguments = (arguments[0], clipped, *arguments[2:])
                loops.run_over_items("fused_pass", specialization, arguments, items, starts, ends, changed)
                moved[items[changed]] = True
            return [params[i] for i in np.flatnonzero(moved)]

        return launch


class CoefficientSet(NamedTuple):
    """The coefficients of the plan's parameters that share a step count, freshness and
    scalar state (in a normal run: all of them)."""

    step: float | None  # the step they take (None: the rule counts none)
    chosen: np.ndarray  # which of the plan's parameters, as a mask
    coefficients: tuple


def coefficient_sets(rule: Rule, plan: FusedPlan, hp: Mapping) -> tuple[list[CoefficientSet], Callable[[], None]]:
    """This step's correctly rounded coefficients for ``plan``'s parameters, and the
    function the launch calls to advance their step counters (CPU tensors, each ``+= 1``
    in its own dtype) and store the rule's new scalar state; nothing is written before."""
    loops = helper_loops()
    count = len(plan.params)
    counts_steps = plan.step_addresses is not None
    like = _like(plan.step_dtype) if counts_steps else None
    numbers = (plan.step_dtype,)  # the specialization of the loops over step counters and scalar state
    steps = loops.run("advance_steps", numbers, plan.step_addresses, like, False) if counts_steps else np.zeros(count)
    values = {name: loops.run("read_numbers", numbers, addresses, like) for name, addresses in plan.scalar_addresses.items()}
    # Compared by their bits, so that a NaN in the state is one key like any other value.
    keys = np.stack([steps, plan.fresh, *values.values()]).astype(np.float64).view(np.int64)
    uniform = (keys == keys[:, :1]).all()
    new_values = {name: np.empty(count) for name in values}
    sets = []
    for key_bits in (keys[:, :1] if uniform else np.unique(keys, axis=1)).T:
        chosen = np.ones(count, np.bool_) if uniform else (keys == key_bits[:, None]).all(axis=0)
        step, fresh, *scalars = key_bits.view(np.float64)
        state = {name: torch.tensor(value, dtype=plan.step_dtype) for name, value in zip(values, scalars)}
        c = rule.coefficients(hp, float(step) if counts_steps else None, bool(fresh), EXACT, **state)
        for name in values:
            new_values[name][chosen] = float(getattr(c, name))
        sets.append(CoefficientSet(float(step) if counts_steps else None, chosen, c))

    def advance() -> None:
        if counts_steps:
            loops.run("advance_steps", numbers, plan.step_addresses, like, True)
        for name, addresses in plan.scalar_addresses.items():
            loops.run("write_numbers", numbers, addresses, new_values[name], like)
        plan.fresh = np.zeros(count, np.bool_)

    return sets, advance


def readable(tensors: Sequence[Tensor]) -> list[bool]:
    """Per tensor: the kernel's loops can read it in place (dense, on the CPU, of a supported dtype)."""
    locals_ = list(map(local_tensor, tensors))
    try:
        if all(map(Tensor.is_contiguous, locals_)) and all(map(_is_cpu, locals_)):
            if all(storage_dtype(dtype) in STORAGE_TYPES for dtype in set(map(_dtype_of, locals_))):
                return [True] * len(locals_)
    except RuntimeError:  # layouts without strides
        pass
    return [FusedCpuKernel.supports(t) and is_dense(t) for t in locals_]


def any_nonzero(tensors: Sequence[Tensor]) -> list[bool]:
    """Per tensor (all ``readable``): whether an element is nonzero, NaN included; each
    is read up to its first nonzero element. An empty tensor has none."""
    loops = helper_loops()
    locals_ = list(map(local_tensor, tensors))
    nonzero = [False] * len(locals_)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for index, t in enumerate(locals_):
        if t.numel():
            by_dtype.setdefault(storage_dtype(t.dtype), []).append(index)
    for dtype, indices in by_dtype.items():
        chosen = [locals_[index] for index in indices]
        elements = np.array([element_count(t) for t in chosen], np.int64)
        zero = loops.run("all_zero", (dtype,), addresses_of(chosen), elements, _like(dtype))
        for index, all_zero in zip(indices, zero):
            nonzero[index] = not all_zero
    return nonzero


def all_finite(grads: Sequence[Tensor]) -> bool:
    """Whether every element of ``grads`` (all ``readable``) is finite."""
    loops = helper_loops()
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for grad in map(local_tensor, grads):
        by_dtype.setdefault(storage_dtype(grad.dtype), []).append(grad)
    for dtype, tensors in by_dtype.items():
        elements = np.array([element_count(t) for t in tensors], np.int64)
        items, starts, ends = work_items(elements, WORK_ITEM_ELEMENTS)
        finite = np.ones(len(items), np.bool_)
        loops.run_over_items("all_finite", (dtype,), (addresses_of(tensors), _like(dtype)), items, starts, ends, finite)
        if not finite.all():
            return False
    return True


def norm_partial(grads: Sequence[Tensor], squares: bool) -> float:
    """The sum of the squares of every element of ``grads`` (all ``readable``) in fp64,
    or with ``squares`` False the largest magnitude (NaN if an element is NaN): per work
    item in a fixed order, the items' sums added exactly, so the same on every machine."""
    loops = helper_loops()
    name = "sum_of_squares" if squares else "largest_magnitude"
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for grad in map(local_tensor, grads):
        by_dtype.setdefault(storage_dtype(grad.dtype), []).append(grad)
    parts = [np.zeros(0)]
    for dtype, tensors in by_dtype.items():
        elements = np.array([element_count(t) for t in tensors], np.int64)
        items, starts, ends = work_items(elements, WORK_ITEM_ELEMENTS)
        out = np.zeros(len(items), np.float64)
        loops.run_over_items(name, (dtype,), (addresses_of(tensors), _like(dtype)), items, starts, ends, out)
        parts.append(out)
    values = np.concatenate(parts)
    if not squares or not np.isfinite(values).all():
        return float(values.max(initial=0.0))  # NaN wins over inf, as in a sum
    try:
        return math.fsum(values)
    except OverflowError:  # finite parts whose sum overflows
        return math.inf
