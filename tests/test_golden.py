"""The default kernel gives the same bits on every machine, thread count and CPU model.

For every algorithm and flag of the fused-kernel tests, in fp32 and fp64, a fixed run
(contiguous, transposed, non-dense and complex parameters, a large one spanning
several work items, a 0-dim one) ends with parameters and state whose hash is stored in
``golden/default_kernel.json``. The inputs are integers scaled by powers of two, so
they are exact on every machine; torch's random number generators and math library
play no part. A machine that produces other bits fails here.

After an intended change to a rule, regenerate the file with
``ADAMKIT_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import adamkit
from adamkit.kernels import fused_cpu
from test_fused_cpu import CASES, case_id

GOLDEN = Path(__file__).parent / "golden" / "default_kernel.json"
STEPS = 6


def exact_tensor(rng: np.random.Generator, shape, dtype: torch.dtype) -> torch.Tensor:
    """Values k / 2^20 * 2^e with |k| < 2^20 and e in [-6, 2]: exact in fp32 and fp64."""
    count = int(np.prod(shape))
    values = rng.integers(-(2**20), 2**20, size=count) * np.exp2(rng.integers(-26, -17, size=count))
    return torch.from_numpy(values).reshape(shape).to(dtype)


def golden_params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    rng = np.random.Generator(np.random.PCG64(7))
    complex_dtype = torch.complex64 if dtype is torch.float32 else torch.complex128
    tensors = [
        exact_tensor(rng, (33, 17), dtype),
        exact_tensor(rng, (9, 17), dtype).t(),  # transposed: dense, not contiguous
        exact_tensor(rng, (2 * fused_cpu.WORK_ITEM_ELEMENTS + 5,), dtype),
        exact_tensor(rng, (), dtype),
        exact_tensor(rng, (12, 10), dtype)[:, ::2],  # not dense: stepped through copies
        torch.complex(exact_tensor(rng, (6, 5), dtype), exact_tensor(rng, (6, 5), dtype)).to(complex_dtype),
    ]
    return [torch.nn.Parameter(t) for t in tensors]


def golden_grads(params, step: int) -> list[torch.Tensor | None]:
    rng = np.random.Generator(np.random.PCG64(1000 + step))
    grads = []
    for p in params:
        real = p.real.dtype
        grad = exact_tensor(rng, p.shape, real)
        if p.is_complex():
            grad = torch.complex(grad, exact_tensor(rng, p.shape, real))
        grads.append(torch.empty_like(p).copy_(grad))  # laid out like the parameter
    if step == 2:
        grads[1] = None  # a step without a gradient
    if step == 3:
        grads[0] = torch.zeros_like(params[0])  # an all-zero gradient
    return grads


def run_hash(cls, flags: dict, dtype: torch.dtype) -> str:
    params = golden_params(dtype)
    optimizer = cls(params, lr=0.01, **flags)
    for step in range(STEPS):
        for p, g in zip(params, golden_grads(params, step)):
            p.grad = g
        optimizer.step()
    assert optimizer.last_step_kernels == {"fused_cpu": len(params)}
    digest = hashlib.sha256()
    for p in params:
        for tensor in [p, *(optimizer.state[p][name] for name in sorted(optimizer.state[p]))]:
            tensor = tensor.detach()
            tensor = torch.view_as_real(tensor) if tensor.is_complex() else tensor
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def all_hashes(cases=CASES) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # all-zero gradients with weight decay, on purpose
        return {
            f"{case_id(case)}-{str(dtype).removeprefix('torch.')}": run_hash(*case, dtype)
            for case in cases
            for dtype in (torch.float32, torch.float64)
        }


def assert_golden(hashes: dict[str, str]) -> None:
    expected = json.loads(GOLDEN.read_text())
    differ = sorted(key for key, value in hashes.items() if expected.get(key) != value)
    assert not differ, f"{len(differ)} of {len(hashes)} runs gave other bits than {GOLDEN.name}: {differ[:4]}"


def test_default_kernel_bits_match_the_golden_file():
    hashes = all_hashes()
    if os.environ.get("ADAMKIT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    assert set(json.loads(GOLDEN.read_text())) == set(hashes)
    assert_golden(hashes)


# Adam and RMSprop with their flags on (sqrt, division, fma, lerp, centering): enough to
# see whether the bits depend on anything but the inputs, at a fraction of the
# compiling a new CPU target costs.
SPOT_CHECKS = [
    max((c for c in CASES if c[0] is cls), key=lambda c: sum(map(bool, c[1].values())))
    for cls in (adamkit.Adam, adamkit.RMSprop)
]


def test_bits_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert_golden(all_hashes(SPOT_CHECKS))
    finally:
        torch.set_num_threads(threads)


def test_bits_do_not_depend_on_the_cpu_numba_compiles_for():
    """numba compiles for the host CPU's instruction set (here with AVX-512); compiled for
    a generic x86-64 or aarch64 CPU it must give the same bits."""
    script = (
        "import json, test_golden; "
        "print(json.dumps(test_golden.all_hashes(test_golden.SPOT_CHECKS)))"
    )
    environment = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="")
    tests, source = Path(__file__).parent, Path(adamkit.__file__).parents[1]
    environment["PYTHONPATH"] = os.pathsep.join([str(tests), str(source), environment.get("PYTHONPATH", "")])
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, cwd=tests, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    hashes = json.loads(completed.stdout.splitlines()[-1])
    assert len(hashes) == 2 * len(SPOT_CHECKS)
    assert_golden(hashes)
