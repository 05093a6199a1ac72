"""Robust under real use: state changed behind the optimizer's back, the compile cache,
threads and warnings. Where a mistake could crash the interpreter, the case runs in a
subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import adamkit
from adamkit.kernels import compile_cache
from parity import EAGER, assert_matches

SOURCE = Path(adamkit.__file__).parents[1]


def run_python(code: str, *, cache_dir: Path | None = None, extra_env=None, check=True) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    if cache_dir is not None:
        environment["ADAMKIT_CACHE_DIR"] = str(cache_dir)
    environment.update(extra_env or {})
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environment, timeout=600
    )
    if check:
        assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


# --------------------------------------------------------------------------------------
# State changed between steps: honoured as torch honours it, never a stale address
# --------------------------------------------------------------------------------------


def _run(change, *, kernel_kwargs=None, cls=adamkit.Adam, size=(40, 25), steps=4):
    """Steps a parameter, applying ``change(optimizer, param)`` after step 1."""
    g = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(size, generator=g))
    other = torch.nn.Parameter(torch.randn(7, generator=g))  # shares the flat buffers
    optimizer = cls([param, other], lr=0.01, **(kernel_kwargs or {}))
    for step in range(steps):
        param.grad = torch.randn(size, generator=g)
        other.grad = torch.randn(7, generator=g)
        optimizer.step()
        if step == 1:
            change(optimizer, param)
    return param, optimizer


CHANGES = {
    "exp_avg.data = zeros": (
        lambda o, p: setattr(o.state[p]["exp_avg"], "data", torch.zeros_like(p)),
        lambda o, p: o.state[p]["exp_avg"].zero_(),
    ),
    "exp_avg.set_(zeros)": (
        lambda o, p: o.state[p]["exp_avg"].set_(torch.zeros_like(p)),
        lambda o, p: o.state[p]["exp_avg"].zero_(),
    ),
    "exp_avg replaced": (
        lambda o, p: o.state[p].__setitem__("exp_avg", torch.full_like(p, 0.5)),
        lambda o, p: o.state[p]["exp_avg"].fill_(0.5),
    ),
    "step.data = 100": (
        lambda o, p: setattr(o.state[p]["step"], "data", torch.tensor(100.0)),
        lambda o, p: o.state[p]["step"].fill_(100.0),
    ),
    "exp_avg_sq grown then shrunk": (
        lambda o, p: o.state[p]["exp_avg_sq"].resize_(8000).resize_(p.shape),
        lambda o, p: None,
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_state_changed_between_steps_is_honoured(change):
    """The default kernel sees the change exactly as an in-place edit of its own state
    would make it (bit for bit), and torch's for-loop and adamkit's agree on it."""
    swap, in_place = CHANGES[change]
    param, optimizer = _run(swap)
    twin, twin_optimizer = _run(in_place)
    assert optimizer.last_step_kernels == {"fused_cpu": 2}
    assert torch.equal(param, twin)
    for name, value in optimizer.state[param].items():
        assert torch.equal(value, twin_optimizer.state[twin][name]), name
    theirs, torch_optimizer = _run(swap, cls=torch.optim.Adam)
    ours, eager_optimizer = _run(swap, kernel_kwargs=EAGER)
    assert torch.equal(ours, theirs)
    assert_matches(theirs, param, "default")
    # exp_avg depends on the gradients alone: equal to torch's in either kernel.
    assert torch.equal(optimizer.state[param]["exp_avg"], torch_optimizer.state[theirs]["exp_avg"])
    assert optimizer.state[param]["step"].item() == torch_optimizer.state[theirs]["step"].item()


def test_state_shrunk_in_place_fails_as_in_torch():
    """A state tensor resized to fewer elements than its parameter: torch's step raises,
    and so does adamkit's; the kernel never walks past the tensor's new end."""
    shrink = lambda o, p: o.state[p]["exp_avg"].resize_(10)  # noqa: E731
    with pytest.raises(RuntimeError):
        _run(shrink, cls=torch.optim.Adam)
    with pytest.raises(RuntimeError):
        _run(shrink)


def test_storage_reallocated_under_a_large_parameter_is_never_used():
    """Growing a state view reallocates the buffer every parameter's state lives in: the
    old addresses point at freed memory. (Before, this crashed the interpreter.)"""
    result = run_python(
        """
        import torch, adamkit
        def run(resize):
            g = torch.Generator().manual_seed(0)
            p = torch.nn.Parameter(torch.randn(1_000_000, generator=g))
            q = torch.nn.Parameter(torch.randn(1000, generator=g))
            opt = adamkit.Adam([p, q], lr=0.01)
            for step in range(3):
                p.grad, q.grad = torch.randn(1_000_000, generator=g), torch.randn(1000, generator=g)
                opt.step()
                if resize and step == 0:
                    s = opt.state[p]["exp_avg"]
                    s.resize_(8_000_000)
                    s.resize_(1_000_000)
            return p, q
        a, b = run(True), run(False)
        print(all(torch.equal(x, y) for x, y in zip(a, b)), bool(a[1].abs().max() < 10))
        """
    )
    assert result.stdout.split() == ["True", "True"]


# --------------------------------------------------------------------------------------
# The compile cache
# --------------------------------------------------------------------------------------

STEP_RULES = """
import warnings
warnings.simplefilter("error")
import torch, adamkit
for cls in (CLASSES):
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4).to(DTYPE))]
    optimizer = cls(params, lr=0.01, **({"momentum": 0.9} if cls is adamkit.SGD else {}))
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    assert optimizer.last_step_kernels == {"fused_cpu": 2}, optimizer.last_step_kernels
print("ok", torch.get_num_threads())
"""
# Two rules, one that counts steps and one that does not: compiling is what these cost.
STEP_EVERY_RULE = STEP_RULES.replace("CLASSES", "adamkit.Adam, adamkit.SGD").replace("DTYPE", "torch.bfloat16")
# One rule and one dtype, for the tests that must compile without the cache.
STEP_SGD = (STEP_RULES.replace("CLASSES", "adamkit.SGD,").replace("DTYPE", "torch.float32")
            .replace('warnings.simplefilter("error")', ""))


def _entries(cache_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in cache_dir.rglob("*") if path.is_file() and path.suffix in (".nbi", ".nbc")}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> tuple[Path, dict[str, bytes], dict[str, bytes]]:
    """A cache two processes filled at once, and its entries before and after a third used it."""
    folder = tmp_path_factory.mktemp("cache")
    environment = dict(os.environ, ADAMKIT_CACHE_DIR=str(folder),
                       PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    first = [subprocess.Popen([sys.executable, "-c", STEP_EVERY_RULE], env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in first:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        assert out.startswith("ok")
    after_two = _entries(folder)
    run_python(STEP_EVERY_RULE, cache_dir=folder)
    return folder, after_two, _entries(folder)


def test_cache_is_shared_by_concurrent_and_later_processes(shared_cache):
    """Two processes compiling at once, then a third: one entry per specialization, and
    the third process finds them all (it writes nothing)."""
    _, after_two, after_three = shared_cache
    assert after_three == after_two
    # One entry per real specialization. Per rule: fused_pass for fp32 and bf16; once for
    # both rules (compile_cache.helper_loops): all_zero for fp32 and bf16, advance_steps
    # for Adam's fp32 step counter (SGD has none).
    assert sum(name.endswith(".nbi") for name in after_two) == 2 + 2
    assert sum(name.endswith(".nbc") for name in after_two) == 2 * 2 + 2 + 1


def test_a_broken_cache_never_breaks_a_step(shared_cache, tmp_path):
    broken = tmp_path / "cache"
    shutil.copytree(shared_cache[0], broken)
    for index in broken.rglob("cpu-sgd-*.nbi"):
        index.write_bytes(b"\x80\x04garbage")
    result = run_python(STEP_SGD, cache_dir=broken)
    assert result.stdout.startswith("ok")
    assert result.stderr.count("compile cache") == 1, result.stderr  # warned once


def test_an_unwritable_cache_folder_never_breaks_a_step(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = run_python(STEP_SGD, cache_dir=not_a_folder / "cache")
    assert result.stdout.startswith("ok")
    assert result.stderr.count("compile cache") == 1, result.stderr


def test_an_unwritable_cache_folder_never_breaks_a_cuda_step(tmp_path):
    """The CUDA kernel's Triton pass (here in Triton's interpreter) compiles from a source
    file: without the cache folder, from one of the process's own, with the same warning."""
    pytest.importorskip("triton")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    result = run_python("""
        import warnings, torch, adamkit
        from adamkit.kernels.fused_cuda import FusedCudaKernel
        from adamkit.optimizers import base
        FusedCudaKernel.device_type = "cpu"
        base._fused_kernels = lambda: [FusedCudaKernel()]
        w = torch.nn.Parameter(torch.ones(10)); w.grad = torch.ones(10)
        optimizer = adamkit.SGD([w], lr=0.5)
        optimizer.step()
        assert optimizer.last_step_kernels == {"fused_cuda": 1} and torch.all(w == 0.5)
        print("ok")
    """, cache_dir=not_a_folder / "cache", extra_env={"TRITON_INTERPRET": "1"})
    assert result.stdout.startswith("ok")
    assert result.stderr.count("compile cache") == 1, result.stderr


def test_old_copies_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMKIT_CACHE_DIR", str(tmp_path))
    folder = compile_cache.cache_dir()
    (folder / "__pycache__").mkdir(parents=True)
    for age in range(5):
        old = folder / f"cpu-adam-old{age}.py"
        old.write_text("")
        (folder / "__pycache__" / f"cpu-adam-old{age}.fused_pass-1.py311.nbi").write_text("")
        os.utime(old, (1000 + age, 1000 + age))
    rule = adamkit.Adam.update_rule
    compile_cache._cached_module(rule.name, rule.update)
    copies = sorted(p.name for p in folder.glob("cpu-adam-*.py"))
    assert len(copies) == compile_cache.KEEP_PER_RULE
    assert {"cpu-adam-old3.py", "cpu-adam-old4.py"} < set(copies)
    assert sorted(p.name.split(".")[0] for p in (folder / "__pycache__").iterdir()) == ["cpu-adam-old3", "cpu-adam-old4"]


def test_threads_and_warnings_are_left_alone(shared_cache):
    """A step runs on torch's thread count and leaves it, and nothing warns (bf16 included)."""
    result = run_python("import torch; torch.set_num_threads(1)\n" + STEP_EVERY_RULE, cache_dir=shared_cache[0])
    assert result.stdout.split() == ["ok", "1"]
    assert result.stderr == ""


def test_a_forked_process_steps_after_its_parent_did(shared_cache):
    """Hogwild-style training forks after the parent stepped: the child has none of the
    parent's helper threads, and its step must not wait for them."""
    result = run_python("""
        import multiprocessing, torch, adamkit
        torch.set_num_threads(2)
        w = torch.nn.Parameter(torch.zeros(1 << 18)); w.grad = torch.ones(1 << 18)
        optimizer = adamkit.Adam([w], lr=0.1)
        optimizer.step()  # split over two threads: the parent's helper thread exists

        def child():  # no parallel torch op here: torch's OpenMP pool does not survive a fork
            optimizer.step()
            assert optimizer.last_step_kernels == {"fused_cpu": 1} and optimizer.state[w]["step"].item() == 2
            assert (w.detach().numpy() < -0.1).all()

        process = multiprocessing.get_context("fork").Process(target=child, daemon=True)
        process.start()
        process.join(timeout=60)
        print(process.exitcode)
    """, cache_dir=shared_cache[0])
    assert result.stdout.split() == ["0"], (result.stdout, result.stderr[-2000:])


def test_the_eager_kernel_steps_non_cpu_tensors_whole():
    """Chunks pay on a CPU's caches; on a GPU each operation is a launch: a 4096 x 4096
    AdamW step in 2^16-element chunks was 2,823 of them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    param = torch.nn.Parameter(torch.empty(4096, 4096, device="meta"))
    param.grad = torch.empty(4096, 4096, device="meta")
    optimizer = adamkit.AdamW([param], lr=0.1, **EAGER)
    optimizer.step()  # creates the state
    with Count():
        optimizer.step()
    assert optimizer.last_step_kernels == {"eager": 1}
    assert Count.calls < 60, Count.calls


@pytest.mark.parametrize("kernel", [{}, EAGER])
def test_meta_parameters_step_as_in_torch(kernel):
    """Parameters on the meta device (shapes without data, as when a model is built
    before its weights are loaded): torch steps them, and so does adamkit."""
    param = torch.nn.Parameter(torch.empty(3, 4, device="meta"))
    param.grad = torch.empty(3, 4, device="meta")
    optimizer = adamkit.AdamW([param], lr=0.1, **kernel)
    optimizer.step()
    assert optimizer.last_step_kernels == {"eager": 1}
    assert optimizer.state[param]["exp_avg"].device.type == "meta"


def test_gradient_checks_copy_to_the_host_once_per_step(monkeypatch):
    """On a GPU each copy to the host waits for the device: the eager kernel's zero-grad
    check and skip_nonfinite read all gradients' extremes with one copy, not one per
    parameter (they once made one each)."""
    copies = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: (copies.append(self.shape), original(self, *a, **k))[1])
    params = [torch.nn.Parameter(torch.ones(5)) for _ in range(10)]
    optimizer = adamkit.Adam(params, lr=0.1, skip_nonfinite=True, **EAGER)
    for p in params:
        p.grad = torch.ones(5)
    copies.clear()
    optimizer.step()
    assert optimizer.last_step_kernels == {"eager": 10}
    assert len(copies) <= 2, copies  # the finite check and the zero-grad check
