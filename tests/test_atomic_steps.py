"""A step is all or nothing: one that raises changes nothing.

A failure is injected at each stage of a step (the gradient checks, state creation,
laying out the fused passes, compiling, their coefficients, the copies of strided
tensors, the eager kernel's checks, a later group's preparation) for several optimizers,
kernels and formats, on a first step (state is created) and a later one. Parameters,
gradients, every state tensor (dtype and bits), which parameters have state, step
counts, ``rounds`` and ``skipped_steps`` must be as they were; the step repeated without
the failure must then give the bits of an optimizer that never failed.
"""

from __future__ import annotations

import pytest
import torch

import adamkit
from adamkit.kernels import fused, fused_cpu
from adamkit.kernels.compile_cache import CompiledLoops
from adamkit.kernels.fused_cuda import FusedCudaKernel
from adamkit.optimizers import base, dispatch, gradient_checks
from snapshots import same, snapshot


class Injected(RuntimeError):
    pass


def _raise(*args, **kwargs):
    raise Injected("injected failure")


def _params(seed: int) -> list[torch.nn.Parameter]:
    """Large and small, a transposed one (its gradient contiguous: stepped through copies)
    and a non-dense one."""
    g = torch.Generator().manual_seed(seed)
    base_ = torch.randn(80, 100, generator=g)
    return [
        torch.nn.Parameter(torch.randn(6000, generator=g)),
        torch.nn.Parameter(torch.randn(9, generator=g)),
        torch.nn.Parameter(torch.randn(70, 90, generator=g).t()),
        torch.nn.Parameter(base_[:, ::2]),
    ]


def _grads(params, step: int, sparse: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=g) for p in params]
    if sparse:
        grads[0] = torch.sparse_coo_tensor(torch.tensor([[1, 5, 5, 400]]), torch.randn(4, generator=g), (6000,))
    return grads


CONFIGS = {
    "adam-int8": (adamkit.Adam, dict(amsgrad=True, weight_decay=0.1, state_dtype="int8"), False),
    "adamw-bf16-two-groups": (adamkit.AdamW, dict(state_dtype="bf16"), False),
    "sgd-momentum-int8": (adamkit.SGD, dict(momentum=0.9, state_dtype="int8"), False),
    "adagrad-bf16-sparse": (adamkit.Adagrad, dict(state_dtype="bf16"), True),
    "rmsprop-fp32-for-loop": (adamkit.RMSprop, dict(centered=True, momentum=0.5, foreach=False), False),
    "yogi-default": (adamkit.Yogi, {}, False),
    "adamax-int8": (adamkit.Adamax, dict(weight_decay=0.1, state_dtype="int8"), False),
    "nadam-bf16": (adamkit.NAdam, dict(state_dtype="bf16"), False),
}


def _build(config: str, params):
    cls, kwargs, _ = CONFIGS[config]
    if config == "adamw-bf16-two-groups":  # the second group on the eager kernel
        groups = [{"params": params[:2]}, {"params": params[2:], "foreach": False}]
        return cls(groups, lr=0.01, skip_nonfinite=True, **kwargs)
    return cls(params, lr=0.01, skip_nonfinite=True, **kwargs)


def _second_call(target):
    """A replacement for ``target`` that fails on its second call in a step (a later group)."""
    calls = []

    def replacement(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Injected("injected failure in a later group")
        return target(*args, **kwargs)

    return replacement


# stage -> (object, attribute, replacement factory)
STAGES = {
    "gradient checks": (gradient_checks, "grads_finite", lambda original: _raise),
    "fused state creation": (fused, "allocate_flat_state", lambda original: _raise),
    "fused layout": (fused, "build_plan", lambda original: _raise),
    "compile": (CompiledLoops, "ensure", lambda original: _raise),
    "coefficients": (fused_cpu, "gradient_transform", lambda original: _raise),
    "strided copies": (fused.FusedKernel, "_prepare_staged", lambda original: _raise),
    "eager checks": (dispatch, "_check_eager_step", lambda original: _raise),
    "eager state creation": (dispatch, "new_state", lambda original: _raise),
    "a later group": (dispatch, "_prepare_fused", _second_call),
    "a later pass": (fused_cpu.FusedCpuKernel, "prepare_launch", _second_call),
}


@pytest.mark.parametrize("at_step", [0, 2])
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("config", CONFIGS)
def test_a_step_that_raises_changes_nothing(config, stage, at_step, monkeypatch):
    sparse = CONFIGS[config][2]
    params, twins = _params(0), _params(0)
    optimizer, twin = _build(config, params), _build(config, twins)
    for step in range(at_step + 1):
        for p, q, grad in zip(params, twins, _grads(params, step, sparse)):
            p.grad, q.grad = grad.clone(), grad.clone()
        if step < at_step:
            optimizer.step()
            twin.step()
    before = snapshot(optimizer, params)
    owner, name, make = STAGES[stage]
    monkeypatch.setattr(owner, name, make(getattr(owner, name)))
    try:
        optimizer.step()
    except Injected:
        failed = True
    else:
        failed = False  # this configuration never reaches the stage: it must then have stepped normally
    monkeypatch.undo()
    if failed:
        assert same(snapshot(optimizer, params), before), f"{stage} changed something"
        optimizer.step()
    twin.step()
    assert same(snapshot(optimizer, params), snapshot(twin, twins)), "the repeated step differs"


def test_the_cuda_kernel_changes_nothing_when_its_tables_fail(monkeypatch):
    """The CUDA kernel's preparation (device tables, in Triton's interpreter here)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the interpreter runs on CPU tensors")
    monkeypatch.setattr(FusedCudaKernel, "device_type", "cpu")
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCudaKernel()])
    params = _params(1)
    optimizer = adamkit.Adam(params, lr=0.01, state_dtype="int8")
    for p, grad in zip(params, _grads(params, 0, False)):
        p.grad = grad
    before = snapshot(optimizer, params)
    from adamkit.kernels import fused_cuda

    with monkeypatch.context() as patch:
        patch.setattr(fused_cuda, "_Tables", _raise)
        with pytest.raises(Injected):
            optimizer.step()
    assert same(snapshot(optimizer, params), before)
    optimizer.step()
    assert optimizer.last_step_kernels == {"fused_cuda": len(params)}
    assert all(float(optimizer.state[p]["step"]) == 1 for p in params)


@pytest.mark.parametrize("capturable", [False, True])
def test_a_step_captured_in_a_cuda_graph_must_be_capturable(capturable, monkeypatch):
    """Captured, a step that computes its coefficients on the host would replay one step's
    bias correction and lr forever: torch refuses it, and so does adamkit, before anything
    changes. (No GPU here: the capture is simulated.)"""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    w = torch.nn.Parameter(torch.ones(10))
    w.grad = torch.ones(10)
    optimizer = adamkit.Adam([w], lr=0.1, capturable=capturable)
    before = snapshot(optimizer, [w])
    if capturable:
        # Capturable is for CUDA tensors; a CPU one is refused as torch refuses it.
        with pytest.raises(AssertionError, match="capturable=True"):
            optimizer.step()
    else:
        with pytest.raises(RuntimeError, match="capturable is False; construct it with capturable=True"):
            optimizer.step()
    assert same(snapshot(optimizer, [w]), before)
