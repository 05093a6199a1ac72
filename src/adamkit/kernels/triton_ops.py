"""``adamkit.rules.ops`` on blocks of values, for rules compiled by Triton.

The fused CUDA kernel runs a rule bound to this module (``adamkit.rules.bind``). Each
operation rounds as ``scalar_ops`` does on the CPU: ``lerp``, ``add_scaled``,
``addcmul`` and ``ema_square``'s last step are one fused multiply-add (``tl.fma``),
division and square root are the IEEE ones (``tl.div_rn``, ``tl.sqrt_rn``; Triton's
``/`` and ``tl.sqrt`` are approximate in fp32, IEEE in fp64), and kernels are compiled with
``enable_fp_fusion=False`` so that nothing else is contracted.
"""

import triton
import triton.language as tl

from adamkit.state.formats import (
    NEAREST_NOISE, OVERFLOW_BITS, SIGNED_INF, SIGNED_MANTISSA_BITS, SIGNED_NAN, SIGNED_STEPS, UNSIGNED_INF,
    UNSIGNED_MANTISSA_BITS, UNSIGNED_NAN, UNSIGNED_STEPS, step_regions,
)


@triton.jit
def lerp(start, end, weight):
    # torch's formula: the smaller of weight and 1 - weight multiplies the difference.
    difference = end - start
    return tl.where(tl.abs(weight) < 0.5, tl.fma(weight, difference, start), tl.fma(weight - 1, difference, end))


@triton.jit
def add_scaled(a, b, alpha):
    return tl.fma(b, alpha, a)


@triton.jit
def addcmul(a, b, c, value):
    return tl.fma(value * b, c, a)


@triton.jit
def addcdiv(a, b, c, value):
    return a + div(value * b, c)


@triton.jit
def div(a, b):
    if a.dtype == tl.float32:
        return tl.div_rn(a, b)
    return a / b  # fp64: Triton divides correctly rounded (div.rn.f64)


@triton.jit
def ema_square(average, x, decay, weight):
    return tl.fma(weight * x, x, average * decay)


@triton.jit
def sqrt(x):
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    return tl.sqrt(x)  # fp64: PTX has only the correctly rounded sqrt.rn.f64


@triton.jit
def reciprocal(x):
    return div(tl.full(x.shape, 1, x.dtype), x)


@triton.jit
def where(condition, a, b):
    return tl.where(condition, a, b)


@triton.jit
def sign(x):
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


@triton.jit
def absolute(x):
    return tl.abs(x)


@triton.jit
def maximum(a, b):
    return tl.where(a != a, a, tl.where(b != b, b, tl.where(b > a, b, a)))


@triton.jit
def clamp(x, low, high):
    raised = tl.where(x > low, x, low)
    return tl.where(x != x, x, tl.where(raised < high, raised, high))


@triton.jit
def clone(x):
    return x


@triton.jit
def to_storage(value, STORAGE: tl.constexpr):
    """``value`` (fp32 or fp64) in the storage dtype, rounded to nearest even. bf16 is
    rounded with integer arithmetic, as ``scalar_ops`` does on the CPU: the same on the
    GPU and in Triton's interpreter, whose own conversion truncates."""
    if STORAGE == tl.bfloat16:
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True)  # fp64 values: rounded to fp32 first, as on the CPU
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16)
        rounded = tl.where(value != value, tl.full(rounded.shape, 0x7FC0, tl.uint16), rounded)
        return rounded.to(tl.bfloat16, bitcast=True)
    return value.to(STORAGE)


@triton.jit
def from_storage(stored, COMPUTE: tl.constexpr):
    """A stored value in the compute dtype. bf16 is widened with integer arithmetic, exact
    as the GPU's conversion is: Triton's interpreter flushes bf16 subnormals (9.2e-41
    became 0, 3.0e-39 became 3.7e-40)."""
    if stored.dtype == tl.bfloat16:
        widened = stored.to(tl.uint16, bitcast=True).to(tl.uint32) << 16
        return widened.to(tl.float32, bitcast=True).to(COMPUTE)
    return stored.to(COMPUTE)


@triton.jit
def _mix32(x):
    # murmur3's 32-bit finalizer, as scalar_ops._mix32
    x ^= x >> 16
    x *= tl.full([], 0x85EBCA6B, tl.uint32)
    x ^= x >> 13
    x *= tl.full([], 0xC2B2AE35, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def noise_key(seed, round_, tensor, slot):
    """As ``scalar_ops.noise_key``: one state tensor's rounding key for one step."""
    which = tensor.to(tl.uint32) * tl.full([], 2, tl.uint32) + (slot >> 1) + 1
    inner = round_.to(tl.uint32) + tl.full([], 0x9E3779B9, tl.uint32) * which
    return _mix32(seed.to(tl.uint32) ^ _mix32(inner))


@triton.jit
def element_noise(key, offsets, STOCHASTIC: tl.constexpr, SLOT: tl.constexpr):
    """As ``scalar_ops.element_noise``: the elements' 16 random bits (uint32) for state
    slot ``SLOT`` when ``STOCHASTIC``, else the code of rounding to the nearest step."""
    if STOCHASTIC:
        return (_mix32(key ^ offsets.to(tl.uint32)) >> (16 * (SLOT % 2))) & 0xFFFF
    return tl.full(offsets.shape, _NEAREST_NOISE, tl.uint32)


@triton.jit
def to_state(value, STORAGE: tl.constexpr, key, offsets, STOCHASTIC: tl.constexpr, SLOT: tl.constexpr):
    """``value``, state slot ``SLOT``, as stored: bf16 rounded stochastically under
    ``key`` (element i drawing the bits ``scalar_ops.store_state`` would) when
    ``STOCHASTIC``, else ``to_storage``."""
    if STOCHASTIC and STORAGE == tl.bfloat16:
        bits = value.to(tl.float32).to(tl.uint32, bitcast=True)
        noise = element_noise(key, offsets, STOCHASTIC, SLOT)
        rounded = ((bits + noise) >> 16).to(tl.uint16)
        rounded = tl.where(value != value, tl.full(rounded.shape, 0x7FC0, tl.uint16), rounded)
        return rounded.to(tl.bfloat16, bitcast=True)
    return to_storage(value, STORAGE)


# int8 block state (adamkit.state.formats), as scalar_ops stores it on the CPU: codes,
# one fp32 scale per 256 values (sign bit set for a signed block) and a codebook of the
# codes' values for a scale of 1, by ``code & 255``, unsigned then signed.
_UNSIGNED_REGIONS, _SIGNED_REGIONS = step_regions(UNSIGNED_MANTISSA_BITS), step_regions(SIGNED_MANTISSA_BITS)
assert len(_UNSIGNED_REGIONS) == len(_SIGNED_REGIONS) == 3  # the selects below
_U_LOW1, _U_LOW0 = tl.constexpr(_UNSIGNED_REGIONS[1].lowest_bits), tl.constexpr(_UNSIGNED_REGIONS[0].lowest_bits)
_S_LOW1, _S_LOW0 = tl.constexpr(_SIGNED_REGIONS[1].lowest_bits), tl.constexpr(_SIGNED_REGIONS[0].lowest_bits)
_U_ORIGIN0, _U_ORIGIN1, _U_ORIGIN2 = (tl.constexpr(r.origin) for r in _UNSIGNED_REGIONS)
_S_ORIGIN0, _S_ORIGIN1, _S_ORIGIN2 = (tl.constexpr(r.origin) for r in _SIGNED_REGIONS)
_U_SHIFT0, _U_SHIFT1, _U_SHIFT2 = (tl.constexpr(r.shift) for r in _UNSIGNED_REGIONS)
_S_SHIFT0, _S_SHIFT1, _S_SHIFT2 = (tl.constexpr(r.shift) for r in _SIGNED_REGIONS)
_U_STEPS, _S_STEPS = tl.constexpr(UNSIGNED_STEPS), tl.constexpr(SIGNED_STEPS)
_U_NAN, _U_INF, _S_NAN, _S_INF = (tl.constexpr(code) for code in (UNSIGNED_NAN, UNSIGNED_INF, SIGNED_NAN, SIGNED_INF))
_OVERFLOW_BITS = tl.constexpr(OVERFLOW_BITS)
_NEAREST_NOISE = tl.constexpr(NEAREST_NOISE)


@triton.jit
def decode_int8(codes, scales, codebook):
    """fp32 values of ``codes`` (int8) in blocks with these ``scales`` (one per element)."""
    signed = scales.to(tl.int32, bitcast=True) < 0
    index = (codes.to(tl.int32) & 255) + 256 * signed.to(tl.int32)
    ratio = tl.load(codebook + index)
    finite = ratio - ratio == 0
    return tl.where(finite, ratio * tl.abs(scales), ratio)


@triton.jit
def encode_int8(values, mask, offsets, key, STOCHASTIC: tl.constexpr, SLOT: tl.constexpr, BLOCK: tl.constexpr):
    """``(codes, scales)``: ``values`` (``BLOCK`` of them at ``offsets``, 256-aligned)
    coded blockwise as ``scalar_ops.store_int8_block`` codes them, rounded with
    ``element_noise(key, offsets, STOCHASTIC, SLOT)``; the elements outside ``mask`` are
    left out of each block's scale."""
    narrow = values.to(tl.float32)
    bits = narrow.to(tl.uint32, bitcast=True)
    magnitude_bits = bits & 0x7FFFFFFF
    kept = magnitude_bits < _OVERFLOW_BITS
    negative = mask & (narrow < 0)
    # The largest magnitude under OVERFLOW as the largest bit pattern, as on the CPU.
    largest = tl.max(tl.reshape(tl.where(mask & kept, magnitude_bits, 0), (BLOCK // 256, 256)), axis=1)
    signed = tl.max(tl.reshape(negative.to(tl.int32), (BLOCK // 256, 256)), axis=1)
    scales = (largest | (signed.to(tl.uint32) << 31)).to(tl.float32, bitcast=True)
    absmax = largest.to(tl.float32, bitcast=True)

    element_absmax = tl.reshape(tl.broadcast_to(absmax[:, None], (BLOCK // 256, 256)), (BLOCK,))
    is_signed = tl.reshape(tl.broadcast_to(signed[:, None], (BLOCK // 256, 256)), (BLOCK,)) != 0
    # An all-zero block's ratios are 0 (the CPU's 0 / 0 gives NaN, coded 0 all the same).
    ratio = tl.div_rn(magnitude_bits.to(tl.float32, bitcast=True), tl.where(element_absmax == 0, 1.0, element_absmax))
    ratio_bits = ratio.to(tl.int32, bitcast=True)
    # The step's region, from the bottom up (adamkit.state.formats.step_regions), then the step.
    top = ratio_bits >= tl.where(is_signed, _S_LOW0, _U_LOW0)
    middle = ratio_bits >= tl.where(is_signed, _S_LOW1, _U_LOW1)
    origin = tl.where(top, tl.where(is_signed, _S_ORIGIN0, _U_ORIGIN0),
                      tl.where(middle, tl.where(is_signed, _S_ORIGIN1, _U_ORIGIN1), tl.where(is_signed, _S_ORIGIN2, _U_ORIGIN2)))
    shift = tl.where(top, tl.where(is_signed, _S_SHIFT0, _U_SHIFT0),
                     tl.where(middle, tl.where(is_signed, _S_SHIFT1, _U_SHIFT1), tl.where(is_signed, _S_SHIFT2, _U_SHIFT2)))
    width = shift - 16
    noise = element_noise(key, offsets, STOCHASTIC, SLOT).to(tl.int32)  # drawn late: fewer registers held
    steps = (origin - ratio_bits + ((noise << width) | ((1 << width) - 1))) >> shift
    kept = (ratio > 0) & (steps < tl.where(is_signed, _S_STEPS, _U_STEPS))
    code = tl.where(kept, tl.where(is_signed, 127, 255) - steps, 0)
    code = tl.where(is_signed & (narrow < 0), -code, code)
    infinity = tl.where(is_signed, tl.where(narrow < 0, -_S_INF, _S_INF), _U_INF)
    code = tl.where((magnitude_bits >= _OVERFLOW_BITS) & (magnitude_bits <= 0x7F800000), infinity, code)
    code = tl.where(magnitude_bits > 0x7F800000, tl.where(is_signed, _S_NAN, _U_NAN), code)
    return (code & 255).to(tl.uint8).to(tl.int8, bitcast=True), scales
