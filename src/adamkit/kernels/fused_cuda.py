"""The fused CUDA kernel: one Triton launch per step for each plan (group, dtype, device).

The pass itself is ``triton_loops``: the rule's ``update`` bound to ``triton_ops``,
compiled with ``enable_fp_fusion=False``. A plan's device tables (addresses of every
tensor, element counts, which block belongs to which tensor) are uploaded once; each
step uploads only what changed (gradients at new addresses) and the step's
coefficients, from pinned memory, without waiting for the device. Step counters stay on
the CPU, as torch keeps them outside capturable and fused mode, so the coefficients are
computed on the host, correctly rounded. The zero-grad warning reads its flags back
asynchronously and so may come one step late.

Every pass is compiled and loaded while the step is prepared, before anything is
written. Where Triton cannot compile or load it for a GPU (an old architecture, ROCm, a
Triton version that differs), that device's parameters step on the eager kernel from
then on, and one warning names the error: a run that torch.optim would train never stops.

Run with ``TRITON_INTERPRET=1``, Triton executes the pass on CPU tensors (NumPy
arithmetic, so fused multiply-adds round twice); the test suite uses that, with the
kernel's device type set to "cpu", to check every rule and flag without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from adamkit.kernels.fused import FusedKernel, Launch
from adamkit.kernels.plan import FusedPlan, storage_dtype
from adamkit.rules import SLOT_COUNT, GradientTransform, Rule, gradient_transform
from adamkit.state.formats import CODE_VALUES, StateSpec

# Devices where the pass failed to compile or load: (the error, as the warning named it).
_unusable: dict[torch.device, str] = {}

BLOCK = 2048
ROWS = 2 + 2 * SLOT_COUNT  # parameter, gradient, the state slots, their int8 scales
MAX_PARTITIONS = 16  # block tables kept per plan for parameters whose step counts differ
_TRITON_DTYPES = {}  # torch dtype -> triton dtype, filled on first use


@functools.cache
def triton_available() -> bool:
    """Triton can be imported, and there is a GPU for it or its interpreter is on."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _warn_without_triton() -> None:
    warnings.warn(
        "adamkit: Triton cannot be imported, so CUDA parameters step on the eager kernel: "
        "several launches per tensor where the fused kernel makes one per group. "
        "Install Triton (pip install triton) for the fused CUDA kernel.",
        RuntimeWarning,
        stacklevel=7,  # the user's step(): through prepare_group, dispatch, RuleOptimizer.step and torch's hook wrapper
    )


# ptxas -v for sm_90a: with 4 warps a block of 2048 takes 255 registers per thread and
# spills (fp32 Adam, 272 bytes); with 8, Adam takes 161 (fp32), 232 (fp64) and 128 (int8
# state, half a block at a time), four-slot Adan 220 (bf16) and 216 (int8), no spills
# (tests/test_fused_cuda.py checks it).
NUM_WARPS = 8


def piece_for(slot_dtypes) -> int:
    """Elements a program steps at once: a whole block, or half of one where a slot is
    int8 (coding a slot holds its values, their ratios and their rounding noise at once:
    ptxas -v, sm_90a, Adan with stochastically rounded int8 state spilled 132 bytes
    with whole blocks)."""
    return BLOCK // 2 if torch.int8 in slot_dtypes else BLOCK


class _PassUnusable(Exception):
    """Triton could not compile or load the pass for ``device``."""

    def __init__(self, device: torch.device, error: Exception) -> None:
        super().__init__(device, error)
        self.device, self.error = device, error


def _describe(device: torch.device) -> str:
    if device.type != "cuda":
        return str(device)
    major, minor = torch.cuda.get_device_capability(device)
    return f"{device} ({torch.cuda.get_device_name(device)}, compute capability {major}.{minor})"


def _on_device(device: torch.device):
    """``device`` made the current CUDA device for the block (nothing for other devices)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _triton_dtype(dtype: torch.dtype):
    if not _TRITON_DTYPES:
        import triton.language as tl

        _TRITON_DTYPES.update({
            torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
            torch.int8: tl.int8,
        })
    return _TRITON_DTYPES[dtype]


def _upload(values: np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``values`` on ``device`` without waiting for it: through pinned memory, whose
    block torch's caching host allocator keeps until the copy has run."""
    host = torch.from_numpy(values).to(dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


class _Tables:
    """A plan's tables on its device."""

    def __init__(self, plan: FusedPlan, addresses: tuple[np.ndarray, np.ndarray]) -> None:
        device = plan.device
        rows = np.zeros((ROWS, len(plan.params)), np.int64)
        rows[0], rows[1] = addresses
        for row, slot in enumerate(plan.slots + plan.scales, start=2):
            if slot is not None:
                rows[row] = slot
        self.grad_addresses = addresses[1]
        self.addresses = _upload(rows.reshape(-1), device, torch.int64)
        self.elements = _upload(plan.elements, device, torch.int64)
        self.block_tensor = _upload(plan.items.astype(np.int32), device, torch.int32)
        self.block_start = _upload(plan.starts, device, torch.int64)
        self.tensor_ids = _upload(plan.tensor_ids, device, torch.int64)
        self.codebook = _upload(CODE_VALUES, device, torch.float32)
        self.flags = torch.zeros(2 * len(plan.params), dtype=torch.int32, device=device)
        self.flags_on_host: Tensor | None = None
        self.flags_ready: torch.cuda.Event | None = None
        self.compiled: set[bool] = set()  # the WATCH constants compiled and loaded for this plan
        self.plan_items, self.plan_starts = plan.items, plan.starts
        self.partitions: dict[bytes, tuple[Tensor, Tensor]] = {}

    def blocks_of(self, chosen: np.ndarray) -> tuple[Tensor, Tensor]:
        """The block tables of the ``chosen`` blocks (a mask over the plan's blocks),
        uploaded once: parameters whose step counts differ keep differing the same way."""
        key = np.packbits(chosen).tobytes()
        tables = self.partitions.get(key)
        if tables is None:
            if len(self.partitions) >= MAX_PARTITIONS:
                self.partitions.clear()
            indices = np.flatnonzero(chosen)
            tables = self.partitions[key] = (
                _upload(self.plan_items[indices].astype(np.int32), self.elements.device, torch.int32),
                _upload(self.plan_starts[indices], self.elements.device, torch.int64),
            )
        return tables

    def follow_grads(self, grad_addresses: np.ndarray) -> None:
        """Gradients at new addresses (new tensors after ``zero_grad(set_to_none=True)``,
        when the allocator does not hand out the same blocks): upload that row."""
        if not np.array_equal(grad_addresses, self.grad_addresses):
            count = len(grad_addresses)
            self.addresses[count : 2 * count].copy_(_upload(grad_addresses, self.addresses.device, torch.int64), non_blocking=True)
            self.grad_addresses = grad_addresses


def _compile_ahead(fused_pass, device: torch.device, arguments: tuple, constants: Mapping) -> None:
    """Compile the pass for these arguments (specialized as a launch would be) and load it
    on ``device``, launching nothing; any failure raises ``_PassUnusable``."""
    try:
        with _on_device(device):
            kernel = fused_pass.warmup(*arguments, grid=(1,), **constants)
            if hasattr(kernel, "_init_handles"):  # loading can fail too (not enough shared memory)
                kernel._init_handles()
    except Exception as error:  # noqa: BLE001 - whatever Triton raises, the eager kernel can step these parameters
        raise _PassUnusable(device, error) from error


class FusedCudaKernel(FusedKernel):
    """The default kernel for CUDA tensors (see the module's documentation)."""

    name = "fused_cuda"
    device_type = "cuda"
    item_elements = BLOCK

    @classmethod
    def supports(cls, t: Tensor) -> bool:
        return super().supports(t) and triton_available() and t.device not in _unusable

    def prepare_group(self, rule: Rule, group_key: int, params: list[Tensor], *args, **kwargs):
        if params and not triton_available():
            _warn_without_triton()
        while True:  # once more for each device whose pass fails: its parameters go to the eager kernel
            try:
                return super().prepare_group(rule, group_key, params, *args, **kwargs)
            except _PassUnusable as failure:
                self._layouts.pop(group_key, None)
                reason = f"{type(failure.error).__name__}: {failure.error}".strip()
                _unusable[failure.device] = reason
                warnings.warn(
                    f"adamkit: Triton could not compile or load the fused CUDA kernel for "
                    f"{_describe(failure.device)}, so its parameters step on the eager kernel from now on "
                    f"(correct, but several launches per tensor). The error: {reason[:2000]}",
                    RuntimeWarning,
                    stacklevel=6,  # the user's step(): through dispatch, RuleOptimizer.step and torch's hook wrapper
                )

    def prepare_launch(
        self, rule: Rule, plan: FusedPlan, addresses: tuple[np.ndarray, np.ndarray], hp: Mapping, spec: StateSpec,
        *, decoupled_weight_decay: bool, report_moved: bool,
    ) -> Launch:
        from adamkit.kernels.compile_cache import triton_loops_for
        from adamkit.kernels.fused_cpu import coefficient_sets

        tables = plan.launch_data.get("tables")
        if tables is None:
            tables = plan.launch_data["tables"] = _Tables(plan, addresses)
        tables.follow_grads(addresses[1])
        dtype = storage_dtype(plan.dtype)
        compute = torch.float64 if dtype is torch.float64 else torch.float32
        transform = gradient_transform(hp, decoupled=decoupled_weight_decay, in_update=rule.decays_in_update, grad_scale=1.0)
        sets, advance = coefficient_sets(rule, plan, hp)
        loops = triton_loops_for(rule)
        slot_types = [None if dtype is None else _triton_dtype(dtype) for dtype in plan.slot_dtypes]
        passes = []  # (coefficients, their count, block tables, the rounding's step)
        for step, chosen, c in sets:
            values = _upload(np.array([*map(float, c), *map(float, transform)]), plan.device, compute)
            if len(sets) == 1:
                block_tensor, block_start = tables.block_tensor, tables.block_start
            else:  # parameters whose step counts differ (one added later) need their own coefficients
                block_tensor, block_start = tables.blocks_of(chosen[plan.items])
            passes.append((values, len(c), block_tensor, block_start, int(spec.rounds if step is None else step)))
        constants = dict(
            STORAGE=_triton_dtype(dtype), COMPUTE=_triton_dtype(compute),
            SLOT0=slot_types[0], SLOT1=slot_types[1], SLOT2=slot_types[2], SLOT3=slot_types[3],
            WATCH=report_moved, BLOCK=self.item_elements, PIECE=piece_for(plan.slot_dtypes),
            STOCHASTIC=plan.rounds_stochastically(spec),
            enable_fp_fusion=False, num_warps=NUM_WARPS,
        )

        def arguments(values, count, block_tensor, block_start, round_) -> tuple:
            return (
                tables.addresses, tables.elements, block_tensor, block_start, values, values[count:],
                tables.flags, len(plan.params), tables.tensor_ids,
                spec.seed & 0xFFFFFFFF, round_ & 0xFFFFFFFF, tables.codebook,
            )

        if report_moved not in tables.compiled:
            _compile_ahead(loops.fused_pass, plan.device, arguments(*passes[0]), constants)
            tables.compiled.add(report_moved)

        def launch(grad_scale: Tensor | None) -> list[Tensor]:
            moved = self._moved_last_time(plan, tables)
            advance()
            # Triton launches on the current device's current stream: the plan's device
            # must be current (parameters on cuda:1, or a model spread over GPUs).
            with _on_device(plan.device):
                if grad_scale is not None:  # device to device, in stream order: no wait for the host
                    for values, count, *_ in passes:
                        values[count + GradientTransform._fields.index("grad_scale")].copy_(grad_scale, non_blocking=True)
                if report_moved:
                    tables.flags.zero_()
                for step_pass in passes:
                    loops.fused_pass[(len(step_pass[2]),)](*arguments(*step_pass), **constants)
                if report_moved:
                    self._read_flags_later(tables)
            return moved

        return launch

    @staticmethod
    def _read_flags_later(tables: _Tables) -> None:
        if tables.flags.device.type != "cuda":
            tables.flags_on_host = tables.flags.clone()
            return
        tables.flags_on_host = torch.empty(tables.flags.shape, dtype=torch.int32, pin_memory=True)
        tables.flags_on_host.copy_(tables.flags, non_blocking=True)
        tables.flags_ready = torch.cuda.Event()
        tables.flags_ready.record()

    @staticmethod
    def _moved_last_time(plan: FusedPlan, tables: _Tables) -> list[Tensor]:
        """Parameters whose all-zero gradient did not keep them still in an earlier step,
        once that step's flags have reached the host (never waiting for them)."""
        if tables.flags_on_host is None or (tables.flags_ready is not None and not tables.flags_ready.query()):
            return []
        flags = tables.flags_on_host.numpy().reshape(-1, 2)
        tables.flags_on_host = None
        return [plan.params[i] for i in np.flatnonzero((flags[:, 0] == 0) & (flags[:, 1] != 0))]
