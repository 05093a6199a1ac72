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
  bytes per parameter for Adam. A block's scale is its largest finite magnitude; its
  sign bit says which code the block uses: unsigned if no value is negative (second
  moments, sums of squares), signed otherwise. A code stands for a ratio to the scale,
  counted down from it in steps that are finer near the scale, where most of a block's
  values lie: within 1.6% in the top octave (both codes) and the next (unsigned), 3.1%
  in the octaves after (two signed, one unsigned), 6.25% below, down to 2^-24.4 of the
  scale unsigned and 2^-10.5 signed; smaller values are 0. So a first moment of g never
  codes as nonzero where its second moment of g^2 codes as 0 (each ratio squared stays
  above 2^-21.1). NaN and infinities have codes of their own and take no part in the
  scale, and a value of 2^64 or more (whose square overflows fp32) is stored as an
  infinity: one non-finite or overflowing value changes only its own element. A value
  between two steps is rounded stochastically to one of them, keyed as bf16's rounding
  is: rounded to the nearest, an average whose every increment is under half a step
  would never move. Codes are found with integer arithmetic on the ratio's bits (no
  logarithm), so every kernel gives the same codes; the block's largest value is always
  exact. The update itself runs in fp32. On bitsandbytes' 8-bit optimizer test (50 Adam
  steps) the error is 2.68% of the distance moved (1.90% rounded to nearest;
  bitsandbytes' dynamic code, rounded to nearest: 1.97%): a stochastic code is off by up
  to a step where a nearest one is off by half, and in exchange is right on average.

Tensors with fewer than ``min_elements`` elements (4096 by default) keep fp32 state
whatever the format: they cost little memory, and biases and norms are among them.
Step counters are never narrowed. The rules never see a format: kernels load state
into the compute dtype and store it back in their format (``adamkit.kernels.scalar_ops``,
``triton_ops``; ``quantize`` and ``stochastic_bfloat16`` here for the eager kernel).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from adamkit.state.layout import is_dense, memory_order

STATE_DTYPES = (None, "fp32", "bf16", "int8")
MIN_ELEMENTS = 4096
BLOCK = 256
SCALE_SUFFIX = ".scale"  # an int8 slot's block scales live in the state under "<slot>.scale"

# int8 codes. A block's values are coded as ratios r = |value| / scale in (0, 1], the
# scale being the block's largest finite magnitude, counted down from it in steps t
# (t = 0 is r = 1). Octave e (r in [2^-(e+1), 2^-e]) holds 2^M steps, evenly spaced in r
# (r = 2^-(e+1) (1 + j / 2^M)), M given per octave from the top: finer near the scale,
# where most of a block's values lie, then TAIL_BITS per octave.
UNSIGNED_MANTISSA_BITS = (5, 5, 4)
SIGNED_MANTISSA_BITS = (5, 4, 4)
TAIL_BITS = 3
# Unsigned code n = 255 - t for t < UNSIGNED_STEPS (n >= 3); 0 is zero, 1 NaN, 2 +inf.
# Signed code c = +-(127 - t) for t < SIGNED_STEPS (|c| >= 2); 0 is zero, +-1 +-inf, -128 NaN.
UNSIGNED_STEPS, SIGNED_STEPS = 253, 126
UNSIGNED_NAN, UNSIGNED_INF, SIGNED_NAN, SIGNED_INF = 1, 2, -128, 1
# A value this large is stored as an infinity: its square overflows fp32, so it is
# damage already (Adam's v is infinite there), and as a scale it would flush the rest
# of its block to 0.
OVERFLOW = 2.0**64
OVERFLOW_BITS = 0x5F800000  # the bits of OVERFLOW in fp32


class StepRegion(NamedTuple):
    """Consecutive octaves with the same number of steps: there a step's ratio is linear
    in its bits, ``bits(t) = origin - (t << shift)``, for t from ``first_step``, and the
    ratios with bits of at least ``lowest_bits`` belong to it."""

    first_step: int
    lowest_bits: int
    shift: int
    origin: int


def step_regions(mantissa_bits: tuple[int, ...]) -> tuple[StepRegion, ...]:
    """The regions of a code with ``mantissa_bits`` per octave from the top, then ``TAIL_BITS``.

    >>> [region.shift for region in step_regions(SIGNED_MANTISSA_BITS)]
    [18, 19, 20]
    """
    widths = list(mantissa_bits) + [TAIL_BITS]
    regions, step, octave = [], 0, 0
    while octave < len(widths):
        width = widths[octave]
        end = octave + 1
        while end < len(mantissa_bits) and widths[end] == width:
            end += 1
        last = octave == len(mantissa_bits)
        shift = 23 - width
        regions.append(StepRegion(step, 0 if last else (127 - end) << 23, shift, ((127 - octave) << 23) + (step << shift)))
        step += (end - octave) << width
        octave = end
    return tuple(regions)


def step_ratio(t: int, mantissa_bits: tuple[int, ...]) -> float:
    """The ratio step ``t`` stands for (exact in fp32)."""
    region = [r for r in step_regions(mantissa_bits) if r.first_step <= t][-1]
    return float(np.array(region.origin - (t << region.shift), np.int32).view(np.float32))


def _code_values() -> np.ndarray:
    unsigned = np.zeros(256, np.float32)
    unsigned[UNSIGNED_NAN], unsigned[UNSIGNED_INF] = np.nan, np.inf
    for t in range(UNSIGNED_STEPS):
        unsigned[255 - t] = step_ratio(t, UNSIGNED_MANTISSA_BITS)
    signed = np.zeros(256, np.float32)  # by code & 255
    signed[SIGNED_NAN & 255], signed[SIGNED_INF], signed[-SIGNED_INF & 255] = np.nan, np.inf, -np.inf
    for t in range(SIGNED_STEPS):
        signed[127 - t] = step_ratio(t, SIGNED_MANTISSA_BITS)
        signed[-(127 - t) & 255] = -step_ratio(t, SIGNED_MANTISSA_BITS)
    return np.concatenate([unsigned, signed])


# The value of each code for a scale of 1, by ``code & 255``: the unsigned code's, then the signed code's.
CODE_VALUES = _code_values()


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
    no counter), the rule's scalar state with its initial values (0-dim tensors of the
    counter's dtype, never formatted), and the storage format with its rounding seed."""

    fills: Mapping[str, float | None]
    step_dtype: torch.dtype | None
    state_dtype: str | None = None
    min_elements: int = MIN_ELEMENTS
    seed: int = 0
    tensor_ids: Mapping[int, int] = field(default_factory=dict)  # id(param) -> its index in the optimizer
    rounds: int = 0  # steps the optimizer has taken: the rounding's step for rules that count none
    scalar_fills: Mapping[str, float] = field(default_factory=dict)  # the rule's scalar state (Rule.scalar_state)
    wide_slots: frozenset[str] = frozenset()  # kept in fp32 (fp64) whatever the format (Rule.full_precision_slots)

    def storage_dtype(self, param: Tensor, name: str | None = None) -> torch.dtype:
        """The dtype ``param``'s state tensor ``name`` is stored in."""
        dtype = param.dtype
        if self.state_dtype is None or dtype.is_complex:
            return dtype
        wide = torch.float64 if dtype is torch.float64 else torch.float32
        if self.state_dtype == "fp32" or param.numel() < self.min_elements or name in self.wide_slots:
            return wide
        return torch.int8 if self.state_dtype == "int8" else torch.bfloat16

    @property
    def stochastic(self) -> bool:
        """Whether bf16 and int8 state is written with stochastic rounding (only the "bf16"
        and "int8" formats; bf16 parameters' own state, torch's format, is rounded to nearest)."""
        return self.state_dtype in ("bf16", "int8")


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


def element_noise(key: np.uint32, offset: int, count: int, slot: int) -> np.ndarray:
    """The 16 random bits (uint32) that elements ``offset`` ... ``offset + count - 1`` of
    state slot ``slot`` draw under ``key``: the low half of the element's hash for an even
    slot, the high half for an odd one, as ``adamkit.kernels.scalar_ops.element_noise``."""
    index = np.arange(offset, offset + count, dtype=np.uint64).astype(np.uint32)
    with np.errstate(over="ignore"):
        return (_mix32(key ^ index) >> np.uint32(16 * (slot & 1))) & np.uint32(0xFFFF)


def stochastic_bfloat16(
    values: Tensor, key: np.uint32, offset: int = 0, slot: int = 0, like: Tensor | None = None
) -> Tensor:
    """``values``, state slot ``slot``, rounded stochastically to bf16 under ``key``,
    as the fused kernels do: the element i-th in memory order (of ``like``, the state
    tensor they go to, when given) draws its bits at index ``offset + i``. fp64 values
    are rounded to fp32 first. Adding 16 random bits below bf16's last bit never turns an
    infinity into a NaN; NaNs become the canonical one."""
    values = laid_out_like(values.detach(), like)
    ordered = memory_order(values) if is_dense(values) else values.reshape(-1)
    bits = ordered.float().cpu().contiguous().view(torch.int32).numpy().view(np.uint32)
    with np.errstate(over="ignore"):
        rounded = (bits + element_noise(key, offset, bits.size, slot)) >> np.uint32(16)
    nan = np.isnan(bits.view(np.float32))
    rounded = np.where(nan, np.uint32(0x7FC0), rounded).astype(np.uint16)
    result = torch.empty_like(values, dtype=torch.bfloat16)
    target = memory_order(result) if is_dense(values) else result.view(-1)
    target.copy_(torch.from_numpy(rounded.view(np.int16)).view(torch.bfloat16))
    return result


# An int8 code's rounding: 16 bits ``noise`` scaled to the step's width, the bits below
# filled with ones, are added to the ratio's distance from the step above before the
# distance is cut to whole steps. Random noise rounds a ratio to the smaller of its two
# steps with probability equal to its share of the distance between them (within 2^-16);
# NEAREST_NOISE rounds it to the nearer step, halves to the larger ratio.
NEAREST_NOISE = 0x7FFF


def _steps(ratios: Tensor, mantissa_bits: tuple[int, ...], noise: Tensor | int) -> Tensor:
    """Steps t (int32) of fp32 ratios in [0, 1], rounded with ``noise`` (see NEAREST_NOISE)."""
    bits = ratios.view(torch.int32)
    regions = step_regions(mantissa_bits)
    origin, shift = torch.full_like(bits, regions[-1].origin), torch.full_like(bits, regions[-1].shift)
    for region in reversed(regions[:-1]):
        inside = bits >= region.lowest_bits
        origin = torch.where(inside, region.origin, origin)
        shift = torch.where(inside, region.shift, shift)
    return (origin - bits + ((noise << (shift - 16)) | ((1 << (shift - 16)) - 1))) >> shift


def _ratio_codes(ratios: Tensor, signed: Tensor, noise: Tensor | int) -> Tensor:
    """Codes (int32) of ratios in [0, 1] (fp32), unsigned or, where ``signed``, signed
    magnitudes (0 where the ratio is 0, NaN or below the smallest step)."""
    unsigned_steps = _steps(ratios, UNSIGNED_MANTISSA_BITS, noise)
    signed_steps = _steps(ratios, SIGNED_MANTISSA_BITS, noise)
    codes = torch.where(signed, 127 - signed_steps, 255 - unsigned_steps)
    kept = torch.where(signed, signed_steps < SIGNED_STEPS, unsigned_steps < UNSIGNED_STEPS) & (ratios > 0)
    return torch.where(kept, codes, 0)


def blocks_of(t: Tensor) -> int:
    """How many int8 blocks, and so scales, ``t``'s state has."""
    return -(-t.numel() // BLOCK)


def constant_codes(fill: float) -> int:
    """The code of every value in a block whose values all equal ``fill`` (its scale is ``fill``)."""
    return 0 if fill == 0 else (-1 if fill > 0 else -127)  # unsigned 255, stored as int8; or signed -127


def laid_out_like(values: Tensor, like: Tensor | None) -> Tensor:
    """``values`` with ``like``'s strides (a copy where they differ), so that both walk
    memory alike; ``values`` itself without ``like`` or where ``like`` is not dense."""
    if like is None or values.stride() == like.stride() or not is_dense(like):
        return values
    return torch.empty_like(like, dtype=values.dtype).copy_(values)


def quantize(
    values: Tensor, like: Tensor | None = None, key: np.uint32 | None = None, offset: int = 0, slot: int = 0
) -> tuple[Tensor, Tensor]:
    """``values`` (dense, any shape and strides) as int8 codes of the same shape and
    strides, or of ``like``'s, and one fp32 scale per block of 256 in the codes' memory
    order, as kernels store them. A block's scale is its largest magnitude under
    ``OVERFLOW``, negative (sign bit set) if a value is negative; NaN, infinities and
    values of ``OVERFLOW`` or more (stored as infinities) get codes of their own, so
    they spoil no other value of their block. Codes are rounded to the nearest step, or
    with ``key`` stochastically, as the fused kernels round state slot ``slot``: the
    element i-th in memory order draws its bits at index ``offset + i``."""
    values = laid_out_like(values, like)
    flat = memory_order(values.detach()).float()
    blocks = -(-flat.numel() // BLOCK)
    noise = NEAREST_NOISE
    if key is not None:
        drawn = torch.from_numpy(element_noise(key, offset, flat.numel(), slot).astype(np.int32))
        noise = torch.full((blocks * BLOCK,), NEAREST_NOISE, dtype=torch.int32)
        noise[: flat.numel()] = drawn
        noise = noise.view(blocks, BLOCK).to(flat.device)
    padded = torch.zeros(blocks * BLOCK, dtype=torch.float32, device=flat.device)
    padded[: flat.numel()] = flat
    padded = padded.view(blocks, BLOCK)
    infinite = padded.abs() >= OVERFLOW
    magnitudes = torch.where(infinite | torch.isnan(padded), 0.0, padded.abs())
    absmax = magnitudes.amax(dim=1)
    signed = (padded < 0).any(dim=1)
    ratios = torch.where(absmax[:, None] > 0, magnitudes / absmax[:, None], torch.zeros_like(magnitudes))
    block_signed = signed[:, None].expand_as(ratios)
    codes = _ratio_codes(ratios, block_signed, noise)
    codes = torch.where(block_signed & (padded < 0), -codes, codes)
    infinity = torch.where(block_signed, torch.where(padded < 0, -SIGNED_INF, SIGNED_INF), UNSIGNED_INF)
    codes = torch.where(infinite, infinity, codes)
    codes = torch.where(torch.isnan(padded), torch.where(block_signed, SIGNED_NAN, UNSIGNED_NAN), codes)
    codes = codes.to(torch.int16).to(torch.uint8).view(torch.int8).reshape(-1)[: flat.numel()]
    stored = torch.empty_like(values, dtype=torch.int8)
    memory_order(stored).copy_(codes)
    return stored, torch.where(signed, -absmax, absmax)


def dequantize(codes: Tensor, scales: Tensor) -> Tensor:
    """fp32 values, shaped and laid out like ``codes``, from ``quantize``'s codes and scales."""
    flat = memory_order(codes)
    block_scales = scales.repeat_interleave(BLOCK)[: flat.numel()]
    index = flat.view(torch.uint8).long() + 256 * torch.signbit(block_scales)
    ratios = torch.from_numpy(CODE_VALUES).to(flat.device)[index]
    values = torch.empty_like(codes, dtype=torch.float32)
    memory_order(values).copy_(torch.where(torch.isfinite(ratios), ratios * block_scales.abs(), ratios))
    return values


def recode(codes: Tensor, scales: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """int8 state (``codes``, ``scales``) coded again in ``like``'s layout: its blocks
    follow memory order, so a copy laid out otherwise has other blocks."""
    return quantize(dequantize(codes, scales), like=like)


def decoded(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A parameter's state as values: int8 codes decoded with their block scales (fp32,
    the scales left out), every other entry as it is. Works on any optimizer's state.

    >>> codes, scales = quantize(torch.tensor([0.5, -1.0]))
    >>> decoded({"exp_avg": codes, "exp_avg.scale": scales})
    {'exp_avg': tensor([ 0.5000, -1.0000])}
    """
    values = {}
    for name, value in state.items():
        if name.endswith(SCALE_SUFFIX) and torch.is_tensor(state.get(name.removesuffix(SCALE_SUFFIX))):
            continue
        if torch.is_tensor(value) and value.dtype is torch.int8 and name + SCALE_SUFFIX in state:
            local = value.to_local() if hasattr(value, "to_local") else value
            value = dequantize(local, state[name + SCALE_SUFFIX])
        values[name] = value
    return values
