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
