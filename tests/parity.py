"""Helpers to run torch.optim and adamkit side by side on identical problems."""

from __future__ import annotations

import copy

import torch


# torch's CPU for-loop takes sqrt from MKL, which is not correctly rounded; adamkit's
# eager kernel makes the same calls, so bit-for-bit comparisons with torch use it.
EAGER = {"foreach": False}


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
