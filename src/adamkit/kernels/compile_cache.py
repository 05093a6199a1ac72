"""Where the fused kernels' compiled code lives, and how processes share it.

numba compiles ``cpu_loops`` for each rule on first use (seconds) and caches the
result on disk beside the source it compiled; Triton compiles ``triton_loops`` from its
source file and keeps its own cache. adamkit writes those sources itself, one copy of
each template per rule, into a cache folder it owns:

- ``$ADAMKIT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/adamkit`` (``~/.cache/adamkit``),
  in a subfolder per numba and Python version. An installed package may be read-only;
  this folder is the user's.
- A copy's name carries a hash of everything its compiled code depends on (the
  template, the rule's module, the operations, the shared transforms), so an edited
  or upgraded rule gets a new copy and can never meet stale code. The three newest
  copies per template and rule are kept, older ones deleted.
- numba keys each entry by argument types, so every later process finds the entry an
  earlier one wrote; each real specialization is compiled once.
- Compiling and saving happen under an exclusive lock on ``.lock`` in the folder:
  numba numbers its data files without locking, and two processes adding different
  entries at once could otherwise pair an index entry with the other's code.
- Nothing here is fatal: if the folder cannot be written or the cache fails while
  compiling, the kernel is compiled without a cache and one warning says why.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import inspect
import itertools
import os
import re
import shutil
import sys
import tempfile
import types
import typing
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np
import torch

from adamkit.kernels import cpu_loops, scalar_ops
from adamkit.rules import rule as rule_module
from adamkit.rules import transforms

KEEP_PER_RULE = 3
_BINDING = re.compile(r"(# BINDING\n)(.*?)(# END BINDING\n)", re.S)

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock
    fcntl = None


def cache_dir() -> Path:
    """The folder holding compiled kernels for this numba and Python.

    >>> cache_dir().name.startswith("numba-")
    True
    """
    root = os.environ.get("ADAMKIT_CACHE_DIR")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adamkit"
    return Path(root) / f"numba-{numba.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"


def _with_binding(template: types.ModuleType, binding: str) -> str:
    text = Path(template.__file__).read_text()
    return _BINDING.sub(lambda m: m[1] + binding + m[3], text, count=1)


def _fingerprint(text: str, modules) -> str:
    digest = hashlib.sha256(text.encode())
    for module in modules:
        digest.update(Path(inspect.getsourcefile(module)).read_bytes())
    return digest.hexdigest()[:16]


def _importable(function: Callable) -> str:
    """``from module import name`` for ``function`` (or class); a ValueError if it has no such name."""
    if "<" in function.__qualname__:
        raise ValueError(f"{function.__qualname__} cannot be imported by name")
    return f"from {function.__module__} import {function.__qualname__}"


def write_copy(
    template: types.ModuleType, kind: str, rule_name: str, binding: str, depends_on, folder: Path | None = None
) -> types.ModuleType:
    """Write (once) ``template`` with ``binding`` between its BINDING markers into
    ``folder`` (the cache folder by default) as ``{kind}-{rule_name}-{hash}.py``, and import it."""
    text = _with_binding(template, binding)
    folder = cache_dir() if folder is None else folder
    stem = f"{kind}-{rule_name}"
    path = folder / f"{stem}-{_fingerprint(text, depends_on)}.py"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(text)
        try:
            os.link(temporary, path)  # never replaces: numba keys its cache on the file's mtime
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
        _prune(folder, stem, path)
    return _import(path)


def _import(path: Path) -> types.ModuleType:
    name = f"adamkit_compiled_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba finds a cached function's module here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _prune(folder: Path, stem: str, keep: Path) -> None:
    copies = sorted(folder.glob(f"{stem}-*.py"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in copies if p != keep][KEEP_PER_RULE - 1 :]:
        for path in [old, *(folder / "__pycache__").glob(f"{old.stem}.*")]:
            path.unlink(missing_ok=True)


def _cached_module(rule_name: str, update: Callable) -> types.ModuleType:
    """This rule's copy of ``cpu_loops`` in the cache folder, imported."""
    binding = f"{_importable(update)} as rule_update\n\nCACHE = True\n"
    depends_on = (inspect.getmodule(update), scalar_ops, transforms, rule_module)
    return write_copy(cpu_loops, "cpu", rule_name, binding, depends_on)


def _uncached_module(rule_name: str, update: Callable) -> types.ModuleType:
    """``cpu_loops`` compiled in memory, with ``update`` bound and numba's cache off."""
    text = _with_binding(cpu_loops, "rule_update = rule_update\n\nCACHE = False\n")
    module = types.ModuleType(f"adamkit_uncached_{rule_name}_{id(update):x}")
    module.__dict__["rule_update"] = update
    sys.modules[module.__name__] = module
    exec(compile(text, cpu_loops.__file__, "exec"), module.__dict__)
    return module


_warned = False


def _warn_uncached(reason: BaseException) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"adamkit: the compile cache in {cache_dir()} cannot be used "
            f"({type(reason).__name__}: {reason}); kernels are compiled in each process instead. "
            "Set ADAMKIT_CACHE_DIR to a writable folder to cache them.",
            RuntimeWarning,
            stacklevel=4,
        )


@contextmanager
def _locked(folder: Path):
    if fcntl is None:
        yield
        return
    with open(folder / ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


PARALLEL_MIN_ELEMENTS = 1 << 16  # below this a pass runs on the calling thread: more would cost more than they save
RUNS_PER_THREAD = 4
_pools: dict[int, ThreadPoolExecutor] = {}
# A forked child has none of its parent's threads: its pools would take work and never run it.
os.register_at_fork(after_in_child=_pools.clear)


def _pool(threads: int) -> ThreadPoolExecutor:
    """``threads - 1`` helper threads: the calling thread takes the first run itself."""
    pool = _pools.get(threads)
    if pool is None:
        pool = _pools[threads] = ThreadPoolExecutor(threads - 1, thread_name_prefix="adamkit")
    return pool


class CompiledLoops:
    """The template's loops compiled for one rule; call them through ``run``."""

    def __init__(self, rule_name: str, update: Callable) -> None:
        self._rule_name, self._update = rule_name, update
        self._ready: set = set()
        try:
            self.module, self.cached = _cached_module(rule_name, update), True
        except Exception as error:  # noqa: BLE001 - any failure means: no cache
            _warn_uncached(error)
            self.module, self.cached = _uncached_module(rule_name, update), False

    def run(self, name: str, key: tuple, *args):
        """Call loop ``name`` with ``args``; ``key`` names the specialization the args need.

        A specialization is compiled (or loaded from the cache) under the cache lock the
        first time this process needs it (``ensure`` does that ahead of time).
        """
        self._ensure(name, key, args)
        return getattr(self.module, name)(*args)

    def run_over_items(self, name: str, key: tuple, args: tuple, items, starts, ends, out) -> None:
        """``run`` for a loop over work items (``items, starts, ends`` and ``out``, one
        result per item, after ``args``), cut into ``RUNS_PER_THREAD`` contiguous runs
        of about equal element counts per torch thread, which the threads take in turn
        as each finishes its last: a thread slowed down (a core shared with torch's
        OpenMP workers, which spin for a while after each parallel region) takes fewer.
        The loops release the GIL, so the runs go in parallel on a pool of adamkit's own
        threads. An item's results do not depend on the thread that runs it."""
        self._ensure(name, key, (*args, items, starts, ends, out))
        loop = getattr(self.module, name)
        threads = torch.get_num_threads()
        counts = np.cumsum(ends - starts)
        total = int(counts[-1]) if len(counts) else 0
        if threads == 1 or len(items) < 2 or total < PARALLEL_MIN_ELEMENTS:
            loop(*args, items, starts, ends, out)
            return
        pieces = threads * RUNS_PER_THREAD
        bounds = [0, *np.searchsorted(counts, total * np.arange(1, pieces) / pieces, side="right"), len(items)]
        runs = [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        taken = itertools.count()  # next() on it is atomic: each run is taken once

        def take_runs() -> None:
            for index in iter(taken.__next__, None):
                if index >= len(runs):
                    return
                run = runs[index]
                loop(*args, items[run], starts[run], ends[run], out[run])

        futures = [_pool(threads).submit(take_runs) for _ in range(min(threads, len(runs)) - 1)]
        take_runs()  # this thread takes runs too
        for future in futures:
            future.result()

    def ensure(self, name: str, key: tuple, *args) -> None:
        """Compile loop ``name`` for ``args`` now, so that a later ``run`` cannot fail compiling."""
        self._ensure(name, key, args)

    def _ensure(self, name: str, key: tuple, args: tuple) -> None:
        if (name, key) not in self._ready:
            self._compile(name, args)
            self._ready.add((name, key))

    def _compile(self, name: str, args: tuple) -> None:
        signature = tuple(map(numba.typeof, args))
        if not self.cached:
            getattr(self.module, name).compile(signature)
            return
        try:
            folder = cache_dir()
            with _locked(folder):
                getattr(self.module, name).compile(signature)
        except Exception as error:  # noqa: BLE001 - retried without the cache, which raises real errors
            # Compiled in memory first: an error there is the code's, not the cache's, and
            # is raised as it is, with no word about the cache and the cache kept for later.
            uncached = _uncached_module(self._rule_name, self._update)
            getattr(uncached, name).compile(signature)
            _warn_uncached(error)
            self.module, self.cached = uncached, False
            self._ready.clear()


_loops: dict[Callable, CompiledLoops] = {}


def helper_loops() -> CompiledLoops:
    """The template's loops that no rule enters (gradient checks, step counters, scalar
    state), from one copy for every rule: their compiles do not grow with the family.
    That copy is Adam's, which any run of the suite compiles anyway."""
    from adamkit.rules import adam

    return loops_for(adam.name, adam.update)


def loops_for(rule_name: str, update: Callable) -> CompiledLoops:
    """The compiled loops for the rule with this name and update function."""
    loops = _loops.get(update)
    if loops is None:
        loops = _loops[update] = CompiledLoops(rule_name, update)
    return loops


def _loader(name: str, namedtuple: type, alias: str) -> str:
    """Source of a Triton function building ``namedtuple`` from consecutive values at a
    pointer (bool fields: value != 0)."""
    hints = typing.get_type_hints(namedtuple)
    loads = [f"tl.load(pointer + {i})" + (" != 0" if hints.get(f) is bool else "") for i, f in enumerate(namedtuple._fields)]
    return f"@triton.jit\ndef {name}(pointer):\n    return {alias}({', '.join(loads)})\n"


_triton_modules: dict[Callable, types.ModuleType] = {}


def triton_loops_for(rule) -> types.ModuleType:
    """This rule's copy of ``triton_loops`` (Triton compiles from source files), imported.

    The rule's coefficients function must be annotated to return its NamedTuple.
    """
    module = _triton_modules.get(rule.update)
    if module is None:
        from adamkit.kernels import triton_loops, triton_ops

        coefficients = typing.get_type_hints(rule.coefficients)["return"]
        binding = (
            f"{_importable(coefficients)} as Coefficients\n{_importable(rule.update)} as rule_update\n\n\n"
            + _loader("load_coefficients", coefficients, "Coefficients") + "\n\n"
            + _loader("load_transform", transforms.GradientTransform, "GradientTransform")
        )
        depends_on = (inspect.getmodule(rule.update), triton_ops, transforms, rule_module)
        try:
            module = write_copy(triton_loops, "cuda", rule.name, binding, depends_on)
        except Exception as error:  # noqa: BLE001 - any failure means: no cache
            # Triton compiles from a source file: without the cache, this process's own folder.
            _warn_uncached(error)
            module = write_copy(triton_loops, "cuda", rule.name, binding, depends_on, folder=_private_folder())
        _triton_modules[rule.update] = module
    return module


@functools.cache
def _private_folder() -> Path:
    """A folder of this process's own, removed when it ends."""
    folder = Path(tempfile.mkdtemp(prefix="adamkit-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
