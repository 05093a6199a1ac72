"""The whole space of optimizer state, sampled: algorithm and flags x ``state_dtype`` x
parameter dtype x layout x gradient x magnitude x ``skip_nonfinite``, on every kernel.

Each case runs three steps on the fused CPU kernel, on the eager kernel and (for a
share of the cases) on the CUDA kernel's Triton pass in the interpreter. Either every
kernel steps or every kernel raises the same clear error, with nothing changed. Where
they step, the fused kernels give the same bits, and so does the eager kernel wherever
it computes as they do: real parameters with fp32 or fp64 values or any
``state_dtype`` (NaNs may differ in sign and payload). (Elsewhere it computes as torch's for-loop: fp16 and bf16 arithmetic for
half-precision parameters, complex arithmetic for weight decay on complex ones.)

The last step is then checked against the rule run on the decoded state in the compute
dtype (fp32, fp64 for fp64 parameters) without a format: the parameter must be that
result rounded to its dtype, bit for bit, and each state value within its format's
bound of it (adamkit.state.formats): storage rounded to nearest within half a spacing,
bf16 stochastic rounding within one, int8 (rounded stochastically) within one step, at
most 12.5% (3.1% near the block's scale), or flushed below its range, non-finite values kept; a format rounds fp64 values to fp32
first. Where the values are ordinary (magnitude 1, finite), the parameter is also
within a few ulps of the same step in float64.

The default run takes a fixed sample of the cases that covers every value of every
dimension; ``-m slow`` takes a set that covers every pair of values.
"""

from __future__ import annotations

import itertools
import random
import re
import warnings

import pytest
import torch

import adamkit
from adamkit.optimizers.checkpoint_format import per_tensor_numbers
from adamkit.kernels import eager_step
from adamkit.kernels.fused import FusedKernel
from adamkit.kernels.fused_cpu import FusedCpuKernel
from adamkit.kernels.fused_cuda import FusedCudaKernel
from adamkit.optimizers import base
from adamkit.optimizers.hyperparameters import squeeze_scalar
from adamkit.state import formats, memory_order
from snapshots import bits as snapshot_bits, same, snapshot
from test_fused_cpu import CASES, case_id

LAYOUTS = {  # name -> (shape to make, how to lay it out)
    "contiguous": ((70, 90), None),
    "transposed": ((90, 70), lambda t: t.t()),
    "channels_last": ((6, 8, 12, 10), lambda t: t.to(memory_format=torch.channels_last)),
    "non-dense": ((70, 180), lambda t: t[:, ::2]),
    "empty": ((0, 5), None),
    "one element": ((1,), None),
    "4095": ((4095,), None),
    "4096": ((4096,), None),
    "17 blocks + 1": ((17 * 256 + 1,), None),
}
GRADIENTS = ["same layout", "other layout", "sparse", "none in the middle"]
MAGNITUDES = {"1": 1.0, "1e-30": 1e-30, "1e30": 1e30, "subnormal": 2.0**-140, "one inf": 1.0, "one nan": 1.0}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64,
          "complex64": torch.complex64}
DIMENSIONS = {
    "case": list(range(len(CASES))),
    "state_dtype": [None, "fp32", "bf16", "int8"],
    "dtype": list(DTYPES),
    "layout": list(LAYOUTS),
    "gradient": GRADIENTS,
    "magnitude": list(MAGNITUDES),
    "skip_nonfinite": [False, True],
}
# Errors a case may raise, every kernel alike: torch's own, for gradients an algorithm does not take.
EXPECTED_ERRORS = re.compile(
    r"does not support sparse gradients|weight_decay option is not compatible with sparse gradients"
    r"|weight_decay=0.1 does not work with sparse gradients"
)
STEPS = 3


def _covering(pairs: bool, count: int, seed: int) -> list[dict]:
    """Cases covering every value of every dimension (or every pair of values), greedily,
    then random ones up to ``count``."""
    rng = random.Random(seed)
    names = list(DIMENSIONS)

    def draw():
        return {name: rng.choice(values) for name, values in DIMENSIONS.items()}

    def value(case, name):  # alone, a case counts as its algorithm: every flag is met in pairs
        return CASES[case[name]][0].__name__ if name == "case" and not pairs else repr(case[name])

    def items(case):
        singles = {(name, value(case, name)) for name in names}
        if not pairs:
            return singles
        return {(a, repr(case[a]), b, repr(case[b])) for a, b in itertools.combinations(names, 2)}

    wanted = set()
    if pairs:
        for a, b in itertools.combinations(names, 2):
            wanted |= {(a, repr(x), b, repr(y)) for x in DIMENSIONS[a] for y in DIMENSIONS[b]}
    else:
        wanted = {(name, value({name: v}, name)) for name, values in DIMENSIONS.items() for v in values}
    chosen = []
    while wanted:
        best = max((draw() for _ in range(40)), key=lambda case: len(items(case) & wanted))
        chosen.append(best)
        wanted -= items(best)
    while len(chosen) < count:
        chosen.append(draw())
    return chosen


def _id(case: dict) -> str:
    return "|".join([case_id(CASES[case["case"]])] + [str(case[name]) for name in list(DIMENSIONS)[1:]])


DEFAULT = _covering(pairs=False, count=24, seed=20)
SLOW = _covering(pairs=True, count=0, seed=21)


def _param(case) -> torch.nn.Parameter:
    shape, lay_out = LAYOUTS[case["layout"]]
    g = torch.Generator().manual_seed(1)
    dtype = DTYPES[case["dtype"]]
    values = torch.randn(shape, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        values = torch.complex(values, torch.randn(shape, generator=g, dtype=torch.float64))
    values = values.to(dtype)
    return torch.nn.Parameter(lay_out(values) if lay_out else values)


def _grad(case, param, step: int) -> torch.Tensor | None:
    if case["gradient"] == "none in the middle" and step == 1:
        return None
    g = torch.Generator().manual_seed(10 + step)
    real = torch.randn(param.shape, generator=g, dtype=torch.float64)
    values = torch.complex(real, torch.randn(param.shape, generator=g, dtype=torch.float64)) if param.is_complex() else real
    values = values * MAGNITUDES[case["magnitude"]]
    if step == 1 and values.numel() and case["magnitude"] in ("one inf", "one nan"):
        values.view(-1)[values.numel() // 2] = float("inf") if case["magnitude"] == "one inf" else float("nan")
    values = values.to(param.dtype)
    if case["gradient"] == "sparse":
        return (values * (torch.rand(param.shape, generator=g) < 0.2)).to_sparse()
    if case["gradient"] == "other layout":
        return values.contiguous() if not param.is_contiguous() else (values.t().contiguous().t() if values.dim() == 2 else values)
    return torch.empty_like(param).copy_(values)  # laid out like the parameter where it is dense


def _optimizer(case, params):
    cls, flags = CASES[case["case"]]
    return cls(params, lr=0.01, state_dtype=case["state_dtype"], state_seed=7,
               skip_nonfinite=case["skip_nonfinite"], **flags)


def _decoded_state(optimizer, param) -> dict:
    return {name: value.clone() for name, value in formats.decoded(optimizer.state.get(param, {})).items()}


def _run(case, kernel: str, monkeypatch):
    """Three steps on one kernel: (error, param, optimizer, inputs of the last step)."""
    with monkeypatch.context() as patch:
        if kernel == "eager":
            patch.setattr(FusedKernel, "takes", lambda self, param, grad: False)
        elif kernel == "triton":
            patch.setattr(FusedCudaKernel, "device_type", "cpu")
            patch.setattr(base, "_fused_kernels", lambda: [FusedCudaKernel()])
        else:
            patch.setattr(base, "_fused_kernels", lambda: [FusedCpuKernel()])
        param = _param(case)
        optimizer = _optimizer(case, [param])
        last_inputs = None
        for step in range(STEPS):
            param.grad = _grad(case, param, step)
            if step == STEPS - 1:
                last_inputs = (param.detach().clone(), _decoded_state(optimizer, param), param.grad)
            before = snapshot(optimizer, [param])
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    optimizer.step()
            except Exception as error:  # noqa: BLE001 - every error is checked below
                assert same(snapshot(optimizer, [param]), before), f"{kernel}: a step that raised changed something"
                return (step, type(error), str(error)), param, optimizer, None
            if optimizer.skipped_steps > before["skipped"]:  # skip_nonfinite: nothing but the count may change
                assert same(snapshot(optimizer, [param]), dict(before, skipped=optimizer.skipped_steps)), f"{kernel}: skipped"
                last_inputs = None
        return None, param, optimizer, last_inputs


def _reference_step(case, optimizer, inputs, dtype: torch.dtype):
    """The rule on the decoded state in ``dtype`` without a format, complex values as
    their real views (as the fused kernels take them): (param, state)."""
    param_before, state, grad = inputs

    def widened(t):
        return _real(t).to(dtype, copy=True) if t.dtype.is_floating_point or t.is_complex() else t.clone()

    rule = type(optimizer).update_rule
    if grad is not None and grad.is_sparse and rule.sparse_update is None and optimizer.formats_state() and state:
        grad = grad.to_dense()  # formatted state is dense: so is a step that reads it
    param = torch.nn.Parameter(widened(param_before))
    param.grad = widened(grad) if grad is not None else None
    numbers = per_tensor_numbers(optimizer)
    states = {param: {name: value.clone() if name in numbers else widened(value) for name, value in state.items()}}
    if not states[param]:
        states = {}
    group = optimizer.param_groups[0]
    hp = dict(group, lr=squeeze_scalar(group["lr"]))
    if param.grad is not None:
        with torch.no_grad():
            eager_step(rule, [param], states, hp, decoupled_weight_decay=optimizer.decoupled_weight_decay(group),
                       step_as_tensor=False, exact=True)

    def restored(t):
        return torch.view_as_complex(t) if param_before.is_complex() and t.dim() else t

    return restored(param.detach()), {name: value if name in numbers else restored(value) for name, value in states.get(param, {}).items()}


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _block_values(flat: torch.Tensor, reduce) -> torch.Tensor:
    """``reduce`` over each int8 block of 256 of ``flat``, repeated for each element."""
    pad = -flat.numel() % formats.BLOCK
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, formats.BLOCK)
    return reduce(blocks).repeat_interleave(formats.BLOCK)[: flat.numel()]


def _assert_within_format(name, stored: torch.Tensor, decoded: torch.Tensor, expected: torch.Tensor, stochastic: bool):
    """``decoded`` (the stored value) is within the format's bound of ``expected``."""
    compute = expected.dtype.to_real() if expected.dtype.is_complex else expected.dtype
    if expected.is_sparse:  # SGD's momentum buffer starts as a sparse gradient's clone, as in torch
        expected, decoded = expected.to_dense(), decoded.to_dense()
    if stored.dtype in (torch.int8, torch.bfloat16) and compute is torch.float64:
        expected = expected.float()  # a format takes fp64 values rounded to fp32
    expected, decoded = _real(expected).double(), _real(decoded).double()
    if stored.dtype is torch.int8:
        flat, got = memory_order(expected), memory_order(decoded)  # both laid out like the codes
        kept = torch.isfinite(flat) & (flat.abs() < formats.OVERFLOW)
        largest = _block_values(torch.where(kept, flat.abs(), 0.0), lambda b: b.amax(1))
        signed = _block_values((flat < 0).double(), lambda b: b.amax(1)) > 0
        range_ = torch.where(signed, 2.0**-10.5, 2.0**-24.4)
        # Steps are at most an eighth of their octave apart: rounded stochastically, a value
        # can land on either neighbour. Decoded values are fp32: below 2^-126 their
        # spacing, 2^-149, adds to the code's error.
        step = flat.abs() / (8 if stochastic else 16)
        ok = torch.where(kept, (got - flat).abs() <= step + range_ * largest + 2.0**-149, ~torch.isfinite(got))
        assert ok.all(), (name, "int8", flat[~ok][:4].tolist(), got[~ok][:4].tolist())
        return
    storage = stored.dtype.to_real() if stored.dtype.is_complex else stored.dtype
    info = torch.finfo(storage)
    if storage == compute:
        relative, small = 0.0, 0.0
    else:
        relative = info.eps / (1 if stochastic else 2)
        small = info.smallest_normal * info.eps  # the storage's smallest subnormal
    finite = torch.isfinite(expected)
    ok = (decoded - expected).abs() <= relative * expected.abs() + small
    ok |= (expected.abs() > info.max) & torch.isinf(decoded)
    ok = torch.where(finite, ok, torch.isnan(expected) == torch.isnan(decoded))
    assert ok.all(), (name, str(stored.dtype), expected[~ok][:4].tolist(), decoded[~ok][:4].tolist())


def _check_against_the_rule(case, param, optimizer, inputs):
    dtype = torch.float64 if param.dtype in (torch.float64,) else torch.float32
    expected_param, expected_state = _reference_step(case, optimizer, inputs, dtype)
    assert same(snapshot_bits(expected_param.to(param.dtype), False), snapshot_bits(param, False)), "parameter"
    stored = optimizer.state.get(param, {})
    decoded = formats.decoded(stored)
    for name, value in expected_state.items():
        if name in per_tensor_numbers(optimizer):
            assert torch.equal(value, stored[name])
            continue
        stochastic = case["state_dtype"] in ("bf16", "int8") and stored[name].dtype in (torch.bfloat16, torch.int8)
        _assert_within_format(name, stored[name], decoded[name], value, stochastic)
    if case["magnitude"] == "1" and param.dtype in (torch.float32, torch.float64) and param.numel():
        float64_param, _ = _reference_step(case, optimizer, inputs, torch.float64)
        moved = (float64_param - inputs[0].double()).abs()
        info = torch.finfo(param.dtype)
        bound = 2 * info.eps * float64_param.abs() + 64 * torch.finfo(dtype).eps * moved + info.tiny
        assert ((param.detach().double() - float64_param).abs() <= bound).all(), "float64 step"


def _computes_like_the_fused_kernels(case, optimizer) -> bool:
    """Whether the eager kernel computes as the fused ones for this case (see above)."""
    dtype = DTYPES[case["dtype"]]
    return not dtype.is_complex and (dtype in (torch.float32, torch.float64) or optimizer.formats_state())


def _check(case, monkeypatch, kernels):
    runs = {kernel: _run(case, kernel, monkeypatch) for kernel in kernels}
    outcomes = {kernel: run[0] for kernel, run in runs.items()}
    first = runs["fused"]
    assert len(set(map(repr, outcomes.values()))) == 1, outcomes
    if first[0] is not None:
        assert EXPECTED_ERRORS.search(first[0][2]), first[0]
        return
    like_fused = _computes_like_the_fused_kernels(case, first[2])
    expected = snapshot(first[2], [first[1]], nan_payloads=False)
    for kernel, (_, param, optimizer, _) in runs.items():
        if like_fused or "eager" not in optimizer.last_step_kernels:
            assert same(snapshot(optimizer, [param], nan_payloads=False), expected), f"{kernel} differs from the fused kernel"
    # Sparse gradients always take the eager kernel, which computes as torch where the fused kernels would not.
    if first[3] is not None and (like_fused or "eager" not in first[2].last_step_kernels):
        _check_against_the_rule(case, first[1], first[2], first[3])


def _kernels(index: int) -> list[str]:
    """The Triton interpreter takes about a second a case: every fourth case."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return ["fused", "eager"]
    return ["fused", "eager"] + (["triton"] if index % 4 == 0 and not torch.cuda.is_available() else [])


@pytest.mark.parametrize("index", range(len(DEFAULT)), ids=[_id(case) for case in DEFAULT])
def test_sampled_case(index, monkeypatch):
    _check(DEFAULT[index], monkeypatch, _kernels(index))


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(SLOW)), ids=[_id(case) for case in SLOW])
def test_every_pair_of_values(index, monkeypatch):
    _check(SLOW[index], monkeypatch, _kernels(index))
