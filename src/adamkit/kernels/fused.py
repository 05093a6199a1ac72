"""Fused kernels: one pass over every parameter of a group, whatever runs the pass.

This module is the part every fused kernel shares; ``fused_cpu`` (numba) and
``fused_cuda`` (Triton) supply the pass itself. A kernel takes dense tensors of its
device and of fp32, fp64, bf16, fp16 or complex dtype (complex as the real view),
in any dimension order (contiguous, transposed, channels_last), with gradient and state
laid out like the parameter. A tensor that is not (a non-dense parameter, a gradient in
another layout) is stepped through contiguous copies, so every dense parameter gets the
same correctly rounded arithmetic. Sparse gradients and other devices are left to the
eager kernel. Where the tensors lie and how each step checks that they have not moved
is ``adamkit.kernels.plan``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from adamkit.kernels.plan import (
    FLOAT_DTYPES, FusedPlan, addresses_of, build_plan, same_layout, same_strides, scales_fit, step_usable,
    storage_dtype,
)
from adamkit.rules import Rule
from adamkit.state import allocate_flat_state, is_dense, local_tensor
from adamkit.state.formats import SCALE_SUFFIX, StateSpec, blocks_of, recode

MAX_LAYOUTS = 8  # layouts kept per parameter group


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


Launch = Callable[[Tensor | None], list[Tensor]]
"""A prepared pass: run with the gradients' clipping coefficient (a 0-dim tensor, or
None: no clipping), it writes parameters and state and returns the stepped parameters
whose all-zero gradient did not keep them still."""


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
        # Per group, the layouts of the last few sets of parameters with a gradient, the
        # latest last: a mixture of experts steps another set of experts each step.
        self._layouts: dict[int, dict[tuple[int, ...], GroupLayout]] = {}

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
        layout = self._layout_of(group_key, params)
        steps = self.checked(group_key, params, grads, states, layout)
        if steps is None:
            layouts = self._layouts.setdefault(group_key, {})
            key = tuple(map(id, params))
            layouts.pop(key, None)
            layout = self._lay_out(rule, params, grads, states, spec, created)
            layouts[key] = layout
            while len(layouts) > MAX_LAYOUTS:
                del layouts[next(iter(layouts))]
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

    def _layout_of(self, group_key: int, params: list[Tensor]) -> GroupLayout | None:
        """The layout made for exactly ``params`` (the group's parameters with a gradient), if kept."""
        layouts = self._layouts.get(group_key)
        if not layouts:
            return None
        latest = next(reversed(layouts.values()))
        if len(latest.with_grad) == len(params) and all(map(operator.is_, latest.with_grad, params)):
            return latest
        key = tuple(map(id, params))
        layout = layouts.pop(key, None)  # a layout holds its parameters: their ids are not reused meanwhile
        if layout is not None:
            layouts[key] = layout  # now the latest
        return layout

    def checked(
        self, group_key: int, params: list[Tensor], grads: list[Tensor], states: Mapping,
        layout: GroupLayout | None = None,
    ) -> list[tuple] | None:
        """The per-step checks: the plans of the group's layout for ``params`` with this
        step's addresses, or None if a layout must be made anew (``adamkit bench`` times this)."""
        if layout is None:
            layout = self._layout_of(group_key, params)
        if layout is None or not self._same_kinds(layout, params, grads):
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
            if not self._state_usable(rule, state, local, slot_names, step_dtype is not None):
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

    def _state_usable(
        self, rule: Rule, state: Mapping[str, Tensor], local: Tensor, slot_names: Sequence[str], counts_steps: bool
    ) -> bool:
        """Every state entry the rule needs is there, on the parameter's device and of its
        shape, of a float dtype, and not tracked by autograd (layout aside, which copies
        can fix); step counter and scalar state on the CPU, of one dtype."""
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
            if coded and not scales_fit(state.get(name + SCALE_SUFFIX), blocks_of(local)):
                return False
        if not counts_steps:
            return True
        step = state.get("step")
        return step_usable(step) and all(
            step_usable(state.get(name)) and state[name].dtype is step.dtype for name, _ in rule.scalar_state
        )

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
            made = allocate_flat_state(
                batch, fills, step_dtype=spec.step_dtype, scalar_fills=spec.scalar_fills, storage=spec.storage_dtype
            )
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
                if name == "step" or name in spec.scalar_fills or name.endswith(SCALE_SUFFIX) or same_strides(value, work):
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

        def launch(grad_scale: Tensor | None) -> list[Tensor]:
            moved = [owner[id(w)] for run in launches for w in run(grad_scale)]
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
