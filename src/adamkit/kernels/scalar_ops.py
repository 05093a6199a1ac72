"""``adamkit.rules.ops`` on single numbers, for rules compiled by numba.

Each operation rounds exactly as torch's CPU kernel for it does: ``lerp``,
``add_scaled`` and ``addcmul`` are one fused multiply-add (torch vectorizes them with
``fmadd``), everything else is a plain IEEE operation. ``sqrt`` is correctly rounded;
torch's CPU ``sqrt`` comes from MKL and is not (see docs/architecture.md).

Parameters and state may be stored in a narrower type than the one computed in:
``load`` and ``store`` move values between storage and compute types (bf16 and fp16
are computed in fp32, rounded to nearest even on the way back, as torch does).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype
from llvmlite import ir

from adamkit.rules import ops

# numba has no bf16 or fp16 arrays; their bits travel as 16-bit integers.
STORAGE_TYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.bfloat16: np.uint16,
    torch.float16: np.int16,
}
COMPUTE_TYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.bfloat16: np.float32, torch.float16: np.float32}


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@intrinsic
def pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to elements of ``like``'s dtype."""
    pointer_type = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(types.int64, like), codegen


@intrinsic
def _half_to_float(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def _float_to_half(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.int16(types.float32), codegen


@njit(inline="always")
def _bfloat16_bits(value):
    bits = np.uint32(np.float32(value).view(np.uint32))
    if value != value:
        return np.uint16(0x7FC0)
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


def load(pointer, index):
    """The element at ``index`` in its compute type."""


def store(pointer, index, value):
    """Round ``value`` to the storage type and write it at ``index``."""


@overload(load, inline="always")
def _load(pointer, index):
    dtype = pointer.dtype
    if dtype == types.uint16:
        return lambda pointer, index: np.uint32(np.uint32(pointer[index]) << np.uint32(16)).view(np.float32)
    if dtype == types.int16:
        return lambda pointer, index: _half_to_float(pointer[index])
    return lambda pointer, index: pointer[index]


@overload(store, inline="always")
def _store(pointer, index, value):
    dtype = pointer.dtype
    if dtype == types.uint16:
        def store_bfloat16(pointer, index, value):
            pointer[index] = _bfloat16_bits(value)
        return store_bfloat16
    if dtype == types.int16:
        def store_half(pointer, index, value):
            pointer[index] = _float_to_half(value)
        return store_half

    def store_native(pointer, index, value):
        pointer[index] = value
    return store_native


@overload(ops.lerp, inline="always")
def _lerp(start, end, weight):
    one = as_dtype(start).type(1)

    def lerp(start, end, weight):
        # torch's formula: the smaller of weight and 1 - weight multiplies the difference.
        if abs(weight) < 0.5:
            return fma(weight, end - start, start)
        return fma(weight - one, end - start, end)

    return lerp


@overload(ops.add_scaled, inline="always")
def _add_scaled(a, b, alpha):
    kind = as_dtype(a).type
    return lambda a, b, alpha: fma(b, kind(alpha), a)


@overload(ops.addcmul, inline="always")
def _addcmul(a, b, c, value):
    kind = as_dtype(a).type
    return lambda a, b, c, value: fma(kind(value) * b, c, a)


@overload(ops.addcdiv, inline="always")
def _addcdiv(a, b, c, value):
    kind = as_dtype(a).type
    return lambda a, b, c, value: a + kind(value) * b / c


@overload(ops.ema_square, inline="always")
def _ema_square(average, x, decay, weight):
    return lambda average, x, decay, weight: fma(weight * x, x, average * decay)


@overload(ops.sqrt, inline="always")
def _sqrt(x):
    return lambda x: np.sqrt(x)


@overload(ops.sign, inline="always")
def _sign(x):
    kind = as_dtype(x).type
    # torch.sign: 1, -1 or 0, and 0 for NaN.
    return lambda x: kind(x > 0) - kind(x < 0)


@overload(ops.maximum, inline="always")
def _maximum(a, b):
    def maximum(a, b):
        if a != a:
            return a
        if b != b:
            return b
        return b if b > a else a

    return maximum


@overload(ops.clone, inline="always")
def _clone(x):
    return lambda x: x
