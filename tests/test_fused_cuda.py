"""The fused CUDA kernel (Triton), checked without a GPU and, where one is, on it.

Without a GPU: the pass compiles for an H100 (sm_90) with correctly rounded operations
only, and Triton's interpreter runs it on CPU tensors (conftest.py turns it on), where
its fma, div_rn and sqrt_rn round once as on the GPU: every rule and flag must give the
CPU kernel's bits. With a GPU the same comparison runs on it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import adamkit
from adamkit.kernels.fused import PreparedGroup
from adamkit.kernels.fused_cpu import FusedCpuKernel
from adamkit.kernels.fused_cuda import FusedCudaKernel
from adamkit.optimizers import base
from parity import assert_bitwise_equal, run_side_by_side
from test_fused_cpu import CASES, case_id
from test_state_formats import ALGORITHMS as STATE_ALGORITHMS, IDS as STATE_IDS

triton = pytest.importorskip("triton")
GPU = torch.cuda.is_available()
SOURCE = Path(adamkit.__file__).parents[1]


@pytest.fixture
def cuda_kernel_on_cpu(monkeypatch):
    """Optimizers made now step CPU tensors with the CUDA kernel's Triton pass (interpreted)."""
    if GPU:
        pytest.skip("a GPU runs the pass itself (test_cuda_kernel_equals_cpu_kernel_on_the_gpu)")
    monkeypatch.setattr(FusedCudaKernel, "device_type", "cpu")
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCudaKernel()])


def _small_params(dtype):
    g = torch.Generator().manual_seed(3)
    shapes = [(5, 3), (7,), (), (2 * FusedCudaKernel.item_elements + 9,)]
    params = [torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype)) for shape in shapes]
    params.append(torch.nn.Parameter(torch.randn(6, 4, generator=g, dtype=dtype).t()))
    return params


# The interpreter takes about 1.5 s a case: every flag of every algorithm in both dtypes
# runs with -m slow; the default run takes each algorithm with the most flags on at once,
# in fp32 and fp64 by turns (Adam in both).
_CLASSES = list(dict.fromkeys(c[0] for c in CASES))
SPOT_CASES = {
    case_id(max((c for c in CASES if c[0] is cls), key=lambda c: sum(map(bool, c[1].values())))):
        {torch.float32, torch.float64} if cls is adamkit.Adam else {(torch.float32, torch.float64)[index % 2]}
    for index, cls in enumerate(_CLASSES)
}
MATRIX = [
    pytest.param(c, dtype, id=f"{case_id(c)}-{str(dtype).removeprefix('torch.')}",
                 marks=() if dtype in SPOT_CASES.get(case_id(c), ()) else pytest.mark.slow)
    for c in CASES for dtype in (torch.float32, torch.float64)
]


@pytest.mark.parametrize("case,dtype", MATRIX)
def test_cuda_pass_equals_cpu_pass_bitwise(case, dtype, cuda_kernel_on_cpu, monkeypatch):
    cls, flags = case
    torch.set_default_dtype(dtype)
    params = _small_params(dtype)
    cuda = run_side_by_side(cls, cls, params, dict(lr=0.01, **flags), steps=5)
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCpuKernel()])
    cpu = run_side_by_side(cls, cls, params, dict(lr=0.01, **flags), steps=5)
    assert cuda[3].last_step_kernels == {"fused_cuda": len(params)}
    assert cpu[3].last_step_kernels == {"fused_cpu": len(params)}
    assert_bitwise_equal(cpu[1], cuda[1], cpu[3], cuda[3])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_fp32_as_on_the_cpu(dtype, cuda_kernel_on_cpu, monkeypatch):
    params = _small_params(dtype)
    kwargs = dict(lr=0.01, weight_decay=0.1, amsgrad=True)
    cuda = run_side_by_side(adamkit.AdamW, adamkit.AdamW, params, kwargs, steps=5)
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCpuKernel()])
    cpu = run_side_by_side(adamkit.AdamW, adamkit.AdamW, params, kwargs, steps=5)
    assert cuda[3].last_step_kernels == {"fused_cuda": len(params)}
    assert_bitwise_equal(cpu[1], cuda[1], cpu[3], cuda[3])


@pytest.mark.parametrize("cls,kwargs", [(adamkit.Adam, dict(weight_decay=0.1, amsgrad=True)), (adamkit.SGD, dict(momentum=0.9))])
def test_complex_parameters_step_as_their_real_view_as_on_the_cpu(cls, kwargs, cuda_kernel_on_cpu, monkeypatch):
    """Complex state is read as its real view (it once failed to find a Triton type for complex64)."""
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(40, dtype=torch.complex64, generator=g)) for _ in range(2)]
    cuda = run_side_by_side(cls, cls, params, dict(lr=0.01, **kwargs), steps=3)
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCpuKernel()])
    cpu = run_side_by_side(cls, cls, params, dict(lr=0.01, **kwargs), steps=3)
    assert cuda[3].last_step_kernels == {"fused_cuda": len(params)}
    assert_bitwise_equal(cpu[1], cuda[1], cpu[3], cuda[3])


def test_cuda_parameters_without_triton_step_eagerly_with_a_warning(monkeypatch):
    """Without Triton the fast path is off, and the user is told so, once."""
    from adamkit.kernels import fused_cuda

    monkeypatch.setattr(FusedCudaKernel, "device_type", "cpu")
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCudaKernel()])
    monkeypatch.setattr(fused_cuda, "triton_available", lambda: False)
    fused_cuda._warn_without_triton.cache_clear()
    w = torch.nn.Parameter(torch.ones(10))
    optimizer = adamkit.Adam([w], lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            w.grad = torch.ones(10)
            optimizer.step()
    assert optimizer.last_step_kernels == {"eager": 1}
    messages = [str(w.message) for w in caught if "Triton" in str(w.message)]
    assert len(messages) == 1 and "pip install triton" in messages[0]
    assert caught[0].filename == __file__


def test_a_pass_that_cannot_compile_falls_back_to_the_eager_kernel_with_one_warning(cuda_kernel_on_cpu, monkeypatch):
    """Triton fails for this GPU (here: every compile raises, as an unsupported
    architecture would): the step, and every later one, runs on the eager kernel with
    the same bits as a run that never had the fused kernel, and one warning names the error."""
    from adamkit.kernels import compile_cache, fused_cuda

    real = compile_cache.triton_loops_for
    attempts = []

    class Failing:
        def __init__(self, module):
            self.module = module

        def __getattr__(self, name):
            return getattr(self.module, name)

        @property
        def fused_pass(self):
            class Pass:
                def warmup(self, *args, **kwargs):
                    attempts.append(kwargs)
                    raise RuntimeError("PassManager::run failed (sm_37 is not supported)")

                def __getitem__(self, grid):
                    raise AssertionError("launched a pass that failed to compile")

            return Pass()

    monkeypatch.setattr(fused_cuda, "_unusable", {})
    monkeypatch.setattr(compile_cache, "triton_loops_for", lambda rule: Failing(real(rule)))
    params = _small_params(torch.float32)
    kwargs = dict(lr=0.01, weight_decay=0.1, state_dtype="bf16", low_precision_min_elements=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = run_side_by_side(adamkit.AdamW, adamkit.AdamW, params, kwargs, steps=3)
    messages = [w for w in caught if "could not compile" in str(w.message)]
    assert len(messages) == 1 and "sm_37 is not supported" in str(messages[0].message), [str(w.message) for w in caught]
    assert len(attempts) == 1 and attempts[0]["num_warps"] == fused_cuda.NUM_WARPS
    assert fallback[3].last_step_kernels == {"eager": len(params)}
    monkeypatch.setattr(base, "_fused_kernels", lambda: [])
    eager = run_side_by_side(adamkit.AdamW, adamkit.AdamW, params, kwargs, steps=3)
    assert_bitwise_equal(eager[1], fallback[1], eager[3], fallback[3])


def test_a_failed_compile_is_reported_at_the_users_step(cuda_kernel_on_cpu, monkeypatch):
    from adamkit.kernels import compile_cache, fused_cuda

    monkeypatch.setattr(fused_cuda, "_unusable", {})
    broken = type("Broken", (), {"warmup": lambda self, *a, **k: 1 / 0})()
    monkeypatch.setattr(compile_cache, "triton_loops_for", lambda rule: type("Loops", (), {"fused_pass": broken})())
    w = torch.nn.Parameter(torch.ones(10))
    optimizer = adamkit.Adam([w], lr=0.1)
    w.grad = torch.ones(10)
    with pytest.warns(RuntimeWarning, match="ZeroDivisionError: division by zero") as caught:
        optimizer.step()
    assert caught[0].filename == __file__
    assert optimizer.last_step_kernels == {"eager": 1}
    torch.testing.assert_close(w.detach(), torch.full((10,), 0.9))


def test_differing_step_counts_upload_their_block_tables_once(cuda_kernel_on_cpu, monkeypatch):
    """One parameter's state reset: its step count differs from the others' from then
    on, so each step runs two passes, with block tables uploaded once, not every step;
    the bits are the CPU kernel's."""
    from adamkit.kernels import fused_cuda

    uploads = []
    real_upload = fused_cuda._upload
    monkeypatch.setattr(fused_cuda, "_upload", lambda values, *a: (uploads.append(len(values)), real_upload(values, *a))[1])

    def run():
        params = _small_params(torch.float32)
        optimizer = adamkit.Adam(params, lr=0.01)
        g = torch.Generator().manual_seed(5)
        for p in params:
            p.grad = torch.empty_like(p)
        per_step = []
        for step in range(6):
            for p in params:
                p.grad.copy_(torch.randn(p.shape, generator=g))
            if step == 2:
                optimizer.reset_state(params[1:3])
            uploads.clear()
            optimizer.step()
            per_step.append(len(uploads))
        assert {int(optimizer.state[p]["step"]) for p in params} == {4, 6}
        return params, optimizer, per_step

    cuda_params, cuda_optimizer, per_step = run()
    assert per_step[2] > 2 and per_step[3:] == [2, 2, 2]  # two passes' coefficients, nothing else
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCpuKernel()])
    cpu_params, cpu_optimizer, _ = run()
    assert_bitwise_equal(cpu_params, cuda_params, cpu_optimizer, cuda_optimizer)


def test_zero_grad_warning_comes_at_most_one_step_late(cuda_kernel_on_cpu):
    """The flags come back without waiting for the device, so the warning may come a
    step late; it names the parameter that moved."""
    moving, still = torch.nn.Parameter(torch.ones(10)), torch.nn.Parameter(torch.ones(3))
    optimizer = adamkit.AdamW([moving, still], lr=0.1, weight_decay=0.5)
    messages = []
    for _ in range(2):
        moving.grad, still.grad = torch.zeros(10), torch.ones(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            optimizer.step()
        messages += [str(w.message) for w in caught]
    assert optimizer.last_step_kernels == {"fused_cuda": 2}
    assert len(messages) == 1 and "shape (10,)" in messages[0]


def test_gradients_at_new_addresses_are_followed(cuda_kernel_on_cpu, monkeypatch):
    """The device table of gradient addresses is uploaded again when gradients move."""
    def run():
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(100, generator=g)) for _ in range(3)]
        optimizer = adamkit.Adam(params, lr=0.01)
        kept = [torch.empty(100) for _ in params]  # fresh tensors every step, never reused
        for step in range(4):
            for p in params:
                grad = torch.randn(100, generator=g)
                kept.append(grad)
                p.grad = grad
            optimizer.step()
        return params, optimizer

    cuda = run()
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCpuKernel()])
    cpu = run()
    assert_bitwise_equal(cpu[0], cuda[0], cpu[1], cuda[1])


COMPILE_FOR_H100 = """
import json, re, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from adamkit.kernels.compile_cache import triton_loops_for
from adamkit import rules
instructions = {}
for rule in (value for value in vars(rules).values() if isinstance(value, rules.Rule)):
    loops = triton_loops_for(rule)
    # (parameter storage, state storage, compute): torch's formats, and fp32 parameters with bf16 and int8 state
    for storage, state, compute in (("fp32", "fp32", "fp32"), ("bf16", "bf16", "fp32"), ("fp16", "fp16", "fp32"),
                                    ("fp64", "fp64", "fp64"), ("fp32", "bf16", "fp32"), ("fp32", "int8", "fp32")):
        names = dict(fp32=tl.float32, bf16=tl.bfloat16, fp16=tl.float16, fp64=tl.float64, int8=tl.int8)
        signature = dict(tables="*i64", elements="*i64", block_tensor="*i32", block_start="*i64",
                         coefficients="*" + compute, gradient_transform="*" + compute, flags="*i32", count="i32",
                         tensor_ids="*i64", noise_seed="i32", noise_round="i32", codebook="*fp32")
        stochastic = state in ("bf16", "int8") and storage != state
        constants = dict(STORAGE=names[storage], COMPUTE=names[compute], SLOT0=names[state], SLOT1=names[state],
                         SLOT2=names[state], SLOT3=names[state], WATCH=True, BLOCK=2048,
                         PIECE=1024 if state == "int8" else 2048, STOCHASTIC=stochastic)
        signature.update(dict.fromkeys(constants, "constexpr"))
        source = triton.compiler.ASTSource(loops.fused_pass, signature=signature, constexprs=constants)
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=False)).asm["ptx"]
        found = re.findall(r"\\b((?:add|sub|mul|div|sqrt|fma|rcp|rsqrt|ex2|lg2)(?:\\.[a-z0-9]+)+)", ptx)
        instructions[rule.name + "-" + storage + "-" + state + "-state"] = sorted(
            {i for i in found if re.search(r"\\.f(32|64)$", i)})
print(json.dumps(instructions))
"""


# Steps taken as a user's first run takes them, each launch compiled for sm_90 with the
# arguments Triton's launcher would see: its own binder specializes them (an integer
# equal to 1 becomes a constant, a multiple of 16 gets that fact, pointers their
# alignment), which the interpreter never does. Nothing is launched.
LAUNCHES_FOR_H100 = """
import json, re, warnings, torch, triton, adamkit
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature
from adamkit.kernels import fused_cuda
from adamkit.kernels.fused_cuda import FusedCudaKernel
from adamkit.optimizers import base

target = GPUTarget("cuda", 90, 32)
backend = make_backend(target)
compiled = set()

instructions = set()

def compile_as_launched(self, *args, grid, warmup, **kwargs):
    binder = create_function_from_signature(self.signature, self.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
    kernel = triton.compile(ASTSource(self, signature, constexprs, attrs), target=target, options=options.__dict__)
    compiled.add(repr((self.fn.__module__, specialization)))
    found = re.findall(r"\\b((?:add|sub|mul|div|sqrt|fma|rcp|rsqrt|ex2|lg2)(?:\\.[a-z0-9]+)+)", kernel.asm["ptx"])
    instructions.update(i for i in found if re.search(r"\\.f(32|64)$", i))

JITFunction.run = compile_as_launched
fused_cuda.triton_available = lambda: True
FusedCudaKernel.device_type = "cpu"
base._fused_kernels = lambda: [FusedCudaKernel()]
warnings.simplefilter("ignore")
runs = {}
for name, make in [("adamw", lambda p: adamkit.AdamW(p, state_seed=1)),
                   ("adamw-bf16", lambda p: adamkit.AdamW(p, state_dtype="bf16", state_seed=1, low_precision_min_elements=0)),
                   ("sgd-int8", lambda p: adamkit.SGD(p, lr=0.1, momentum=0.9, state_dtype="int8", low_precision_min_elements=0))]:
    before = len(compiled)
    one = [torch.nn.Parameter(torch.zeros(4096))]
    sixteen = [torch.nn.Parameter(torch.zeros(256)) for _ in range(16)]
    for params in (one, sixteen):
        optimizer = make(params)
        for step in range(17):  # steps 1, 2 and 16 among them
            for p in params:
                p.grad = torch.ones_like(p)
            optimizer.step()
        assert optimizer.last_step_kernels == {"fused_cuda": len(params)}, optimizer.last_step_kernels
    runs[name] = len(compiled) - before
print(json.dumps([runs, sorted(instructions)]))
"""


def test_first_steps_compile_once_as_triton_launches_them():
    """Steps 1 to 17 with one parameter and with sixteen, seed 1: every launch compiles
    for sm_90 as the launcher specializes it (at step 1 the step counter once became
    the constant 1 and failed to compile), and one compile per configuration."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment["PYTHONPATH"] = os.pathsep.join([str(SOURCE), environment.get("PYTHONPATH", "")])
    completed = subprocess.run([sys.executable, "-c", LAUNCHES_FOR_H100], capture_output=True, text=True,
                               env=environment, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    import json

    compiles, instructions = json.loads(completed.stdout.splitlines()[-1])
    assert compiles == {"adamw": 1, "adamw-bf16": 1, "sgd-int8": 1}
    _assert_correctly_rounded(instructions)


def _assert_correctly_rounded(found: list[str], width: str = "f32", required=("div", "sqrt", "fma")) -> None:
    """Floating point in PTX is IEEE: round-to-nearest adds, multiplies, divisions, square
    roots and fused multiply-adds, no approximations, no flushing of subnormals (ptxas
    may not contract instructions that carry a rounding mode)."""
    assert found and all(re.fullmatch(rf"(add|sub|mul|div|sqrt|fma)\.rn\.{width}", i) for i in found), found
    assert {f"{operation}.rn.{width}" for operation in required} <= set(found), found


# The pass as the kernel launches it (its BLOCK and NUM_WARPS, the rule's own slots), through
# Triton's bundled ptxas -v: registers per thread and spilled bytes, per configuration.
REGISTERS_AND_SPILLS = """
import json, os, re, subprocess, tempfile, torch, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from adamkit import rules
from adamkit.kernels.compile_cache import triton_loops_for
from adamkit.kernels.fused_cuda import BLOCK, NUM_WARPS, piece_for
from adamkit.rules import SLOT_COUNT

names = dict(fp32=tl.float32, bf16=tl.bfloat16, fp64=tl.float64, int8=tl.int8)
found = {}
for arch in (90, 80):
    for rule, storage, state in ((rules.adam, "fp32", "fp32"), (rules.adam, "fp64", "fp64"), (rules.adam, "fp32", "int8"),
                                 (rules.adan, "bf16", "bf16"), (rules.adan, "fp32", "int8")):
        compute = "fp64" if storage == "fp64" else "fp32"
        signature = dict(tables="*i64", elements="*i64", block_tensor="*i32", block_start="*i64",
                         coefficients="*" + compute, gradient_transform="*" + compute, flags="*i32", count="i32",
                         tensor_ids="*i64", noise_seed="i32", noise_round="i32", codebook="*fp32")
        slots = {f"SLOT{i}": names[state] if i < len(rule.slots) else None for i in range(SLOT_COUNT)}
        piece = piece_for([torch.int8] if state == "int8" else [])
        constants = dict(STORAGE=names[storage], COMPUTE=names[compute], **slots, WATCH=True, BLOCK=BLOCK,
                         PIECE=piece, STOCHASTIC=state in ("bf16", "int8"))
        signature.update(dict.fromkeys(constants, "constexpr"))
        source = triton.compiler.ASTSource(triton_loops_for(rule).fused_pass, signature=signature, constexprs=constants)
        kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                options=dict(enable_fp_fusion=False, num_warps=NUM_WARPS))
        with tempfile.TemporaryDirectory() as folder:
            ptx = os.path.join(folder, "pass.ptx")
            with open(ptx, "w") as file:
                file.write(kernel.asm["ptx"])
            report = subprocess.run([get_ptxas(arch).path, "-v", "-arch=sm_90a" if arch == 90 else "-arch=sm_80", ptx,
                                     "-o", os.path.join(folder, "pass.cubin")], capture_output=True, text=True, check=True)
        text = report.stdout + report.stderr
        spilled = [int(n) for n in re.findall(r"(\\d+) bytes spill (?:stores|loads)", text)]
        registers = int(re.search(r"Used (\\d+) registers", text).group(1))
        found[f"sm_{arch}-{rule.name}-{storage}-{state}-state"] = [registers, spilled]
print(json.dumps(found))
"""


def test_common_configurations_compile_without_register_spills():
    """Adam (all three slots) and Adan (four) with fp32, fp64, bf16 and int8 state, for
    sm_90 and sm_80: int8 state takes the most registers (about 240 of 255 on sm_90), so
    a change that adds a few shows up here as spills before it slows a GPU down."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment["PYTHONPATH"] = os.pathsep.join([str(SOURCE), environment.get("PYTHONPATH", "")])
    completed = subprocess.run([sys.executable, "-c", REGISTERS_AND_SPILLS], capture_output=True, text=True,
                               env=environment, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    import json

    found = json.loads(completed.stdout.splitlines()[-1])
    assert len(found) == 10
    for configuration, (registers, spilled) in found.items():
        assert 0 < registers <= 255 and spilled and not any(spilled), (configuration, registers, spilled)


@pytest.mark.slow
def test_pass_compiles_for_an_h100_with_correctly_rounded_operations_only():
    """Every rule and storage, compiled for sm_90 by the real compiler (not the
    interpreter): all of it taken as written, all of its floating point correctly rounded
    (the default run checks three configurations as launched)."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment["PYTHONPATH"] = os.pathsep.join([str(SOURCE), environment.get("PYTHONPATH", "")])
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(COMPILE_FOR_H100)], capture_output=True,
                               text=True, env=environment, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    import json

    instructions = json.loads(completed.stdout.splitlines()[-1])
    from adamkit import rules

    assert len(instructions) == sum(isinstance(value, rules.Rule) for value in vars(rules).values()) * 6
    # SGD computes no division, square root or lerp; Adamax no square root; Rprop, ASGD and Lion neither.
    required = {"sgd": (), "adamax": ("div", "fma"), "rprop": ("fma",), "asgd": ("fma",), "lion": ("fma",)}
    for name, found in instructions.items():
        _assert_correctly_rounded(found, "f64" if "fp64" in name else "f32", required.get(name.split("-")[0], ("div", "sqrt", "fma")))


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_cuda_kernel_equals_cpu_kernel_on_the_gpu(case, dtype):
    """The same correctly rounded operations in the same order: the GPU's bits are the CPU's."""
    cls, flags = case
    torch.set_default_dtype(dtype)
    cpu_params = _small_params(dtype)
    gpu_params = [torch.nn.Parameter(p.detach().cuda()) for p in cpu_params]
    optimizers = cls(cpu_params, lr=0.01, **flags), cls(gpu_params, lr=0.01, **flags)
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        for p, q in zip(cpu_params, gpu_params):
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
            q.grad = p.grad.cuda()
        for optimizer in optimizers:
            optimizer.step()
    assert optimizers[1].last_step_kernels == {"fused_cuda": len(gpu_params)}
    for p, q in zip(cpu_params, gpu_params):
        assert torch.equal(p, q.cpu())
        for name, value in optimizers[0].state[p].items():
            assert torch.equal(value, optimizers[1].state[q][name].cpu()), name


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("state_dtype", ["bf16", "int8"])
@pytest.mark.parametrize("cls,kwargs", STATE_ALGORITHMS, ids=STATE_IDS)
def test_low_precision_state_on_the_gpu_equals_the_cpu(cls, kwargs, state_dtype):
    """Compiled by Triton and run on the GPU, every algorithm stores the CPU pass's bits:
    bf16 rounded stochastically under the same seed, int8 in the same codes and scales
    (one tensor under the 4096-element threshold keeps fp32 state on both)."""
    def run(device):
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, generator=g).to(device)) for shape in [(5000,), (70, 80), (3, 4)]]
        optimizer = cls(params, lr=0.01, state_dtype=state_dtype, state_seed=9, **kwargs)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(device)
            optimizer.step()
        return params, optimizer

    (gpu_params, gpu), (cpu_params, cpu) = run("cuda"), run("cpu")
    assert gpu.last_step_kernels == {"fused_cuda": 3} and cpu.last_step_kernels == {"fused_cpu": 3}
    for p, q in zip(cpu_params, gpu_params):
        assert torch.equal(p, q.cpu())
        for name, value in cpu.state[p].items():
            assert torch.equal(value, gpu.state[q][name].cpu()), name


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_capturable_step_replays_in_a_cuda_graph():
    """capturable=True: the step can be captured once and replayed, giving what stepping
    eagerly gives."""
    def make():
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(1000, generator=g).cuda()) for _ in range(3)]
        for p in params:
            p.grad = torch.randn(1000, generator=g).cuda()
        return params, adamkit.Adam(params, lr=torch.tensor(0.01, device="cuda"), capturable=True)

    eager_params, eager = make()
    graph_params, captured = make()
    captured.step()  # state exists before capture, as torch requires
    eager.step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured.step()
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for p, q in zip(eager_params, graph_params):
        assert torch.equal(p, q)
    assert captured.state[graph_params[0]]["step"].item() == 4  # one eager step, three replays


def test_a_group_with_tensors_of_two_devices_uses_both_kernels(monkeypatch):
    """Each fused kernel gets its device's tensors of a group; neither leaves the other's
    to the eager kernel. (Here the CUDA kernel is given a pretend device type, "meta".)"""
    monkeypatch.setattr(FusedCudaKernel, "device_type", "meta")
    params = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(3, device="meta"))]
    optimizer = adamkit.Adam(params, lr=0.1)
    seen = []
    monkeypatch.setattr(FusedCudaKernel, "prepare_group", lambda self, rule, key, ps, gs, *a, **k: (seen.extend(ps), PreparedGroup([], [], len(ps)))[1])
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert seen == [params[1]]
    assert optimizer.last_step_kernels == {"fused_cuda": 1, "fused_cpu": 1}


@pytest.mark.parametrize("state_dtype", ["bf16", "int8"])
@pytest.mark.parametrize("cls,kwargs", [(adamkit.Adam, dict(amsgrad=True)), (adamkit.SGD, dict(momentum=0.9)),
                                        (adamkit.RMSprop, dict(centered=True))])
def test_low_precision_state_is_stored_as_on_the_cpu(cls, kwargs, state_dtype, cuda_kernel_on_cpu, monkeypatch):
    """The same bits in the CUDA pass as in the CPU pass: bf16 rounded stochastically
    under the same seed, int8 coded in the same blocks (a tensor's last block partial)."""
    def run():
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5000, generator=g)), torch.nn.Parameter(torch.randn(70, 80, generator=g))]
        optimizer = cls(params, lr=0.01, state_dtype=state_dtype, state_seed=9, **kwargs)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        return params, optimizer

    cuda = run()
    monkeypatch.setattr(base, "_fused_kernels", lambda: [FusedCpuKernel()])
    cpu = run()
    assert cuda[1].last_step_kernels == {"fused_cuda": 2}
    stored = cuda[1].state[cuda[0][0]][next(iter(cuda[1].state_fills(cuda[1].param_groups[0])))].dtype
    assert stored == {"bf16": torch.bfloat16, "int8": torch.int8}[state_dtype]
    assert_bitwise_equal(cpu[0], cuda[0], cpu[1], cuda[1])
