"""Which kernel steps which parameter, and a step made ready before it writes.

A step is all or nothing. ``prepare_step`` does everything that can fail first, for
every group: it checks each gradient, creates the state of parameters seen for the
first time, lays out and compiles the fused passes and computes their coefficients.
If any of that raises, the state it created is removed and nothing else was written:
parameters, state, step counters and ``rounds`` are as they were. ``PreparedStep.commit``
then writes: it runs the passes (fused kernels) and the eager kernel's steps.

Dispatch: each fused kernel (``optimizer.fused_kernels``: CUDA, then CPU) takes what it
can of a group's parameters; the eager kernel takes the rest, and whole groups that ask
for torch's for-loop (``foreach=False``), autograd (``differentiable``) or device-side
scalars (``capturable``).
"""

from __future__ import annotations

import operator
from itertools import repeat
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adamkit.kernels import eager_step
from adamkit.kernels.fused import Launch
from adamkit.optimizers.agreement import GradientChecks
from adamkit.optimizers.clipping import compile_norm
from adamkit.optimizers.gradient_checks import changed, grad_extremes, local_copies, warn_moved
from adamkit.optimizers.hyperparameters import squeeze_scalar
from adamkit.optimizers.state_creation import new_state
from adamkit.state.formats import StateSpec

if TYPE_CHECKING:
    from adamkit.optimizers.base import RuleOptimizer

_grad_of = operator.attrgetter("grad")


def capturable_devices() -> list[str]:
    return ["cuda", "xpu", "hpu", torch._C._get_privateuse1_backend_name(), "xla"]


class PreparedStep:
    """A step made ready by ``prepare_step``: its launches, by kernel, and the state it created."""

    def __init__(self, optimizer: RuleOptimizer, checks: GradientChecks) -> None:
        self.optimizer = optimizer
        self.checks = checks
        self.launches: list[Launch] = []
        self.stepped: dict[str, int] = {}  # parameters each kernel steps
        self.created: list[Tensor] = []  # parameters whose state this step created
        self.group_updates: list[tuple[dict, dict]] = []  # each group's own numbers after the step (Rule.group_step)

    def undo(self) -> None:
        """Remove the state this step created: the optimizer is as it was before it."""
        for p in reversed(self.created):
            self.optimizer.state.pop(p, None)
        self.created.clear()

    def commit(self, stacklevel: int, grad_scale: Tensor | None = None) -> None:
        """Run every launch, gradients multiplied by ``grad_scale`` (a 0-dim tensor: the
        clipping coefficient) unless it is None; warn about parameters a zero gradient
        did not keep still."""
        optimizer = self.optimizer
        optimizer.rounds += 1
        optimizer.last_step_kernels = {kernel: count for kernel, count in self.stepped.items() if count}
        for group, values in self.group_updates:
            group.update(values)
        for launch in self.launches:
            moved = launch(grad_scale)
            # A shard's all-zero gradient is not the whole gradient: DTensors are watched apart.
            warn_moved(optimizer, [p for p in moved if p not in self.checks.sharded], stacklevel + 1)

    def count(self, kernel: str, params: int) -> None:
        self.stepped[kernel] = self.stepped.get(kernel, 0) + params


def prepare_step(optimizer: RuleOptimizer, checks: GradientChecks) -> PreparedStep:
    """Make ready the step of every group's unfrozen parameters with a gradient."""
    prepared = PreparedStep(optimizer, checks)
    rounds = optimizer.rounds + 1
    try:
        for group in optimizer.param_groups:
            hp = dict(group)
            hp["lr"] = squeeze_scalar(group["lr"])
            if optimizer.update_rule.group_step is not None:
                hp.update(values := optimizer.update_rule.group_step(hp))
                prepared.group_updates.append((group, values))
            spec = optimizer.state_spec(group, rounds=rounds)
            if optimizer.uses_fused_kernel(group):
                rest = _prepare_fused(optimizer, group, hp, spec, prepared)
                if rest:
                    _prepare_eager(optimizer, group, hp, spec, prepared, rest, exact=True)
            else:
                _prepare_eager(optimizer, group, hp, spec, prepared, None, exact=False)
    except BaseException:
        prepared.undo()
        raise
    return prepared


def warmup(optimizer: RuleOptimizer) -> None:
    """Compile now what ``optimizer``'s first step will run, so that no step waits for it.

    The step is prepared as if every unfrozen parameter had an all-zero gradient (those
    without one get it for the moment): the fused kernels lay out their plans and compile
    their passes (numba on the CPU, Triton on CUDA, both cached on disk for the next run),
    then everything is taken back: parameters, gradients, state and step counts are as
    they were. The state is allocated for the moment, so the memory a step needs is
    reserved once too.

    >>> import torch, adamkit
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> optimizer = adamkit.Adam([w], lr=0.1)
    >>> adamkit.warmup(optimizer)
    >>> len(optimizer.state), w.grad
    (0, None)
    """
    without = [
        p for group in optimizer.param_groups for p in group["params"] if p.grad is None and p not in optimizer.frozen
    ]
    try:
        for p in without:
            p.grad = torch.zeros_like(p)
        checks = GradientChecks(overflowed=False, finite=True, sharded=frozenset(), zero=[], moved_earlier=[])
        with torch.no_grad():
            prepare_step(optimizer, checks).undo()
            compile_norm(optimizer)  # max_grad_norm's norm: on the CPU a loop of its own
    finally:
        for p in without:
            p.grad = None


def _prepare_fused(
    optimizer: RuleOptimizer, group: dict[str, Any], hp: dict[str, Any], spec: StateSpec, prepared: PreparedStep
) -> list[Tensor]:
    """Prepare what the fused kernels take of the group's unfrozen parameters with a
    gradient, each kernel what the one before left; returns the rest, for the eager kernel."""
    frozen = optimizer.frozen
    params = group["params"]
    grads = list(map(_grad_of, params))
    if frozen or any(map(operator.is_, grads, repeat(None))):
        active = [(p, g) for p, g in zip(params, grads) if g is not None and p not in frozen]
        params, grads = [p for p, _ in active], [g for _, g in active]
    rest = []
    for kernel in optimizer.fused_kernels:
        on_device = list(map(kernel.on_device, params))
        if not any(on_device):
            continue
        later = []
        if not all(on_device):
            later = [(p, g) for p, g, here in zip(params, grads, on_device) if not here]
            params = [p for p, here in zip(params, on_device) if here]
            grads = [g for g, here in zip(grads, on_device) if here]
        work = kernel.prepare_group(
            type(optimizer).update_rule, id(group), params, grads, optimizer.state, spec, hp,
            decoupled_weight_decay=optimizer.decoupled_weight_decay(group),
            report_moved=optimizer.warn_zero_grad_update, created=prepared.created,
        )
        prepared.launches += work.launches
        prepared.count(kernel.name, work.stepped)
        rest += work.rest
        params, grads = [p for p, _ in later], [g for _, g in later]
    return rest + params


def _params_with_grad(
    optimizer: RuleOptimizer, group: dict[str, Any], candidates: list[Tensor] | None, prepared: PreparedStep
) -> list[Tensor]:
    """The group's unfrozen parameters with a gradient (of ``candidates``, if given),
    checked as torch checks them, with state created for those that have none."""
    params = [
        p for p in (group["params"] if candidates is None else candidates)
        if p.grad is not None and p not in optimizer.frozen
    ]
    for p in params:
        optimizer.check_grad(p, group)
        _check_eager_step(optimizer, group, p, optimizer.state.get(p))
    for p in params:
        if not optimizer.state.get(p):
            # Stateless algorithms (SGD without momentum) leave no entry, as in torch.
            state = new_state(optimizer, p, group)
            if state:
                optimizer.state[p] = state
                prepared.created.append(p)
                _check_eager_step(optimizer, group, p, state)
    return params


def _check_eager_step(optimizer: RuleOptimizer, group: dict[str, Any], p: Tensor, state: dict | None) -> None:
    state = state or {}
    if group.get("differentiable") and "step" in state and state["step"].requires_grad:
        raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")
    if group.get("foreach") and torch.is_tensor(group["lr"]) and not group.get("capturable"):
        raise RuntimeError("lr as a Tensor is not supported for capturable=False and foreach=True")
    if group.get("capturable") and not torch.compiler.is_compiling():
        step = state.get("step")
        devices = capturable_devices()
        if not (p.device.type in devices and (step is None or step.device.type == p.device.type)):
            raise AssertionError(
                f"If capturable=True, params and state_steps must be on supported devices: {devices}."
            )


def _prepare_eager(
    optimizer: RuleOptimizer, group: dict[str, Any], hp: dict[str, Any], spec: StateSpec,
    prepared: PreparedStep, candidates: list[Tensor] | None, *, exact: bool,
) -> None:
    params = _params_with_grad(optimizer, group, candidates, prepared)
    if not params:
        return
    # A capturable step must not wait for the device (CUDA graphs): no zero-grad check.
    watch = optimizer.warn_zero_grad_update and not group.get("capturable")
    whole = [p for p in params if p not in prepared.checks.sharded]
    extremes = grad_extremes(whole) if watch else {}
    zero_grad_params = [
        p for p in whole if p not in optimizer._warned_zero_grad and extremes.get(p) == (0.0, 0.0)
    ]

    def launch(grad_scale: Tensor | None) -> list[Tensor]:
        before = local_copies(zero_grad_params)
        eager_step(
            type(optimizer).update_rule,
            params,
            optimizer.state,
            hp,
            decoupled_weight_decay=optimizer.decoupled_weight_decay(group),
            step_as_tensor=bool(group.get("capturable") or group.get("differentiable")),
            complex_as_real=optimizer.complex_as_real,
            exact=exact,
            spec=spec,
            grad_scale=grad_scale,
        )
        return changed(zero_grad_params, before)

    prepared.launches.append(launch)
    prepared.count("eager", len(params))

