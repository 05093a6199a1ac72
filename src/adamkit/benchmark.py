"""Step-time benchmarks of an adamkit optimizer against its torch.optim counterpart on the
same tensors (Adam by default; ``ALGORITHMS`` lists the others).

A figure is the median of repeated steps after warm-up; every ratio compares two
optimizers timed in the same run, taking turns. On the CPU each step is timed alone;
on a GPU a round of ``repeats`` steps runs back to back (steady state: the host queues
work while the device runs it) between two CUDA events. The limit is the machine's
measured stream bandwidth for the bytes Adam's step must move (param, grad and two state
tensors read; param and state written: 7 elements per parameter); the GB/s of a result
count the algorithm's own state tensors (one for ASGD and Lion, three for AdEMAMix, four for Adan).

    >>> shape = parse_shape("3x1000")
    >>> shape.tensors, shape.elements, shape.label
    (3, 1000, '3 x 1000')
"""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import njit, prange

import adamkit

ELEMENTS_MOVED_PER_PARAM = 7
DEFAULT_SHAPES = ("4x4194304", "4x16777216", "2000x4096")
DEFAULT_IMPLEMENTATIONS = ("adamkit", "torch for-loop", "torch foreach", "torch fused", "reference package")
# The algorithms timed: adamkit's class and torch's (None where torch has none).
ALGORITHMS: dict[str, tuple[type, type | None]] = {
    "adam": (adamkit.Adam, torch.optim.Adam),
    "adamw": (adamkit.AdamW, torch.optim.AdamW),
    "adamax": (adamkit.Adamax, torch.optim.Adamax),
    "nadam": (adamkit.NAdam, torch.optim.NAdam),
    "radam": (adamkit.RAdam, torch.optim.RAdam),
    "adadelta": (adamkit.Adadelta, torch.optim.Adadelta),
    "rprop": (adamkit.Rprop, torch.optim.Rprop),
    "asgd": (adamkit.ASGD, torch.optim.ASGD),
    "lion": (adamkit.Lion, None),
    "adopt": (adamkit.ADOPT, None),
    "ademamix": (adamkit.AdEMAMix, None),
    "adan": (adamkit.Adan, None),
    "schedulefree": (adamkit.ScheduleFreeAdamW, None),
}
# Where torch has no class: the package people use instead (module, class, the
# arguments that give adamkit's defaults), timed as "reference package" when installed.
REFERENCE_PACKAGES: dict[str, tuple[str, str, dict]] = {
    "lion": ("lion_pytorch", "Lion", {}),
    "adopt": ("pytorch_optimizer", "ADOPT", {}),
    "ademamix": ("pytorch_optimizer", "AdEMAMix", {"alpha": 2.0, "weight_decouple": True}),
    "adan": ("pytorch_optimizer", "Adan", {}),
    "schedulefree": ("schedulefree", "AdamWScheduleFree", {}),
}
# name -> (params, adamkit's class, torch's class) -> optimizer; adamkit's take its options too
IMPLEMENTATIONS: dict[str, Callable] = {
    "adamkit": lambda params, ours, theirs, **options: ours(params, lr=1e-3, **options),
    "adamkit fp32 state": lambda params, ours, theirs, **options: ours(params, lr=1e-3, state_dtype="fp32", **options),
    "adamkit bf16 state": lambda params, ours, theirs, **options: ours(params, lr=1e-3, state_dtype="bf16", **options),
    "adamkit int8 state": lambda params, ours, theirs, **options: ours(params, lr=1e-3, state_dtype="int8", **options),
    "torch for-loop": lambda params, ours, theirs: theirs(params, lr=1e-3, foreach=False),
    "torch foreach": lambda params, ours, theirs: theirs(params, lr=1e-3, foreach=True),
    "torch fused": lambda params, ours, theirs: theirs(params, lr=1e-3, fused=True),
}


def state_tensors(algorithm: str) -> int:
    """How many state tensors per parameter ``algorithm`` keeps by default (each read and written once a step).

    >>> state_tensors("adam"), state_tensors("lion"), state_tensors("ademamix"), state_tensors("adan")
    (2, 1, 3, 4)
    """
    optimizer = ALGORITHMS[algorithm][0]([torch.nn.Parameter(torch.zeros(1))])
    return len(optimizer.state_fills(optimizer.param_groups[0]))


def available(implementation: str, algorithm: str) -> bool:
    """Whether ``implementation`` exists for ``algorithm``: torch has fused kernels for
    Adam and AdamW only, the 8-bit peers implement Adam, torch has no Lion.

    >>> available("torch fused", "nadam"), available("torch foreach", "nadam"), available("torch foreach", "lion")
    (False, True, False)
    """
    if implementation in PEER_IMPLEMENTATIONS:
        return algorithm == "adam"
    if implementation == "reference package":
        return algorithm in REFERENCE_PACKAGES
    if implementation.startswith("torch"):
        return ALGORITHMS[algorithm][1] is not None and (implementation != "torch fused" or algorithm in ("adam", "adamw"))
    return True

STATE_DTYPE_IMPLEMENTATIONS = {name: f"adamkit {name} state" for name in ("fp32", "bf16", "int8")}


def _torchao_adamw8bit(params, ours, theirs):
    from torchao.optim import AdamW8bit

    return AdamW8bit(params, lr=1e-3, weight_decay=0.0)  # Adam's arithmetic: no decay


def _reference_package(params, ours):
    name = next(name for name, (cls, _) in ALGORITHMS.items() if cls is ours)
    module, cls, arguments = REFERENCE_PACKAGES[name]
    optimizer = getattr(importlib.import_module(module), cls)(params, lr=1e-3, **arguments)
    if name == "schedulefree":
        optimizer.train()  # schedulefree's optimizers start in eval mode
    return optimizer


def _bitsandbytes_adam8bit(params, ours, theirs):
    import bitsandbytes

    return bitsandbytes.optim.Adam8bit(params, lr=1e-3)


# Other libraries' 8-bit Adam (blocks of 256 with one fp32 scale each, like adamkit's
# int8 state), timed when their package is installed; the package each needs.
PEER_IMPLEMENTATIONS = {"torchao AdamW8bit": "torchao", "bnb Adam8bit": "bitsandbytes"}
IMPLEMENTATIONS["torchao AdamW8bit"] = _torchao_adamw8bit
IMPLEMENTATIONS["reference package"] = lambda params, ours, theirs: _reference_package(params, ours)
IMPLEMENTATIONS["bnb Adam8bit"] = _bitsandbytes_adam8bit

# Bytes per state value where it is not the parameters' dtype (int8: a byte and a
# 4-byte scale per 256 values).
STATE_BYTES = {
    "adamkit fp32 state": 4, "adamkit bf16 state": 2, "adamkit int8 state": 1 + 4 / 256,
    **dict.fromkeys(PEER_IMPLEMENTATIONS, 1 + 4 / 256),
}


def missing_packages(implementations: list[str], algorithm: str = "adam") -> list[str]:
    """The packages that ``implementations`` of ``algorithm`` need and this environment lacks."""
    needed = [PEER_IMPLEMENTATIONS[name] for name in implementations if name in PEER_IMPLEMENTATIONS]
    if "reference package" in implementations and algorithm in REFERENCE_PACKAGES:
        needed.append(REFERENCE_PACKAGES[algorithm][0])
    return [package for package in needed if importlib.util.find_spec(package) is None]


@dataclass(frozen=True)
class Shape:
    tensors: int
    elements: int

    @property
    def label(self) -> str:
        return f"{self.tensors} x {self.elements}"

    @property
    def params(self) -> int:
        return self.tensors * self.elements


def parse_shape(text: str) -> Shape:
    """``"2000x4096"``: 2000 tensors of 4096 elements each."""
    try:
        tensors, elements = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r} is not TENSORSxELEMENTS, e.g. 2000x4096") from None
    if tensors < 1 or elements < 1:
        raise ValueError(f"shape {text!r} needs at least one tensor of one element")
    return Shape(tensors, elements)


def median_ms(step: Callable[[], object], repeats: int, warmup: int) -> float:
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        step()
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def make_params(shape: Shape, dtype: torch.dtype, device: str = "cpu") -> list[torch.nn.Parameter]:
    """``shape``'s parameters with fixed gradients (so only the step is timed), the same for every call."""
    generator = torch.Generator().manual_seed(0)
    params = []
    for _ in range(shape.tensors):
        p = torch.nn.Parameter(torch.randn(shape.elements, generator=generator).to(device, dtype))
        p.grad = torch.randn(shape.elements, generator=generator).to(device, dtype) * 1e-3
        params.append(p)
    return params


GPU_ROUNDS = 5


def _stepper(name: str, shape: Shape, dtype: torch.dtype, device: str, algorithm: str, max_grad_norm: float | None):
    """An implementation's step on its own copy of ``shape``: with ``max_grad_norm``,
    adamkit clips inside its step, the others after ``clip_grad_norm_`` (torch's default,
    foreach where it can), as a training loop calls it."""
    params = make_params(shape, dtype, device)
    if name.startswith("adamkit"):
        options = {} if max_grad_norm is None else {"max_grad_norm": max_grad_norm}
        optimizer = IMPLEMENTATIONS[name](params, *ALGORITHMS[algorithm], **options)
        return optimizer, optimizer.step
    optimizer = IMPLEMENTATIONS[name](params, *ALGORITHMS[algorithm])
    if max_grad_norm is None:
        return optimizer, optimizer.step

    def clip_and_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()

    return optimizer, clip_and_step


def time_steps(
    names: list[str], shape: Shape, dtype: torch.dtype, repeats: int, warmup: int, device: str = "cpu",
    algorithm: str = "adam", max_grad_norm: float | None = None,
) -> dict[str, float]:
    """Median ms of one ``step()`` per implementation, each on its own copy of ``shape``
    (with ``max_grad_norm``, clipped as ``_stepper`` says); for adamkit also of its
    per-step checks alone (``"adamkit checks"``).

    The implementations take turns, so a slow spell of the machine (a shared VM's
    bandwidth drifts by 10-20% over minutes) falls on all of them alike: step by step
    on the CPU, round by round (``GPU_ROUNDS`` of ``repeats`` steps) on a GPU.
    """
    steppers = {name: _stepper(name, shape, dtype, device, algorithm, max_grad_norm) for name in names}
    optimizers = {name: optimizer for name, (optimizer, _) in steppers.items()}
    times: dict[str, list[float]] = {name: [] for name in names}
    if device == "cpu":
        for index in range(warmup + repeats):
            for name, (_, step) in steppers.items():
                start = time.perf_counter()
                step()
                if index >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    else:
        for _, step in steppers.values():
            for _ in range(warmup):
                step()
        for _ in range(GPU_ROUNDS):
            for name, (_, step) in steppers.items():
                times[name].append(_gpu_ms_per_step(step, repeats))
    medians = {name: statistics.median(values) for name, values in times.items()}
    if "adamkit" in optimizers:
        medians["adamkit checks"] = median_ms(lambda: check_step(optimizers["adamkit"]), repeats, warmup)
    return medians


def _gpu_ms_per_step(step: Callable[[], object], repeats: int) -> float:
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def check_step(optimizer: adamkit.optimizers.RuleOptimizer) -> None:
    """What an adamkit step does before its kernel runs: read every parameter's gradient
    and check that the fused kernel's plans still hold."""
    for group in optimizer.param_groups:
        params = group["params"]
        grads = [p.grad for p in params]
        if not any(kernel.checked(id(group), params, grads, optimizer.state) for kernel in optimizer.fused_kernels):
            raise RuntimeError("the plan did not hold between steps")


@njit(parallel=True, cache=True, error_model="numpy")
def _stream(param, grad, exp_avg, exp_avg_sq):
    for i in prange(param.size):
        g = grad[i]
        param[i] += g
        exp_avg[i] += g
        exp_avg_sq[i] += g


def stream_bandwidth(elements: int, repeats: int = 10, device: str = "cpu") -> float:
    """GB/s of a plain pass that reads four fp32 arrays and writes three, as Adam must;
    on a GPU, of a device-to-device copy (bytes read plus written)."""
    if device != "cpu":
        source, target = torch.ones(4 * elements, device=device), torch.empty(4 * elements, device=device)
        ms = statistics.median(_gpu_ms_per_step(lambda: target.copy_(source), repeats) for _ in range(GPU_ROUNDS))
        return 2 * 4 * 4 * elements / ms / 1e6
    arrays = [np.ones(elements, np.float32) for _ in range(4)]
    ms = median_ms(lambda: _stream(*arrays), repeats, warmup=2)
    return ELEMENTS_MOVED_PER_PARAM * 4 * elements / ms / 1e6


def machine(device: str = "cpu") -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device != "cpu":
        model = f"{torch.cuda.get_device_name(device)} (host: {model})"
    return (
        f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, numba {numba.__version__}, Python {platform.python_version()}"
    )


@dataclass
class Result:
    shape: str
    dtype: str
    implementation: str
    ms: float
    gb_per_s: float
    checks_ms: float | None = None  # adamkit: the part of ms spent checking its plans


def run(
    shapes: list[Shape], dtype: torch.dtype, implementations: list[str], repeats: int, warmup: int,
    device: str = "cpu", algorithm: str = "adam", max_grad_norm: float | None = None,
) -> list[Result]:
    element_size = torch.finfo(dtype).bits // 8
    results = []
    for shape in shapes:
        times = time_steps(implementations, shape, dtype, repeats, warmup, device, algorithm, max_grad_norm)
        checks = times.pop("adamkit checks", None)
        for name, ms in times.items():
            # param, grad read and param written; each state tensor read and written;
            # clipping reads the gradients once more inside adamkit's step, three times
            # (norm, then scaling read and written) with clip_grad_norm_
            state_size = STATE_BYTES.get(name, element_size)
            moved = (3 * element_size + 2 * state_tensors(algorithm) * state_size) * shape.params
            if max_grad_norm is not None:
                moved += (1 if name.startswith("adamkit") else 3) * element_size * shape.params
            result = Result(shape.label, str(dtype).removeprefix("torch."), name, ms, moved / ms / 1e6)
            if name == "adamkit":
                result.checks_ms = checks
            results.append(result)
    return results
