"""State formats: the dtype a parameter's state is stored in, and how values get there.

``state_dtype`` on an optimizer chooses the format:

- ``None`` (the default): torch's, the parameter's own dtype.
- ``"fp32"``: fp32 state for bf16 and fp16 parameters (fp32 and fp64 ones keep theirs).
- ``"bf16"``: bf16 state, 2 bytes per value, written with stochastic rounding: a value
  is rounded up with probability equal to the part rounding down would drop, so the
  small changes of a slowly moving average are not lost on average. The random bits
  come from a counter-based hash of (seed, step, tensor, slot, element): the same seed
  gives the same bits on every machine, thread count and kernel.

Tensors with fewer than ``min_elements`` elements (4096 by default) keep fp32 state
whatever the format: they cost little memory, and biases and norms are among them.
Step counters are never narrowed. The rules never see a format: kernels load state
into the compute dtype and store it back through ``round_into``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

STATE_DTYPES = (None, "fp32", "bf16")
MIN_ELEMENTS = 4096


def check_state_dtype(state_dtype) -> None:
    """Raise a ValueError naming ``state_dtype`` if it is not a format adamkit has."""
    if state_dtype not in STATE_DTYPES:
        raise ValueError(
            f"Invalid state_dtype: {state_dtype!r}; choose one of {', '.join(map(repr, STATE_DTYPES))}"
        )


@dataclass(frozen=True)
class StateSpec:
    """What a parameter group's state is: the tensors a rule keeps, with their initial
    values (None: the rule makes it on its first step), the step counter's dtype (None:
    no counter), and the storage format with its rounding seed."""

    fills: Mapping[str, float | None]
    step_dtype: torch.dtype | None
    state_dtype: str | None = None
    min_elements: int = MIN_ELEMENTS
    seed: int = 0
    tensor_ids: Mapping[int, int] = field(default_factory=dict)  # id(param) -> its index in the optimizer
    rounds: int = 0  # steps the optimizer has taken: the rounding's step for rules that count none

    def storage_dtype(self, param: Tensor) -> torch.dtype:
        """The dtype ``param``'s state tensors are stored in."""
        dtype = param.dtype
        if self.state_dtype is None or dtype.is_complex:
            return dtype
        wide = torch.float64 if dtype is torch.float64 else torch.float32
        if self.state_dtype == "fp32" or param.numel() < self.min_elements:
            return wide
        return torch.bfloat16

    @property
    def stochastic(self) -> bool:
        """Whether bf16 state is written with stochastic rounding (only the "bf16" format;
        bf16 parameters' own state, torch's format, is rounded to nearest)."""
        return self.state_dtype == "bf16"


def _mix32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def noise_key(seed: int, round_: int, tensor: int, slot: int) -> np.uint32:
    """As ``adamkit.kernels.scalar_ops.noise_key``, on the host."""
    with np.errstate(over="ignore"):
        inner = np.uint32(round_ & 0xFFFFFFFF) + np.uint32(0x9E3779B9) * np.uint32((tensor * 3 + slot + 1) & 0xFFFFFFFF)
        return _mix32(np.uint32(seed & 0xFFFFFFFF) ^ _mix32(np.uint32(inner)))


def stochastic_bfloat16(values: Tensor, key: np.uint32, offset: int = 0) -> Tensor:
    """``values`` (fp32, contiguous) rounded stochastically to bf16 under ``key``, element
    i drawing its bits at index ``offset + i``, as the fused kernels do."""
    bits = values.detach().float().cpu().contiguous().view(torch.int32).numpy().view(np.uint32).reshape(-1)
    index = np.arange(offset, offset + bits.size, dtype=np.uint64).astype(np.uint32)
    with np.errstate(over="ignore"):
        noise = _mix32(key ^ (index * np.uint32(0x9E3779B1))) >> np.uint32(16)
        special = (bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
        rounded = np.where(special, bits, bits + noise) >> np.uint32(16)
    nan = np.isnan(bits.view(np.float32))
    rounded = np.where(nan, np.uint32(0x7FC0), rounded).astype(np.uint16)
    return torch.from_numpy(rounded.view(np.int16)).view(torch.bfloat16).reshape(values.shape).to(values.device)
