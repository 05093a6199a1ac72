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
def sign(x):
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


@triton.jit
def maximum(a, b):
    return tl.where(a != a, a, tl.where(b != b, b, tl.where(b > a, b, a)))


@triton.jit
def clone(x):
    return x


@triton.jit
def to_storage(value, STORAGE: tl.constexpr):
    """``value`` (fp32 or fp64) in the storage dtype, rounded to nearest even. bf16 is
    rounded with integer arithmetic, as ``scalar_ops`` does on the CPU: the same on the
    GPU and in Triton's interpreter, whose own conversion truncates."""
    if STORAGE == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16)
        rounded = tl.where(value != value, tl.full(rounded.shape, 0x7FC0, tl.uint16), rounded)
        return rounded.to(tl.bfloat16, bitcast=True)
    return value.to(STORAGE)


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
def to_state(value, STORAGE: tl.constexpr, key, offsets, STOCHASTIC: tl.constexpr, SLOT: tl.constexpr):
    """``value``, state slot ``SLOT``, as stored: bf16 rounded stochastically under
    ``key`` (element i drawing the bits ``scalar_ops.store_state`` would) when
    ``STOCHASTIC``, else ``to_storage``."""
    if STOCHASTIC and STORAGE == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        noise = (_mix32(key ^ offsets.to(tl.uint32)) >> (16 * (SLOT % 2))) & 0xFFFF
        rounded = ((bits + noise) >> 16).to(tl.uint16)
        rounded = tl.where(value != value, tl.full(rounded.shape, 0x7FC0, tl.uint16), rounded)
        return rounded.to(tl.bfloat16, bitcast=True)
    return to_storage(value, STORAGE)


# int8 block state (adamkit.state.formats), as scalar_ops stores it on the CPU: codes,
# one fp32 scale per 256 values (negative for a signed block) and a codebook of the
# codes' values by ``code & 255``, unsigned then signed.
@triton.jit
def decode_int8(codes, scales, codebook):
    """fp32 values of ``codes`` (int8) in blocks with these ``scales`` (one per element)."""
    index = (codes.to(tl.int32) & 255) + 256 * (scales < 0).to(tl.int32)
    return tl.load(codebook + index) * tl.abs(scales)


@triton.jit
def encode_int8(values, mask, midpoints, BLOCK: tl.constexpr):
    """``(codes, scales)``: ``values`` (``BLOCK`` of them, 256-aligned) coded blockwise
    as ``scalar_ops.store_int8_block`` codes them; the elements outside ``mask`` are left
    out of each block's scale."""
    narrow = values.to(tl.float32)
    bits = narrow.to(tl.uint32, bitcast=True)
    magnitude_bits = tl.where(mask, bits & 0x7FFFFFFF, 0)
    negative = mask & (narrow < 0)
    # The largest magnitude as the largest bit pattern, a NaN's included, as on the CPU.
    largest = tl.max(tl.reshape(magnitude_bits, (BLOCK // 256, 256)), axis=1)
    signed = tl.max(tl.reshape(negative.to(tl.int32), (BLOCK // 256, 256)), axis=1)
    absmax = largest.to(tl.float32, bitcast=True)
    scales = tl.where(signed != 0, -absmax, absmax)

    element_absmax = tl.reshape(tl.broadcast_to(absmax[:, None], (BLOCK // 256, 256)), (BLOCK,))
    element_signed = tl.reshape(tl.broadcast_to(signed[:, None], (BLOCK // 256, 256)), (BLOCK,))
    # An all-zero block's ratios are 0 (the CPU's 0 / 0 gives NaN, coded 0 all the same).
    ratio = tl.div_rn(tl.abs(narrow), tl.where(element_absmax == 0, 1.0, element_absmax))
    ratio_bits = ratio.to(tl.int32, bitcast=True)
    mantissa = ratio_bits & 0x7FFFFF
    position = tl.sum((mantissa[:, None] >= tl.load(midpoints + tl.arange(0, 8))[None, :]).to(tl.int32), axis=1)
    code = 255 - 128 * element_signed + 8 * ((ratio_bits >> 23) - 127) + position
    code = tl.where((ratio > 0) & (code >= 1), code, 0)
    code = tl.where((element_signed != 0) & (narrow < 0), -code, code)
    return (code & 255).to(tl.uint8).to(tl.int8, bitcast=True), scales
