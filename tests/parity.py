"""Helpers to run torch.optim and adamkit side by side on identical problems."""

from __future__ import annotations

import copy

import pytest
import torch


# torch's CPU for-loop takes sqrt from MKL or SLEEF, which is not correctly rounded (how
# often it is an ulp off depends on the CPU: 0.75% of fp32 results on one Xeon, 15.7% on
# one EPYC), and its bias corrections from the C library's pow. adamkit's eager kernel
# (foreach=False) makes the same calls, so it is compared with torch bit for bit; the
# default kernel rounds both correctly, so it is compared within ULP_BOUND.
EAGER = {"foreach": False}
KERNELS = {"for-loop": EAGER, "default": {}}

# The largest difference between the default kernel and torch's for-loop that the suite
# allows, in ulps of each tensor's largest magnitude. Measured on a 2-core AMD EPYC
# (where torch's sqrt is off most often) over the suite's 2000 such comparisons: at most
# 1.7 ulps where gradients do not depend on the parameters, up to 17.6 ulps where they
# do and the run is long (exp_avg after 30 steps of a ReLU net at lr 0.1).
ULP_BOUND = 32


def ulps_apart(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """max |expected - actual| in ulps of expected's largest magnitude."""
    expected, actual = expected.detach(), actual.detach()
    if torch.is_complex(expected):
        expected, actual = torch.view_as_real(expected), torch.view_as_real(actual)
    finfo = torch.finfo(expected.dtype)
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, finfo.tiny)
    return ((expected - actual).abs().max().item() if expected.numel() else 0.0) / (finfo.eps * scale)


def assert_matches(expected: torch.Tensor, actual: torch.Tensor, kernel: str, what: str = "") -> None:
    """Bit for bit for the for-loop kernel; within ULP_BOUND for the default one."""
    assert expected.dtype == actual.dtype and expected.shape == actual.shape, what
    if kernel == "for-loop" or not torch.is_floating_point(expected) and not torch.is_complex(expected):
        assert torch.equal(expected, actual), (what, (expected - actual).abs().max())
    else:
        assert ulps_apart(expected, actual) <= ULP_BOUND, (what, ulps_apart(expected, actual))


def make_params(dtype, *, complex_=False, contiguous=True, seed=0):
    """Parameters of several shapes; with ``contiguous=False`` the 2-D+ ones have transposed strides."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (2, 3, 4), ()]
    params = []
    for shape in shapes:
        t = torch.randn(shape, generator=g, dtype=dtype)
        if complex_:
            t = torch.complex(t, torch.randn(shape, generator=g, dtype=dtype))
        if not contiguous and t.dim() >= 2:
            t = t.transpose(0, 1).contiguous().transpose(0, 1)
            assert not t.is_contiguous()
        params.append(torch.nn.Parameter(t))
    return params


def grads_for(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for p in params:
        real = torch.randn(p.shape, generator=g, dtype=p.real.dtype)
        if p.is_complex():
            real = torch.complex(real, torch.randn(p.shape, generator=g, dtype=p.real.dtype))
        out.append(real)
    return out


def run_side_by_side(torch_cls, adamkit_cls, params, kwargs, steps=12, schedule=None, adamkit_kwargs=None):
    """Step both optimizers on clones of ``params`` with the same gradients.

    ``adamkit_kwargs`` go to the adamkit optimizer only (``EAGER`` picks the for-loop kernel).

    Parameter 1 gets no gradient at step 3, and parameter 0 is frozen (grad None)
    from step 6 on. Returns (torch params, adamkit params, torch opt, adamkit opt).
    """
    ours = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for a, b in zip(ours, theirs):
        assert a.stride() == b.stride()
    opt_t = torch_cls(theirs, **copy.deepcopy(kwargs))
    opt_a = adamkit_cls(ours, **copy.deepcopy(kwargs), **(adamkit_kwargs or {}))
    for step in range(steps):
        grads = grads_for(params, step)
        for i, (pt, pa, g) in enumerate(zip(theirs, ours, grads)):
            skip = (i == 1 and step == 3) or (i == 0 and step >= 6)
            pt.grad = None if skip else g.clone()
            pa.grad = None if skip else g.clone()
        opt_t.step()
        opt_a.step()
        if schedule is not None:
            schedule(opt_t, step)
            schedule(opt_a, step)
    return theirs, ours, opt_t, opt_a


def assert_bitwise_equal(theirs, ours, opt_t, opt_a):
    for pt, pa in zip(theirs, ours):
        assert torch.equal(pt, pa), (pt - pa).abs().max()
        st, sa = opt_t.state[pt], opt_a.state[pa]
        assert list(st) == list(sa)
        for key in st:
            assert st[key].dtype == sa[key].dtype, key
            assert st[key].device == sa[key].device, key
            assert torch.equal(st[key], sa[key]), key


def assert_matches_torch(theirs, ours, opt_t, opt_a, kernel):
    """``assert_bitwise_equal`` for the for-loop kernel; within ULP_BOUND for the default
    kernel, with the same state structure and bit-equal step counts."""
    for pt, pa in zip(theirs, ours, strict=True):
        assert_matches(pt, pa, kernel, "param")
        st, sa = opt_t.state[pt], opt_a.state[pa]
        assert list(st) == list(sa)
        for key in st:
            assert st[key].device == sa[key].device, key
            assert_matches(st[key], sa[key], "for-loop" if key == "step" else kernel, key)


def assert_losses_match(expected: list[float], actual: list[float], kernel: str) -> None:
    """Loss curves: equal for the for-loop kernel; within ULP_BOUND fp32 ulps for the default one."""
    if kernel == "for-loop":
        assert actual == expected
    else:
        tolerance = ULP_BOUND * torch.finfo(torch.float32).eps
        assert actual == pytest.approx(expected, rel=tolerance, abs=tolerance)


def step_together(first, second, steps):
    """Step two (params, optimizer) pairs on the same gradients, ``grads_for(first params, step)``."""
    (params_a, opt_a), (params_b, opt_b) = first, second
    for step in steps:
        for p, q, grad in zip(params_a, params_b, grads_for(params_a, step)):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt_a.step()
        opt_b.step()
