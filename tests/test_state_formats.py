"""Low-precision optimizer state: state_dtype="fp32", "bf16" and "int8" (adamkit.state.formats)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import adamkit
from adamkit.optimizers.checkpoint_format import per_tensor_numbers
from adamkit.kernels.fused import FusedKernel
from adamkit.state import formats
from algorithms import ALGORITHMS as TABLE
from parity import grads_for, step_together

ALGORITHMS = [(a.cls, a.spot) for a in TABLE]
IDS = [cls.__name__ for cls, _ in ALGORITHMS]


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64, 100), (100,), (3, 4), (50, 90)]  # two above the 4096-element threshold, two below
    return [torch.nn.Parameter(torch.randn(shape, generator=g).to(dtype)) for shape in shapes]


def _run(cls, kwargs, params, steps=6, **options):
    optimizer = cls(params, lr=0.01, **kwargs, **options)
    for step in range(steps):
        for p, grad in zip(params, grads_for(params, step)):
            p.grad = grad.to(p.dtype)
        optimizer.step()
    return optimizer


def _state_bytes(optimizer, params):
    numbers = per_tensor_numbers(optimizer)
    return sum(t.numel() * t.element_size() for p in params for k, t in optimizer.state[p].items() if k not in numbers)


LOW = ["bf16", "int8"]
STORED = {"bf16": {torch.bfloat16}, "int8": {torch.int8, torch.float32}}  # int8: codes and fp32 block scales


@pytest.mark.parametrize("state_dtype", LOW)
@pytest.mark.parametrize("cls,kwargs", ALGORITHMS, ids=IDS)
def test_low_precision_state_is_stored_so_above_the_threshold(cls, kwargs, state_dtype):
    params = _params()
    optimizer = _run(cls, kwargs, params, state_dtype=state_dtype)
    assert optimizer.last_step_kernels == {"fused_cpu": len(params)}
    wide = cls.update_rule.full_precision_slots  # Schedule-Free's z: fp32 in every format
    for p in params:
        expected = STORED[state_dtype] if p.numel() >= formats.MIN_ELEMENTS else {torch.float32}
        stored = {k: t.dtype for k, t in optimizer.state[p].items() if k not in per_tensor_numbers(optimizer)}
        assert {dtype for k, dtype in stored.items() if k not in wide} == expected
        assert all(stored[k] is torch.float32 for k in wide)


def test_adam_state_bytes_per_parameter():
    """fp32 Adam keeps 8 bytes per parameter beside it, bf16 state 4, int8 state 2.03
    (a byte per value and an fp32 scale per 256; 50,000 elements are 196 blocks)."""
    params = [torch.nn.Parameter(torch.randn(50_000)) for _ in range(3)]
    for state_dtype, expected in ((None, 8), ("fp32", 8), ("bf16", 4), ("int8", 2 + 2 * 4 / 256)):
        optimizer = _run(adamkit.Adam, {}, params, steps=1, state_dtype=state_dtype)
        assert _state_bytes(optimizer, params) / sum(p.numel() for p in params) == pytest.approx(expected, rel=1e-3), state_dtype


@pytest.mark.parametrize("state_dtype", LOW)
@pytest.mark.parametrize("cls,kwargs", ALGORITHMS, ids=IDS)
def test_the_same_seed_gives_the_same_bits(cls, kwargs, state_dtype):
    runs = [(_params(), seed) for seed in (7, 7, 8)]
    states = [(_run(cls, kwargs, params, state_dtype=state_dtype, state_seed=seed), params) for params, seed in runs]
    big = [i for i, p in enumerate(runs[0][0]) if p.numel() >= formats.MIN_ELEMENTS]
    narrow = torch.bfloat16 if state_dtype == "bf16" else torch.int8
    slot = next(k for k, t in states[0][0].state[runs[0][0][0]].items() if t.dtype is narrow)

    def bits(index):
        optimizer, params = states[index]
        return [optimizer.state[params[i]][slot] for i in big]

    assert all(torch.equal(a, b) for a, b in zip(bits(0), bits(1)))
    assert not all(torch.equal(a, b) for a, b in zip(bits(0), bits(2)))


def test_stochastic_rounding_keeps_updates_smaller_than_bf16s_spacing():
    """SGD momentum on a buffer near 1.0 receiving +1e-4 a step: bf16's spacing there is
    2^-7 ~ 0.0078, so rounding to nearest never moves it; stochastic rounding adds up."""
    buffer_start = torch.ones(20_000)

    def run(state_dtype):
        p = torch.nn.Parameter(torch.zeros(20_000))
        optimizer = adamkit.SGD([p], lr=0.0, momentum=1.0, state_dtype=state_dtype)
        p.grad = buffer_start.clone()
        optimizer.step()  # the buffer starts as the first gradient
        for _ in range(100):
            p.grad = torch.full_like(p, 1e-4)
            optimizer.step()
        return optimizer.state[p]["momentum_buffer"].float()

    exact = run("fp32")
    nearest = torch.ones(20_000).to(torch.bfloat16).float()
    for _ in range(100):
        nearest = (nearest + 1e-4).to(torch.bfloat16).float()
    stochastic = run("bf16")
    assert torch.allclose(exact, torch.full_like(exact, 1.01), atol=1e-5)
    assert torch.equal(nearest, torch.ones_like(nearest))  # round-to-nearest loses every update
    assert abs(stochastic.mean().item() - 1.01) < 5e-4  # unbiased: the mean follows the fp32 value


def test_stochastic_rounding_keeps_a_slow_averages_increments_smaller_than_half_an_int8_step():
    """An average at 0.5 moving towards 1.0 at decay 0.9999 (Adam's beta2) in blocks whose
    largest value stays 1.0: each step adds 5e-5, while int8's steps near 0.5 are 2^-6
    apart, so codes rounded to nearest never move; rounded stochastically, the mean
    follows fp32's 0.5476 after 1000 steps."""
    start = torch.full((20_480,), 0.5)
    start[::256] = 1.0  # each block's scale

    def run(state_dtype):
        p = torch.nn.Parameter(torch.zeros_like(start))
        optimizer = adamkit.SGD([p], lr=0.0, momentum=0.9999, dampening=0.9999, state_dtype=state_dtype)
        p.grad = start.clone()
        optimizer.step()  # the buffer starts as the first gradient
        for _ in range(1000):
            p.grad = torch.ones_like(p)
            optimizer.step()
        return formats.decoded(optimizer.state[p])["momentum_buffer"]

    moving = start != 1.0
    exact = run("fp32")[moving]
    assert exact.mean().item() == pytest.approx(1 - 0.5 * 0.9999**1000, rel=1e-4)
    nearest = formats.dequantize(*formats.quantize(start))
    for _ in range(1000):
        nearest = formats.dequantize(*formats.quantize(0.9999 * nearest + 0.0001))
    assert torch.equal(nearest, start)  # round-to-nearest loses every increment
    stochastic = run("int8")[moving]
    assert abs(stochastic.mean().item() - exact.mean().item()) < 5e-4


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_stochastic_rounding_keeps_infinities_and_makes_every_nan_canonical(fused, monkeypatch):
    """SGD's momentum buffer starts as the first gradient, rounded to bf16: infinities stay
    infinite (the random bits sit below bf16's last bit), every NaN, signalling ones and
    negative ones included, becomes 0x7FC0, and values bf16 holds exactly stay as they are."""
    if not fused:
        monkeypatch.setattr(FusedKernel, "takes", lambda self, param, grad: False)
    specials = torch.tensor([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF], dtype=torch.int64)
    exact = torch.tensor([1.0, -0.0, 0.0, 2.0**-126, -(2.0**100), 0.375])
    grad = torch.cat([specials.to(torch.int32).view(torch.float32), exact]).repeat(500)
    p = torch.nn.Parameter(torch.zeros_like(grad))
    optimizer = adamkit.SGD([p], lr=0.0, momentum=0.9, state_dtype="bf16", state_seed=5)
    p.grad = grad
    optimizer.step()
    assert optimizer.last_step_kernels == {"fused_cpu" if fused else "eager": 1}
    bits = optimizer.state[p]["momentum_buffer"].view(torch.int16).view(-1, 12).to(torch.int32) & 0xFFFF
    assert (bits[:, 0] == 0x7F80).all() and (bits[:, 1] == 0xFF80).all()
    assert (bits[:, 2:6] == 0x7FC0).all()
    exact_bits = exact.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    assert (bits[:, 6:] == exact_bits).all()


@pytest.mark.parametrize("state_dtype", LOW)
@pytest.mark.parametrize("cls,kwargs", ALGORITHMS, ids=IDS)
def test_fused_and_eager_kernels_store_the_same_bits(cls, kwargs, state_dtype, monkeypatch):
    fused = _run(cls, kwargs, fused_params := _params(), state_dtype=state_dtype, state_seed=3)
    monkeypatch.setattr(FusedKernel, "takes", lambda self, param, grad: False)
    eager = _run(cls, kwargs, eager_params := _params(), state_dtype=state_dtype, state_seed=3)
    assert eager.last_step_kernels == {"eager": len(eager_params)}
    for p, q in zip(fused_params, eager_params):
        assert torch.equal(p, q)
        for name, value in fused.state[p].items():
            assert torch.equal(value, eager.state[q][name]), name


@pytest.mark.parametrize("state_dtype,bound", [("bf16", 4e-3), ("int8", 3e-2)])
@pytest.mark.parametrize("cls,kwargs", ALGORITHMS, ids=IDS)
def test_low_precision_state_trains_close_to_fp32_state(cls, kwargs, state_dtype, bound):
    """After 20 steps at lr 0.01 the parameters stay within ``bound`` (relative to their
    largest magnitude) of where fp32 state takes them. Measured: bf16 3e-5 (Adagrad) to
    1.7e-3 (SGD with momentum 0.9, whose buffer sums 10 gradients), int8 3.4e-4 to 1.5e-2.
    Lion moves every weight by +-lr, so a rounding that flips a sign moves that weight
    2 lr the other way: it is bounded normwise (measured 1.8e-3 bf16, 3.8e-3 int8, with
    0.8% and 3.3% of the weights differing)."""
    reference = _params()
    _run(cls, kwargs, reference, steps=20, state_dtype="fp32")
    params = _params()
    _run(cls, kwargs, params, steps=20, state_dtype=state_dtype)
    for p, q in zip(reference, params):
        if cls is adamkit.Lion:
            assert (p - q).norm() < bound * p.norm()
        else:
            assert (p - q).abs().max() < bound * max(1.0, p.abs().max().item())


@pytest.mark.parametrize("state_dtype", LOW)
def test_state_dict_is_torchs_format_and_compact_is_the_stored_one(state_dtype):
    params = _params()
    optimizer = _run(adamkit.Adam, {}, params, state_dtype=state_dtype)
    full, compact = optimizer.state_dict(), optimizer.state_dict(compact=True)
    assert sorted(full["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    assert full["state"][0]["exp_avg"].dtype == torch.float32
    stored = compact["state"][0]["exp_avg"]
    if state_dtype == "int8":
        assert stored.dtype == torch.int8 and compact["state"][0]["exp_avg.scale"].shape == (25,)
        stored = formats.dequantize(stored, compact["state"][0]["exp_avg.scale"])
    assert stored.dtype != torch.int8 and torch.equal(full["state"][0]["exp_avg"], stored.float())
    # torch.optim reads the full form; both survive torch.save / weights_only loading
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    torch_optimizer = torch.optim.Adam(twins, lr=0.01)
    buffer = io.BytesIO()
    torch.save(full, buffer)
    buffer.seek(0)
    torch_optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(torch_optimizer.state[twins[0]]["exp_avg_sq"], full["state"][0]["exp_avg_sq"])


@pytest.mark.parametrize("state_dtype", LOW)
@pytest.mark.parametrize("form", ["full", "compact"])
def test_resuming_continues_the_run(form, state_dtype):
    """From the compact form the run continues bit for bit; from the full form too: its
    values are what the stored form decodes to, and coding them again gives the same
    bf16 values or int8 codes."""
    params = _params()
    optimizer = _run(adamkit.SGD, dict(momentum=0.9), params, steps=3, state_dtype=state_dtype, state_seed=5)
    saved = copy.deepcopy(optimizer.state_dict(compact=form == "compact"))
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = adamkit.SGD(resumed_params, lr=0.01, momentum=0.9, state_dtype=state_dtype, state_seed=5)
    resumed.load_state_dict(saved)
    step_together((params, optimizer), (resumed_params, resumed), range(3, 6))
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
        for name, value in optimizer.state[p].items():
            assert torch.equal(value, resumed.state[q][name]), name


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("state_dtype", LOW)
def test_resuming_with_another_state_dtype(state_dtype, compact):
    params = _params()
    optimizer = _run(adamkit.Adam, {}, params, steps=3, state_dtype=state_dtype)
    resumed = adamkit.Adam(params, lr=0.01)  # torch's format
    resumed.load_state_dict(optimizer.state_dict(compact=compact))
    assert resumed.state[params[0]]["exp_avg"].dtype == torch.float32
    assert sorted(resumed.state[params[0]]) == ["exp_avg", "exp_avg_sq", "step"]
    back = adamkit.Adam(params, lr=0.01, state_dtype=state_dtype)
    back.load_state_dict(resumed.state_dict())
    for name, value in optimizer.state[params[0]].items():
        assert torch.equal(back.state[params[0]][name], value), name


def test_fp32_state_for_bf16_parameters():
    params = _params(torch.bfloat16)
    optimizer = _run(adamkit.AdamW, {}, params, state_dtype="fp32")
    assert all(optimizer.state[p]["exp_avg"].dtype == torch.float32 for p in params)
    assert optimizer.last_step_kernels == {"fused_cpu": len(params)}


def test_an_unknown_state_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match="Invalid state_dtype: 'fp8'"):
        adamkit.Adam(_params(), state_dtype="fp8")


def test_cpu_int8_codec_agrees_with_the_formats_for_every_code_and_special_values():
    """The fused CPU pass codes and decodes with integer arithmetic, not the formats'
    tables; both must give the same bits."""
    import numpy as np
    from numba import njit

    from adamkit.kernels.scalar_ops import int8_value, store_int8_block

    @njit
    def decode(codes, scale, out):
        for i in range(codes.shape[0]):
            out[i] = int8_value(codes[i], scale)

    codes = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8)
    for scale in (1.5, -1.5, 0.0, -0.0, 3e38, -1e-38):  # a block's scale is finite; its sign bit picks the code
        ours = np.empty(256, np.float32)
        decode(codes.numpy(), np.float32(scale), ours)
        expected = formats.dequantize(codes, torch.tensor([scale]))
        assert torch.equal(torch.from_numpy(ours).view(torch.int32), expected.view(torch.int32)), scale

    g = torch.Generator().manual_seed(0)
    magnitudes = torch.randn(256, generator=g).abs() * torch.logspace(-40, 2, 256, dtype=torch.float64).float()
    blocks = [
        magnitudes,
        magnitudes * torch.where(torch.rand(256, generator=g) < 0.5, -1.0, 1.0),
        torch.zeros(256),
        torch.tensor([-0.0, 1e-45, 3.0, float("inf")] + [1.0] * 252),
        torch.tensor([1.0, float("nan"), -2.0] + [0.5] * 253),
        torch.tensor([float("-inf"), float("nan")] + [0.0] * 254),  # no finite magnitude: scale -0.0
        torch.tensor([float("inf"), float("-inf"), 3e38, -3e38] + [1e-38] * 252),
        # every ratio at and between two steps, in both codes
        torch.linspace(0, 1, 256) ** 8,
        -torch.linspace(0, 1, 256) ** 4,
    ]
    key = formats.noise_key(7, 3, 2, 1)
    for values in blocks:
        for rounding in ({"key": None, "slot": 0}, {"key": key, "slot": 0}, {"key": key, "slot": 1}):
            codes, scales = np.empty(512, np.int8), np.empty(2, np.float32)
            store_int8_block(codes, scales, 1, values.numpy(), 256, rounding["key"], rounding["slot"])
            expected_codes, expected_scales = formats.quantize(values, offset=256, **rounding)
            assert torch.equal(torch.from_numpy(codes[256:]), expected_codes), (values[:4], rounding)
            assert torch.equal(torch.from_numpy(scales[1:]).view(torch.int32), expected_scales.view(torch.int32))


def test_the_threshold_is_a_constructor_argument_and_applies_to_state_made_at_construction():
    """Adagrad makes its state when constructed, so the threshold must be known by then."""
    small = torch.nn.Parameter(torch.ones(10))
    optimizer = adamkit.Adagrad([small], state_dtype="int8", low_precision_min_elements=0)
    assert optimizer.state[small]["sum"].dtype is torch.int8
    with pytest.raises(ValueError, match="low_precision_min_elements: -1"):
        adamkit.Adam([small], low_precision_min_elements=-1)
