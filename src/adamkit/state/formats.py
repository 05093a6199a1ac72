"""State formats: the dtype a parameter's state is stored in, and how values get there.

``state_dtype`` on an optimizer chooses the format:

- ``None`` (the default): torch's, the parameter's own dtype.
- ``"fp32"``: fp32 state for bf16 and fp16 parameters (fp32 and fp64 ones keep theirs).
- ``"bf16"``: bf16 state, 2 bytes per value, written with stochastic rounding: a value
  is rounded up with probability equal to the part rounding down would drop, so the
  small changes of a slowly moving average are not lost on average. The random bits
  come from a counter-based hash of (seed, step, tensor, slot, element): the same seed
  gives the same bits on every machine, thread count and kernel. A rule's first two
  slots draw the two halves of one 32-bit hash per element, so one hash serves both.
- ``"int8"``: one byte per value plus one fp32 scale per block of 256 (``BLOCK``), 2.03
  bytes per parameter for Adam. A block's scale is its largest magnitude; its sign says
  which code the block uses: unsigned if no value is negative (second moments, sums of
  squares), signed otherwise. Codes are logarithmic, 8 per octave (each within 4.4% of
  the value it stands for), down to 2^-31.75 of the scale unsigned and 2^-15.75 signed;
  smaller values are 0. A value is coded by comparing its ratio to the scale with fixed
  midpoints, bit for bit (no logarithm), so every kernel gives the same codes; the
  block's largest value is always exact. The update itself runs in fp32.

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

STATE_DTYPES = (None, "fp32", "bf16", "int8")
MIN_ELEMENTS = 4096
BLOCK = 256
SCALE_SUFFIX = ".scale"  # an int8 slot's block scales live in the state under "<slot>.scale"

# Code n of the unsigned code is 2^((n - 255) / 8), code 0 is 0; code c of the signed
# code is sign(c) 2^((|c| - 127) / 8), code 0 is 0 (-128 is never written).
UNSIGNED_VALUES = np.array([0.0] + [2.0 ** ((n - 255) / 8) for n in range(1, 256)], np.float32)
SIGNED_VALUES = np.array([-1.0] + [np.sign(c) * 2.0 ** ((abs(c) - 127) / 8) if c else 0.0 for c in range(-127, 128)], np.float32)
# The value of each code, by ``code & 255``: the unsigned code's, then the signed code's.
CODE_VALUES = np.concatenate([UNSIGNED_VALUES, np.roll(SIGNED_VALUES, -128)])
# A ratio's place within its octave: how many of these mantissas (the midpoints between
# the octave's eight codes, 2^(j/8) and 2^((j+1)/8)) it reaches.
OCTAVE_MIDPOINTS = np.array(
    [int(np.float32((2 ** (j / 8) + 2 ** ((j + 1) / 8)) / 2).view(np.uint32)) & 0x7FFFFF for j in range(8)], np.int32
)


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
        return torch.int8 if self.state_dtype == "int8" else torch.bfloat16

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
        inner = np.uint32(round_ & 0xFFFFFFFF) + np.uint32(0x9E3779B9) * np.uint32((tensor * 2 + (slot >> 1) + 1) & 0xFFFFFFFF)
        return _mix32(np.uint32(seed & 0xFFFFFFFF) ^ _mix32(np.uint32(inner)))


def stochastic_bfloat16(values: Tensor, key: np.uint32, offset: int = 0, slot: int = 0) -> Tensor:
    """``values`` (fp32, contiguous), state slot ``slot``, rounded stochastically to bf16
    under ``key``, element i drawing its bits at index ``offset + i``, as the fused
    kernels do. Adding 16 random bits below bf16's last bit never turns an infinity into
    a NaN; NaNs become the canonical one."""
    bits = values.detach().float().cpu().contiguous().view(torch.int32).numpy().view(np.uint32).reshape(-1)
    index = np.arange(offset, offset + bits.size, dtype=np.uint64).astype(np.uint32)
    with np.errstate(over="ignore"):
        noise = (_mix32(key ^ index) >> np.uint32(16 * (slot & 1))) & np.uint32(0xFFFF)
        rounded = (bits + noise) >> np.uint32(16)
    nan = np.isnan(bits.view(np.float32))
    rounded = np.where(nan, np.uint32(0x7FC0), rounded).astype(np.uint16)
    return torch.from_numpy(rounded.view(np.int16)).view(torch.bfloat16).reshape(values.shape).to(values.device)


def _ratio_codes(ratios: Tensor, signed: Tensor) -> Tensor:
    """Codes (int32) of ratios in [0, 1] (fp32), unsigned or, where ``signed``, signed magnitudes."""
    bits = ratios.view(torch.int32)
    exponent = (bits >> 23) - 127
    position = (bits & 0x7FFFFF).unsqueeze(-1) >= torch.from_numpy(OCTAVE_MIDPOINTS).to(bits.device)
    steps = 8 * exponent + position.sum(-1, dtype=torch.int32)  # 0 for the scale itself, negative below
    top = torch.where(signed, 127, 255)
    codes = top + steps
    return torch.where((codes < 1) | ~(ratios > 0), 0, codes)


def memory_order(t: Tensor) -> Tensor:
    """A dense tensor's elements as a 1-D view in the order they lie in memory (the
    order kernels walk them, and int8 blocks follow)."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    return t.permute(order).reshape(-1)


def blocks_of(t: Tensor) -> int:
    """How many int8 blocks, and so scales, ``t``'s state has."""
    return -(-t.numel() // BLOCK)


def constant_codes(fill: float) -> int:
    """The code of every value in a block whose values all equal ``fill`` (its scale is ``fill``)."""
    return 0 if fill == 0 else (-1 if fill > 0 else -127)  # unsigned 255, stored as int8; or signed -127


def quantize(values: Tensor) -> tuple[Tensor, Tensor]:
    """``values`` (dense, any shape and strides) as int8 codes of the same shape and
    strides, and one fp32 scale per block of 256 in memory order, as kernels store them."""
    flat = memory_order(values.detach()).float()
    blocks = -(-flat.numel() // BLOCK)
    padded = torch.zeros(blocks * BLOCK, dtype=torch.float32, device=flat.device)
    padded[: flat.numel()] = flat
    padded = padded.view(blocks, BLOCK)
    magnitudes = padded.abs()
    absmax = magnitudes.amax(dim=1)
    signed = (padded < 0).any(dim=1)
    ratios = torch.where(absmax[:, None] > 0, magnitudes / absmax[:, None], torch.zeros_like(magnitudes))
    codes = _ratio_codes(ratios, signed[:, None].expand_as(ratios))
    codes = torch.where(signed[:, None] & (padded < 0), -codes, codes)
    codes = torch.where(torch.isnan(absmax)[:, None], 0, codes)
    codes = codes.to(torch.int16).to(torch.uint8).view(torch.int8).reshape(-1)[: flat.numel()]
    stored = torch.empty_like(values, dtype=torch.int8)
    memory_order(stored).copy_(codes)
    return stored, torch.where(signed, -absmax, absmax)


def dequantize(codes: Tensor, scales: Tensor) -> Tensor:
    """fp32 values, shaped and laid out like ``codes``, from ``quantize``'s codes and scales."""
    flat = memory_order(codes)
    block_scales = scales.repeat_interleave(BLOCK)[: flat.numel()]
    index = flat.view(torch.uint8).long() + 256 * (block_scales < 0)
    values = torch.empty_like(codes, dtype=torch.float32)
    memory_order(values).copy_(torch.from_numpy(CODE_VALUES).to(flat.device)[index] * block_scales.abs())
    return values
