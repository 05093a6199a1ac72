"""Low-precision state outside the common case: each case a user met (issue 20).

fp64 parameters, transposed parameters with contiguous gradients, sparse gradients,
huge and non-finite values, non-contiguous layouts, bad seeds and thresholds, compact
state dicts loaded into torch.optim or missing their scales, traces of int8 state,
bf16 parameters resumed from compact state, torch's thread count, per-group formats.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import adamkit
from adamkit.kernels.fused import FusedKernel
from adamkit.state import formats

LOW = ["bf16", "int8"]


def _eager(monkeypatch):
    monkeypatch.setattr(FusedKernel, "takes", lambda self, param, grad: False)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` (NaNs compare equal to themselves bit for bit)."""
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def _states_equal(a, b, pa, pb):
    assert a.state[pa].keys() == b.state[pb].keys()
    for name, value in a.state[pa].items():
        other = b.state[pb][name]
        assert value.dtype == other.dtype and torch.equal(_bits(value), _bits(other)), name


def _twin_runs(make_params, make_grads, build, steps, monkeypatch):
    """The same run on the fused kernel and on the eager kernel."""
    runs = []
    for eager in (False, True):
        if eager:
            _eager(monkeypatch)
        params = make_params()
        optimizer = build(params)
        for step in range(steps):
            for p, grad in zip(params, make_grads(params, step)):
                p.grad = grad
            optimizer.step()
        runs.append((params, optimizer))
    monkeypatch.undo()
    return runs


def _randn(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("state_dtype", LOW)
def test_fp64_parameters_step_with_low_precision_state_on_both_kernels(state_dtype, monkeypatch):
    (fused_params, fused), (eager_params, eager) = _twin_runs(
        lambda: [torch.nn.Parameter(_randn(8192, 0, torch.float64))],
        lambda params, step: [_randn(8192, step + 1, torch.float64)],
        lambda params: adamkit.Adam(params, lr=0.01, amsgrad=True, state_dtype=state_dtype, state_seed=4),
        4, monkeypatch,
    )
    assert fused.last_step_kernels == {"fused_cpu": 1} and eager.last_step_kernels == {"eager": 1}
    assert fused.state[fused_params[0]]["exp_avg"].dtype == formats.StateSpec({}, None, state_dtype).storage_dtype(fused_params[0])
    assert torch.equal(fused_params[0], eager_params[0])
    _states_equal(fused, eager, fused_params[0], eager_params[0])


def test_a_compile_error_is_raised_as_it_is_without_a_cache_warning(monkeypatch):
    """A kernel that cannot compile says why, and not that the cache is broken."""
    from adamkit.kernels import compile_cache

    loops = compile_cache.loops_for(adamkit.Adam.update_rule.name, adamkit.Adam.update_rule.update)
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Exception, match="(?i)typing|resolution|No implementation"):
            # no element counts: the loop does not type
            loops.ensure("all_zero", ("no counts",), np.zeros(1, np.int64), None, np.zeros(1, np.float32))
    assert loops.cached


@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
@pytest.mark.parametrize("state_dtype", LOW)
def test_a_parameter_laid_out_unlike_its_gradient_steps_with_low_precision_state(state_dtype, layout, monkeypatch):
    """The parameter is stepped through copies; its int8 scales follow its own memory order,
    bf16 rounding numbers elements in it; both kernels store the same bits."""
    def make_params():
        if layout == "transposed":
            return [torch.nn.Parameter(_randn((256, 256), 0).t()), torch.nn.Parameter(_randn(5000, 1))]
        return [torch.nn.Parameter(_randn((8, 16, 8, 8), 0).to(memory_format=torch.channels_last)),
                torch.nn.Parameter(_randn(5000, 1))]

    def make_grads(params, step):
        return [_randn(p.shape, 10 + step + i) for i, p in enumerate(params)]  # contiguous gradients

    (fused_params, fused), (eager_params, eager) = _twin_runs(
        make_params, make_grads, lambda params: adamkit.Adam(params, lr=0.01, state_dtype=state_dtype, state_seed=2),
        3, monkeypatch,
    )
    assert fused.last_step_kernels == {"fused_cpu": 2}
    for p, q in zip(fused_params, eager_params):
        assert torch.equal(p, q)
        _states_equal(fused, eager, p, q)
        assert fused.state[p]["exp_avg"].stride() == p.stride()


@pytest.mark.parametrize("state_dtype", LOW)
@pytest.mark.parametrize("maximize", [False, True])
def test_adagrad_with_sparse_gradients_keeps_low_precision_state_right(state_dtype, maximize):
    """The sum of squares is decoded, updated and coded again (never added onto codes);
    maximize negates the sparse gradient, as in torch."""
    ours, theirs = torch.nn.Parameter(torch.zeros(5000)), torch.nn.Parameter(torch.zeros(5000))
    optimizer = adamkit.Adagrad([ours], lr=0.1, state_dtype=state_dtype, maximize=maximize)
    reference = torch.optim.Adagrad([theirs], lr=0.1, maximize=maximize)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        index = torch.randint(0, 5000, (300,), generator=g)
        grad = torch.sparse_coo_tensor(index[None], torch.randn(300, generator=g), (5000,))
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        optimizer.step()
        reference.step()
    decoded = formats.decoded(optimizer.state[ours])["sum"].float()
    bound = {"bf16": 8e-3, "int8": 0.15}[state_dtype]  # measured: 0.77% and 10% (tail steps of 6.25%, coded again as the sum grows)
    expected = reference.state[theirs]["sum"]
    # int8: a block's values under 2^-24.4 of its largest are 0
    block_largest = torch.nn.functional.pad(expected, (0, 120)).view(-1, 256).amax(1).repeat_interleave(256)[:5000]
    assert ((decoded - expected).abs() <= bound * expected + 2**-24 * block_largest).all()
    assert torch.allclose(ours, theirs, rtol=bound, atol=1e-3 * bound)
    assert (ours != 0).sum() == (theirs != 0).sum()  # the same elements moved


@pytest.mark.parametrize("state_dtype", LOW)
def test_sgd_momentum_with_sparse_gradients_steps_as_with_dense_ones(state_dtype):
    """Low-precision momentum is dense: a sparse gradient steps as its dense form does."""
    g = torch.Generator().manual_seed(1)
    grads = [torch.sparse_coo_tensor(torch.randint(0, 5000, (1, 50), generator=g), torch.randn(50, generator=g), (5000,))
             for _ in range(3)]
    results = []
    for dense in (False, True):
        p = torch.nn.Parameter(torch.zeros(5000))
        optimizer = adamkit.SGD([p], lr=0.1, momentum=0.9, state_dtype=state_dtype, state_seed=1)
        for grad in grads:
            p.grad = grad.to_dense() if dense else grad.clone()
            optimizer.step()
        results.append((p, optimizer))
    (sparse_p, sparse_opt), (dense_p, dense_opt) = results
    assert torch.equal(sparse_p, dense_p)
    assert torch.equal(formats.decoded(sparse_opt.state[sparse_p])["momentum_buffer"],
                       formats.decoded(dense_opt.state[dense_p])["momentum_buffer"])


@pytest.mark.parametrize("state_dtype", [None, "bf16", "int8"])
def test_sgd_weight_decay_with_a_sparse_gradient_is_refused_before_anything_changes(state_dtype):
    """torch.optim.SGD fails halfway here ('add(sparse, dense) is not supported'), after
    the parameters before it moved; adamkit says what to change, with nothing changed."""
    dense, sparse = torch.nn.Parameter(torch.ones(5000)), torch.nn.Parameter(torch.ones(5000))
    optimizer = adamkit.SGD([dense, sparse], lr=0.1, momentum=0.9, weight_decay=0.01, state_dtype=state_dtype)
    dense.grad = torch.ones(5000)
    sparse.grad = torch.sparse_coo_tensor(torch.tensor([[3]]), torch.tensor([1.0]), (5000,))
    with pytest.raises(RuntimeError, match=r"weight_decay=0.01 does not work with sparse gradients.*weight_decay=0"):
        optimizer.step()
    assert torch.equal(dense, torch.ones(5000)) and not optimizer.state and optimizer.rounds == 0


@pytest.mark.parametrize("kernel", ["fused", "eager"])
def test_int8_damage_stays_in_its_element(kernel, monkeypatch):
    """A huge finite gradient element (g * g overflows) or a NaN one changes only its own
    element's state, as fp32 state would; the 255 others of its block train on."""
    if kernel == "eager":
        _eager(monkeypatch)
    runs = {}
    for state_dtype in ("fp32", "int8"):
        p = torch.nn.Parameter(_randn(4096, 0))
        optimizer = adamkit.Adam([p], lr=0.01, state_dtype=state_dtype)
        for step in range(3):
            grad = _randn(4096, step + 1)
            if step == 0:
                grad[5], grad[300] = 1e30, float("nan")
            p.grad = grad
            optimizer.step()
        runs[state_dtype] = (p.detach().clone(), formats.decoded(optimizer.state[p]))
    (fp32_p, fp32_state), (int8_p, int8_state) = runs["fp32"], runs["int8"]
    assert torch.isinf(int8_state["exp_avg_sq"][5]) and torch.isinf(fp32_state["exp_avg_sq"][5])
    assert not torch.isfinite(int8_state["exp_avg"][5])  # 1e29, overflowing: stored as an infinity (then NaN)
    assert torch.isnan(int8_p[300]) and torch.isnan(fp32_p[300])
    healthy = torch.ones(4096, dtype=torch.bool)
    healthy[[5, 300]] = False
    assert torch.isfinite(int8_p[healthy]).all()
    assert torch.isfinite(int8_state["exp_avg"][healthy]).all() and torch.isfinite(int8_state["exp_avg_sq"][healthy]).all()
    assert (int8_p[healthy] - fp32_p[healthy]).abs().max() < 5e-3  # 3 steps of 0.01; int8 differs by its coding


def test_int8_with_skip_nonfinite_changes_no_state():
    p = torch.nn.Parameter(_randn(4096, 0))
    optimizer = adamkit.Adam([p], lr=0.01, state_dtype="int8", skip_nonfinite=True)
    p.grad = _randn(4096, 1)
    optimizer.step()
    before = {k: v.clone() for k, v in optimizer.state[p].items()}
    grad = _randn(4096, 2)
    grad[7] = float("inf")
    p.grad = grad
    with pytest.warns(UserWarning, match="skipped a step"):
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in optimizer.state[p].items())


def test_int8_never_pairs_a_nonzero_first_moment_with_a_zero_second_moment():
    """At the first step m = (1 - beta1) g and v = (1 - beta2) g^2 share their block
    structure: wherever m codes as nonzero, v does too, over 60 octaves of gradients."""
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(256 * 64, generator=g) * 2.0 ** (-60 * torch.rand(256 * 64, generator=g))
    p = torch.nn.Parameter(torch.zeros_like(grad))
    optimizer = adamkit.Adam([p], lr=0.01, state_dtype="int8")
    p.grad = grad
    optimizer.step()
    state = formats.decoded(optimizer.state[p])
    assert (state["exp_avg"] != 0).any() and (state["exp_avg"] == 0).any()  # both cases are met
    assert not ((state["exp_avg"] != 0) & (state["exp_avg_sq"] == 0)).any()
    assert torch.isfinite(p).all() and p.abs().max() <= 0.0100001


@pytest.mark.parametrize("seed", [1.5, "3", None, True, -1, 2**32, 2**70])
def test_a_bad_state_seed_is_refused_at_construction(seed):
    with pytest.raises(ValueError, match="Invalid state_seed"):
        adamkit.Adam([torch.nn.Parameter(torch.zeros(1))], state_dtype="bf16", state_seed=seed)


@pytest.mark.parametrize("threshold", [None, "10", float("nan"), 1.5, -1, True])
def test_a_bad_threshold_is_refused_at_construction(threshold):
    with pytest.raises(ValueError, match="Invalid low_precision_min_elements"):
        adamkit.Adam([torch.nn.Parameter(torch.zeros(1))], low_precision_min_elements=threshold)


def test_a_group_can_choose_its_own_state_dtype():
    """Per-group formats, as bitsandbytes' override_config: fp32 for one group, int8 for the other."""
    a, b = torch.nn.Parameter(torch.randn(5000)), torch.nn.Parameter(torch.randn(5000))
    optimizer = adamkit.Adam([{"params": [a], "state_dtype": "fp32"}, {"params": [b]}], state_dtype="int8")
    a.grad, b.grad = torch.randn(5000), torch.randn(5000)
    optimizer.step()
    assert optimizer.state[a]["exp_avg"].dtype == torch.float32 and optimizer.state[b]["exp_avg"].dtype == torch.int8
    with pytest.raises(ValueError, match="Invalid state_dtype: 'int4'"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "state_dtype": "int4"})


def _trained(state_dtype, dtype=torch.float32, steps=2, **kwargs):
    params = [torch.nn.Parameter(_randn(5000, 0, dtype)), torch.nn.Parameter(_randn(100, 1, dtype))]
    optimizer = adamkit.Adam(params, lr=0.01, state_dtype=state_dtype, **kwargs)
    for step in range(steps):
        for p in params:
            p.grad = _randn(p.shape, 10 + step, dtype)
        optimizer.step()
    return params, optimizer


def test_torch_optim_refuses_a_compact_state_dict_before_changing_anything():
    params, optimizer = _trained("int8")
    compact = optimizer.state_dict(compact=True)
    buffer = io.BytesIO()
    torch.save(compact, buffer)
    buffer.seek(0)
    compact = torch.load(buffer, weights_only=True)  # the marker loads where adamkit is imported
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = torch.optim.Adam(twins, lr=0.01)
    for p in twins:
        p.grad = torch.ones_like(p)
    theirs.step()
    before = {k: v.clone() for k, v in theirs.state[twins[0]].items()}
    with pytest.raises(ValueError, match="state_dict\\(compact=True\\).*Load it into an adamkit optimizer"):
        theirs.load_state_dict(compact)
    assert all(torch.equal(before[k], v) for k, v in theirs.state[twins[0]].items())
    theirs.load_state_dict(optimizer.state_dict())  # torch's format loads


def test_int8_codes_without_their_scales_are_refused():
    params, optimizer = _trained("int8")
    compact = optimizer.state_dict(compact=True)
    del compact["state"][0]["exp_avg.scale"]
    fresh = adamkit.Adam(params, lr=0.01, state_dtype="int8")
    with pytest.raises(ValueError, match="int8 codes without their block scales 'exp_avg.scale'"):
        fresh.load_state_dict(compact)
    assert not fresh.state


def test_a_trace_shows_int8_state_as_values():
    p = torch.nn.Parameter(_randn(5000, 0))
    optimizer = adamkit.Adam([p], lr=0.01, state_dtype="int8")
    with adamkit.trace(optimizer) as recorded:
        p.grad = _randn(5000, 1)
        optimizer.step()
    record = recorded.records[0]
    assert record.exp_avg.dtype == torch.float32 and (record.exp_avg_sq >= 0).all()
    # within a step (an eighth of an octave at most); under 2^-10.5 of the block's largest: 0
    assert torch.allclose(record.exp_avg, 0.1 * p.grad, rtol=0.125, atol=3e-4)


@pytest.mark.parametrize("state_dtype", [None, "fp32", "bf16", "int8"])
def test_a_compact_resume_of_bf16_parameters_is_bit_for_bit(state_dtype):
    """torch's load casts state to the parameter's dtype: a compact dict's state is kept as stored."""
    params, optimizer = _trained(state_dtype, torch.bfloat16, state_seed=3)
    saved = optimizer.state_dict(compact=True)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = adamkit.Adam(twins, lr=0.01, state_dtype=state_dtype, state_seed=3)
    resumed.load_state_dict(saved)
    for p, q in zip(params, twins):
        _states_equal(optimizer, resumed, p, q)
    for step in range(2, 4):
        for p, q in zip(params, twins):
            p.grad = q.grad = _randn(p.shape, 10 + step, torch.bfloat16)
        optimizer.step()
        resumed.step()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
        _states_equal(optimizer, resumed, p, q)


@pytest.mark.parametrize("variables", [{"OMP_NUM_THREADS": "1"}, {"NUMBA_NUM_THREADS": "1"}])
def test_kernels_leave_torchs_thread_count_alone(variables):
    script = textwrap.dedent("""
        import torch, adamkit
        before = torch.get_num_threads()
        for state_dtype in (None, "bf16", "int8"):
            w = torch.nn.Parameter(torch.randn(5000)); w.grad = torch.randn(5000)
            adamkit.Adam([w], skip_nonfinite=True, state_dtype=state_dtype).step()
            assert torch.get_num_threads() == before, (state_dtype, before, torch.get_num_threads())
        print(before)
    """)
    env = dict(os.environ, **variables)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("state_dtype", ["bf16", "int8"])
def test_state_a_rule_makes_for_a_complex_parameter_keeps_its_complex_dtype(state_dtype):
    """Schedule-Free makes z on its first step, on the real view of a complex parameter,
    in fp32 whatever the format: the eager kernel once cast that view to complex64 and
    failed halfway through the step (found by the slow state-space sweep)."""
    p = torch.nn.Parameter(torch.randn(70, 90, dtype=torch.complex64))
    optimizer = adamkit.ScheduleFreeAdamW([p], lr=0.01, foreach=False, state_dtype=state_dtype)
    p.grad = torch.randn_like(p)
    optimizer.step()
    assert optimizer.state[p]["z"].dtype is torch.complex64 and optimizer.state[p]["z"].shape == p.shape
    assert torch.isfinite(torch.view_as_real(p)).all()
