"""Gradient clipping inside the step: ``max_grad_norm=`` on every optimizer
(``adamkit.optimizers.clipping``), against ``torch.nn.utils.clip_grad_norm_`` then a step."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

import adamkit
from adamkit.kernels.fused import FusedKernel
from adamkit.kernels.fused_cuda import FusedCudaKernel
from adamkit.optimizers import base
from algorithms import ALGORITHMS, WITH_TORCH
from parity import EAGER, assert_bitwise_equal, grads_for


def _params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shapes = [(40, 30), (30,), (70_000,), (3, 4), ()]  # one spans several work items
    params = [torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype)) for shape in shapes]
    params.append(torch.nn.Parameter(torch.randn(9, 5, generator=g, dtype=dtype).t()))  # transposed
    return params


def _grads(params, step):
    # large enough that a norm of 1 clips; step 2 small enough that it does not
    return [g * (1e-4 if step == 2 else 3.0) for g in grads_for(params, step)]


def _clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


NORMS = [2.0, math.inf, 1.0]


@pytest.mark.parametrize("norm_type", NORMS, ids=["l2", "inf", "l1"])
@pytest.mark.parametrize("algorithm", WITH_TORCH, ids=[a.name for a in WITH_TORCH])
def test_for_loop_equals_clip_grad_norm_then_torchs_for_loop(algorithm, norm_type):
    theirs, ours = _clone(_params()), _clone(_params())
    opt_t = algorithm.torch_cls(theirs, lr=0.01, **algorithm.spot, foreach=False)
    opt_a = algorithm.cls(ours, lr=0.01, **algorithm.spot, **EAGER, max_grad_norm=1.0, norm_type=norm_type)
    for step in range(4):
        for p, q, grad in zip(theirs, ours, _grads(theirs, step)):
            p.grad, q.grad = grad.clone(), grad.clone()
        norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type=norm_type, foreach=False)
        opt_t.step()
        opt_a.step()
        assert torch.equal(opt_a.last_grad_norm, norm)
    assert opt_a.last_step_kernels == {"eager": len(ours)}
    assert_bitwise_equal(theirs, ours, opt_t, opt_a)


def _clipped_against_prescaled(cls, flags, steps=4, **options):
    """Step one optimizer that clips and one that does not, given the first one's clipped
    gradients; both must end with the same bits. Returns the clipping optimizer."""
    clipping, plain = _clone(_params()), _clone(_params())
    opt_c = cls(clipping, lr=0.01, **flags, max_grad_norm=1.0, **options)
    opt_p = cls(plain, lr=0.01, **flags, **options)
    for step in range(steps):
        grads = _grads(clipping, step)
        for p, grad in zip(clipping, grads):
            p.grad = grad.clone()
        opt_c.step()
        assert all(torch.equal(p.grad, grad) for p, grad in zip(clipping, grads))  # left as they were
        coefficient = torch.clamp(1.0 / (opt_c.last_grad_norm + 1e-6), max=1.0)
        for p, grad in zip(plain, grads):
            p.grad = grad * coefficient
        opt_p.step()
    assert_bitwise_equal(plain, clipping, opt_p, opt_c)
    return opt_c


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=[a.name for a in ALGORITHMS])
def test_default_kernel_multiplies_each_gradient_by_the_coefficient(algorithm):
    optimizer = _clipped_against_prescaled(algorithm.cls, algorithm.spot)
    assert optimizer.last_step_kernels == {"fused_cpu": 6}


def test_the_triton_pass_multiplies_each_gradient_by_the_coefficient(monkeypatch):
    monkeypatch.setattr(FusedCudaKernel, "device_type", "cpu")
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCudaKernel()])
    optimizer = _clipped_against_prescaled(adamkit.AdamW, dict(weight_decay=0.1), steps=2)
    assert optimizer.last_step_kernels == {"fused_cuda": 6}


def test_exact_eager_kernel_multiplies_each_gradient_by_the_coefficient(monkeypatch):
    monkeypatch.setattr(FusedKernel, "takes", lambda self, param, grad: False)
    optimizer = _clipped_against_prescaled(adamkit.Adam, dict(amsgrad=True), state_dtype="int8")
    assert optimizer.last_step_kernels == {"eager": 6}


@pytest.mark.parametrize("norm_type", [2.0, math.inf], ids=["l2", "inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_norm_is_the_exact_norm_correctly_rounded(norm_type, dtype):
    """fp64 partial sums added exactly: for fp32 gradients the norm is the exact one
    rounded to fp32 (for these gradients), where torch's fp32 sums may be an ulp or more
    off; for fp64 ones (whose squares round) within a few ulps."""
    params = _params(dtype=dtype)
    optimizer = adamkit.Adam(params, max_grad_norm=1.0, norm_type=norm_type)
    for p, grad in zip(params, _grads(params, 0)):
        p.grad = grad
    optimizer.step()
    values = torch.cat([p.grad.reshape(-1).double() for p in params])
    if norm_type == 2.0:
        exact = math.sqrt(math.fsum((values * values).tolist()))  # fp32 squares are exact in fp64
    else:
        exact = values.abs().max().item()
    assert optimizer.last_grad_norm.dtype is dtype
    if dtype is torch.float32:
        assert optimizer.last_grad_norm.item() == torch.tensor(exact, dtype=torch.float64).to(dtype).item()
    else:
        assert optimizer.last_grad_norm.item() == pytest.approx(exact, rel=1e-15, abs=0)


def test_bf16_gradients_give_a_bf16_norm_as_torchs():
    params = _params(dtype=torch.bfloat16)
    optimizer = adamkit.Adam(params, max_grad_norm=1.0)
    for p, grad in zip(params, _grads(params, 0)):
        p.grad = grad.to(torch.bfloat16)
    optimizer.step()
    expected = torch.nn.utils.get_total_norm([p.grad for p in params])
    assert optimizer.last_grad_norm.dtype is torch.bfloat16
    assert optimizer.last_grad_norm.item() == pytest.approx(expected.item(), rel=2**-7)


def test_norm_counts_only_the_parameters_the_step_moves():
    params = _params()
    optimizer = adamkit.SGD(params, lr=0.1, max_grad_norm=1.0)
    optimizer.freeze([params[0]])
    for p, grad in zip(params, _grads(params, 0)):
        p.grad = grad
    params[1].grad = None
    optimizer.step()
    expected = torch.nn.utils.get_total_norm([p.grad for p in params[2:]], foreach=False)
    assert optimizer.last_grad_norm.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("kernel", [{}, EAGER], ids=["default", "for-loop"])
def test_a_non_finite_norm_raises_before_anything_changes_if_asked(kernel):
    params = _params()
    optimizer = adamkit.Adam(params, lr=0.01, max_grad_norm=1.0, error_if_nonfinite=True, **kernel)
    for p, grad in zip(params, _grads(params, 0)):
        p.grad = grad
    optimizer.step()
    before = copy.deepcopy((params, optimizer.state_dict()))
    params[2].grad[5] = float("inf")
    with pytest.raises(RuntimeError, match="The total norm of order 2.0 for gradients from `parameters` is non-finite"):
        optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before[0]))
    after = optimizer.state_dict()["state"]
    for index, state in before[1]["state"].items():
        assert all(torch.equal(value, after[index][name]) for name, value in state.items())


def test_a_non_finite_norm_scales_as_clip_grad_norm_does_by_default():
    """torch multiplies by max_norm / inf = 0: finite gradients become 0, the infinite one NaN."""
    theirs, ours = _clone(_params()), _clone(_params())
    opt_t = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, foreach=False)
    opt_a = adamkit.SGD(ours, lr=0.1, momentum=0.9, foreach=False, max_grad_norm=1.0)
    for p, q, grad in zip(theirs, ours, _grads(theirs, 0)):
        grad.view(-1)[0] = float("inf")
        p.grad, q.grad = grad.clone(), grad.clone()
    torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=False)
    opt_t.step()
    opt_a.step()
    assert torch.isinf(opt_a.last_grad_norm)
    for p, q in zip(theirs, ours):
        assert torch.equal(p.isnan(), q.isnan()) and torch.equal(p.nan_to_num(), q.nan_to_num())


def test_skip_nonfinite_skips_before_clipping():
    params = _params()
    optimizer = adamkit.Adam(params, max_grad_norm=1.0, skip_nonfinite=True)
    before = [p.detach().clone() for p in params]
    for p, grad in zip(params, _grads(params, 0)):
        p.grad = grad
    params[0].grad[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="skipped a step"):
        optimizer.step()
    assert optimizer.last_grad_norm is None
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_options_survive_copies_and_pickles():
    optimizer = adamkit.AdamW(_params(), max_grad_norm=0.5, norm_type="inf", error_if_nonfinite=True)
    for copied in (copy.deepcopy(optimizer), pickle.loads(pickle.dumps(optimizer))):
        assert (copied.max_grad_norm, copied.norm_type, copied.error_if_nonfinite) == (0.5, math.inf, True)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(max_grad_norm=0.0), "Invalid max_grad_norm: 0.0; use a positive finite number"),
        (dict(max_grad_norm=float("inf")), "Invalid max_grad_norm: inf"),
        (dict(max_grad_norm="1"), "Invalid max_grad_norm: '1'"),
        (dict(max_grad_norm=1.0, norm_type=-1), "Invalid norm_type: -1; use a positive number, 2.0 or 'inf'"),
        (dict(max_grad_norm=1.0, norm_type="two"), "Invalid norm_type: 'two'"),
    ],
)
def test_invalid_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        adamkit.Adam(_params(), **options)


def test_without_gradients_the_norm_is_zero_as_torchs():
    optimizer = adamkit.Adam(_params(), max_grad_norm=1.0)
    optimizer.step()
    assert optimizer.last_grad_norm.item() == 0.0


def test_grad_scaler_unscales_before_the_norm():
    """GradScaler's step hands the scale to the optimizer, which unscales, then clips:
    as ``scaler.unscale_``, ``clip_grad_norm_``, ``scaler.step`` with torch's optimizer."""
    theirs, ours = _clone(_params()), _clone(_params())
    opt_t = torch.optim.Adam(theirs, lr=0.01, foreach=False)
    opt_a = adamkit.Adam(ours, lr=0.01, foreach=False, max_grad_norm=1.0)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**8) for _ in range(2)]
    for step in range(3):
        for scaler in scalers:
            scaler.scale(torch.ones(()))  # as scaling the loss would: the scaler starts here
        for p, q, grad in zip(theirs, ours, _grads(theirs, step)):
            p.grad, q.grad = grad * scalers[0].get_scale(), grad * scalers[1].get_scale()
        scalers[0].unscale_(opt_t)
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=False)
        for scaler, optimizer in zip(scalers, (opt_t, opt_a)):
            scaler.step(optimizer)
            scaler.update()
    assert_bitwise_equal(theirs, ours, opt_t, opt_a)
