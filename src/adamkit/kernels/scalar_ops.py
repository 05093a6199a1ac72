"""``adamkit.rules.ops`` on single numbers, for rules compiled by numba.

The fused CPU kernel runs a rule bound to this module (``adamkit.rules.bind``): each
name of ``ops.__all__`` is here as a stub that numba replaces with the implementation
registered by ``@overload``. Every operation is correctly rounded: ``lerp``,
``add_scaled``, ``addcmul`` and ``ema_square``'s last step are one fused multiply-add
(as torch's vectorized CPU kernels compute them), everything else is a plain IEEE
operation, ``sqrt`` included (the processor's instruction; torch's CPU ``sqrt`` comes
from MKL or SLEEF and is not correctly rounded). numba compiles without fast-math, so
LLVM neither reorders nor contracts anything: the bits do not depend on the CPU.

Parameters and state may be stored in a narrower type than the one computed in:
``load`` and ``store`` move values between storage and compute types (bf16 and fp16
are computed in fp32, rounded to nearest even on the way back, as torch does).

The ``@overload`` implementations compile as functions of their own, which LLVM
inlines into the loop before vectorizing it. numba's ``inline="always"`` gives the same
loop but types each implementation again at every call site: it was two thirds of a
first step's compile (4.9 s of a cold Lion step, 2.7 s without it).
"""

from __future__ import annotations

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from adamkit.state.formats import (
    NEAREST_NOISE, OVERFLOW_BITS, SIGNED_INF, SIGNED_MANTISSA_BITS, SIGNED_NAN, SIGNED_STEPS, UNSIGNED_INF,
    UNSIGNED_MANTISSA_BITS, UNSIGNED_NAN, UNSIGNED_STEPS, step_regions,
)


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
def _select(typingctx, condition, a, b):
    """``a`` if ``condition`` else ``b``, without a branch (LLVM's ``select``), which the
    loop vectorizer takes as it is."""
    if not (isinstance(condition, types.Boolean) and isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        return builder.select(*args)

    return a(condition, a, b), codegen


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


@intrinsic
def _float_bits(typingctx, value):
    """The bits of an fp32 value (a register bitcast, which the vectorizer keeps)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _bits_float(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _element_hash(typingctx, key, index):
    """32 random bits for element ``index`` under ``key``: ``key ^ index`` through
    murmur3's 32-bit finalizer, in 32-bit integer operations (numba would widen them to 64)."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        x = builder.xor(args[0], builder.trunc(args[1], i32))
        x = builder.xor(x, builder.lshr(x, ir.Constant(i32, 16)))
        x = builder.mul(x, ir.Constant(i32, 0x85EBCA6B))
        x = builder.xor(x, builder.lshr(x, ir.Constant(i32, 13)))
        x = builder.mul(x, ir.Constant(i32, 0xC2B2AE35))
        return builder.xor(x, builder.lshr(x, ir.Constant(i32, 16)))

    return types.uint32(types.uint32, types.int64), codegen


@njit
def _bfloat16_bits(value):
    bits = _float_bits(np.float32(value))
    nan = np.uint32(value != value)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.uint16(rounded + nan * (np.uint32(0x7FC0) - rounded))


@njit
def _mix32(x):
    """murmur3's 32-bit finalizer: every input bit flips about half the output bits."""
    x = np.uint32(x)
    x ^= x >> np.uint32(16)
    x = np.uint32(x * np.uint32(0x85EBCA6B))
    x ^= x >> np.uint32(13)
    x = np.uint32(x * np.uint32(0xC2B2AE35))
    return x ^ (x >> np.uint32(16))


@njit
def noise_key(seed, round_, tensor, slot):
    """A 32-bit key for one state tensor's stochastic rounding in one step: the same
    for the same seed, step (``round_``), tensor and slot, whatever runs the pass.
    Slots 0 and 1 get the same key: they draw the two halves of one hash (``store_state``),
    so a pass that computes the key once hashes each element once for both."""
    which = np.uint32(np.uint32(tensor) * np.uint32(2) + np.uint32(slot >> 1) + np.uint32(1))
    inner = np.uint32(np.uint32(round_) + np.uint32(0x9E3779B9) * which)
    return _mix32(np.uint32(seed) ^ _mix32(inner))


def load(pointer, index):
    """The element at ``index`` in its compute type."""


def store(pointer, index, value):
    """Round ``value`` to the storage type and write it at ``index``."""


def store_state(pointer, index, value, key, slot):
    """``store``, except that bf16 state is rounded stochastically under ``key`` (from
    ``noise_key``), drawing the low 16 bits of the element's hash for an even ``slot``,
    the high 16 for an odd one; with ``key`` None, or other storage types, as ``store``."""


def _load_bfloat16(pointer, index):
    return _bits_float(np.uint32(pointer[index]) << np.uint32(16))


def _load_half(pointer, index):
    return _half_to_float(pointer[index])


def _load_native(pointer, index):
    return pointer[index]


def _store_bfloat16(pointer, index, value):
    pointer[index] = _bfloat16_bits(value)


def _store_half(pointer, index, value):
    pointer[index] = _float_to_half(value)


def _store_native(pointer, index, value):
    pointer[index] = value


@overload(load)
def _load(pointer, index):
    return {types.uint16: _load_bfloat16, types.int16: _load_half}.get(pointer.dtype, _load_native)


@overload(store)
def _store(pointer, index, value):
    return {types.uint16: _store_bfloat16, types.int16: _store_half}.get(pointer.dtype, _store_native)


def element_noise(key, index, slot):
    """The 16 random bits (uint32) element ``index`` of state slot ``slot`` draws under
    ``key``: the low half of its hash for an even slot, the high half for an odd one.
    With ``key`` None, ``NEAREST_NOISE``: int8 codes rounded to the nearest step."""


@overload(element_noise)
def _element_noise(key, index, slot):
    if isinstance(key, types.NoneType):
        return lambda key, index, slot: np.uint32(NEAREST_NOISE)
    return lambda key, index, slot: (_element_hash(key, index) >> np.uint32(16 * (slot & 1))) & np.uint32(0xFFFF)


def _store_bfloat16_stochastic(pointer, index, value, key, slot):
    # Round up with probability equal to the part truncation drops: unbiased. 16 bits
    # added below bf16's last bit leave an infinity as it is; every NaN becomes the
    # canonical one. Masks, not branches.
    bits = _float_bits(np.float32(value))
    rounded = np.uint32((bits + element_noise(key, index, slot)) >> np.uint32(16))
    nan = np.uint32(value != value)
    pointer[index] = np.uint16(rounded + nan * (np.uint32(0x7FC0) - rounded))


def _store_state_plainly(pointer, index, value, key, slot):
    store(pointer, index, value)


@overload(store_state)
def _store_state(pointer, index, value, key, slot):
    if pointer.dtype == types.uint16 and not isinstance(key, types.NoneType):
        return _store_bfloat16_stochastic
    return _store_state_plainly


# The operations of ``adamkit.rules.ops.__all__``, one stub each; rules bound to this module call these.
def lerp(start, end, weight):
    """``start + weight * (end - start)``, rounded once."""


def add_scaled(a, b, alpha):
    """``a + alpha * b``, rounded once."""


def addcmul(a, b, c, value):
    """``a + value * b * c``, the last step rounded once."""


def addcdiv(a, b, c, value):
    """``a + value * b / c``."""


def div(a, b):
    """``a / b``, correctly rounded."""


def ema_square(average, x, decay, weight):
    """``decay * average + weight * x^2``."""


def sqrt(x):
    """Correctly rounded square root."""


def reciprocal(x):
    """``1 / x``, correctly rounded."""


def sign(x):
    """1, -1 or 0 (also for NaN)."""


def absolute(x):
    """``|x|`` (NaN stays NaN)."""


def maximum(a, b):
    """The larger value; NaN wins."""


def clamp(x, low, high):
    """``min(max(x, low), high)``; NaN stays NaN."""


def where(condition, a, b):
    """``a`` if ``condition`` else ``b``."""


def clone(x):
    """The value itself (numbers are not shared)."""


def _maximum_impl(a, b):
    if a != a:
        return a
    if b != b:
        return b
    return b if b > a else a


@overload(lerp)
def _lerp(start, end, weight):
    one = as_dtype(start).type(1)

    def lerp_impl(start, end, weight):
        # torch's formula: the smaller of weight and 1 - weight multiplies the difference.
        if abs(weight) < 0.5:
            return fma(weight, end - start, start)
        return fma(weight - one, end - start, end)

    return lerp_impl


@overload(add_scaled)
def _add_scaled(a, b, alpha):
    kind = as_dtype(a).type
    return lambda a, b, alpha: fma(b, kind(alpha), a)


@overload(addcmul)
def _addcmul(a, b, c, value):
    kind = as_dtype(a).type
    return lambda a, b, c, value: fma(kind(value) * b, c, a)


@overload(addcdiv)
def _addcdiv(a, b, c, value):
    kind = as_dtype(a).type
    return lambda a, b, c, value: a + kind(value) * b / c


@overload(div)
def _div(a, b):
    kind = as_dtype(a).type
    return lambda a, b: a / kind(b)


@overload(ema_square)
def _ema_square(average, x, decay, weight):
    return lambda average, x, decay, weight: fma(weight * x, x, average * decay)


@overload(sqrt)
def _sqrt(x):
    return lambda x: np.sqrt(x)


@overload(reciprocal)
def _reciprocal(x):
    one = as_dtype(x).type(1)
    return lambda x: one / x


@overload(where)
def _where(condition, a, b):
    kind = as_dtype(a).type
    return lambda condition, a, b: _select(condition, a, kind(b))


@overload(sign)
def _sign(x):
    kind = as_dtype(x).type
    return lambda x: kind(x > 0) - kind(x < 0)


@overload(absolute)
def _absolute(x):
    return lambda x: abs(x)


@overload(maximum)
def _maximum(a, b):
    return _maximum_impl


@overload(clamp)
def _clamp(x, low, high):
    kind = as_dtype(x).type

    def clamp_impl(x, low, high):
        raised = _select(x > kind(low), x, kind(low))
        return _select(x != x, x, _select(raised < kind(high), raised, kind(high)))

    return clamp_impl


@overload(clone)
def _clone(x):
    return lambda x: x


# int8 block state (adamkit.state.formats): codes and one fp32 scale per 256 values,
# its sign bit set for a block in the signed code. Both directions are computed in
# 32-bit integer operations and selects, no table lookups, so that the loops vectorize;
# the values are the formats' CODE_VALUES bit for bit (tested against them for every code).
_I32 = ir.IntType(32)
_F32 = ir.FloatType()
_SIGN = -(2**31)
_NAN_BITS, _INF_BITS = 0x7FC00000, 0x7F800000


def _i32(value: int) -> ir.Constant:
    return ir.Constant(_I32, value)


def _magnitude(builder, value):
    return builder.bitcast(builder.and_(builder.bitcast(value, _I32), _i32(0x7FFFFFFF)), _F32)


_REGIONS = list(zip(step_regions(UNSIGNED_MANTISSA_BITS), step_regions(SIGNED_MANTISSA_BITS)))


def _region_values(builder, is_signed, inside, field):
    """``field`` of the region each lane is in: ``inside(i)`` tells whether a lane is in
    region ``i`` or above, for every region but the last (tried from the bottom up)."""
    value = None
    for index, (unsigned, signed) in reversed(list(enumerate(_REGIONS))):
        chosen = builder.select(is_signed, _i32(getattr(signed, field)), _i32(getattr(unsigned, field)))
        value = chosen if value is None else builder.select(inside(index), chosen, value)
    return value


@intrinsic
def int8_code(typingctx, value, absmax, signed, noise):
    """The code of ``value`` (fp32) in a block whose largest magnitude under OVERFLOW is
    ``absmax``, in the signed code if ``signed`` (nonzero): the ratio to ``absmax``
    rounded to a step of its region with ``noise`` (``adamkit.state.formats.NEAREST_NOISE``),
    found from the ratio's bits (``adamkit.state.formats.step_regions``). Zero, underflow
    and NaN ratios code as 0; NaN gets its code, infinite and overflowing values the infinities'."""
    def codegen(context, builder, signature, args):
        value, absmax, signed, noise = args
        is_signed = builder.icmp_unsigned("!=", signed, ir.Constant(signed.type, 0))
        magnitude = _magnitude(builder, value)
        ratio = builder.fdiv(magnitude, absmax)
        bits = builder.bitcast(ratio, _I32)

        def inside(index):
            unsigned, signed_ = _REGIONS[index]
            lowest = builder.select(is_signed, _i32(signed_.lowest_bits), _i32(unsigned.lowest_bits))
            return builder.icmp_signed(">=", bits, lowest)

        origin = _region_values(builder, is_signed, inside, "origin")
        shift = _region_values(builder, is_signed, inside, "shift")
        width = builder.sub(shift, _i32(16))
        rounding = builder.or_(builder.shl(noise, width), builder.sub(builder.shl(_i32(1), width), _i32(1)))
        steps = builder.ashr(builder.add(builder.sub(origin, bits), rounding), shift)
        limit = builder.select(is_signed, _i32(SIGNED_STEPS), _i32(UNSIGNED_STEPS))
        kept = builder.and_(builder.fcmp_ordered(">", ratio, ir.Constant(_F32, 0.0)), builder.icmp_signed("<", steps, limit))
        code = builder.sub(builder.select(is_signed, _i32(127), _i32(255)), steps)
        code = builder.select(kept, code, _i32(0))
        negative = builder.fcmp_ordered("<", value, ir.Constant(_F32, 0.0))
        code = builder.select(builder.and_(is_signed, negative), builder.sub(_i32(0), code), code)
        infinity = builder.select(
            is_signed, builder.select(negative, _i32(-SIGNED_INF), _i32(SIGNED_INF)), _i32(UNSIGNED_INF)
        )
        overflowing = builder.fcmp_ordered(">=", magnitude, builder.bitcast(_i32(OVERFLOW_BITS), _F32))
        code = builder.select(overflowing, infinity, code)
        nan = builder.select(is_signed, _i32(SIGNED_NAN), _i32(UNSIGNED_NAN))
        code = builder.select(builder.fcmp_unordered("uno", value, value), nan, code)
        return builder.trunc(code, ir.IntType(8))

    return types.int8(types.float32, types.float32, types.uint32, types.uint32), codegen


@intrinsic
def int8_value(typingctx, code, scale):
    """The fp32 value of ``code`` in a block with this ``scale`` (signed code if its sign
    bit is set): its step's ratio times |scale|; 0, NaN and infinities for their codes."""
    def codegen(context, builder, signature, args):
        code, scale = args
        signed_code, unsigned_code = builder.sext(code, _I32), builder.zext(code, _I32)
        is_signed = builder.icmp_signed("<", builder.bitcast(scale, _I32), _i32(0))
        negative = builder.icmp_signed("<", signed_code, _i32(0))
        size = builder.select(negative, builder.sub(_i32(0), signed_code), signed_code)
        steps = builder.select(is_signed, builder.sub(_i32(127), size), builder.sub(_i32(255), unsigned_code))
        regular = builder.select(
            is_signed,
            builder.and_(builder.icmp_signed(">=", size, _i32(2)), builder.icmp_signed("<=", size, _i32(127))),
            builder.icmp_signed(">=", unsigned_code, _i32(3)),
        )

        def inside(index):  # before the next region's first step
            unsigned, signed_ = _REGIONS[index + 1]
            first = builder.select(is_signed, _i32(signed_.first_step), _i32(unsigned.first_step))
            return builder.icmp_signed("<", steps, first)

        origin = _region_values(builder, is_signed, inside, "origin")
        shift = _region_values(builder, is_signed, inside, "shift")
        bits = builder.sub(origin, builder.shl(steps, shift))
        value = builder.fmul(builder.bitcast(bits, _F32), _magnitude(builder, scale))
        value_bits = builder.bitcast(value, _I32)
        value_bits = builder.or_(value_bits, builder.select(builder.and_(is_signed, negative), _i32(_SIGN), _i32(0)))
        value_bits = builder.select(regular, value_bits, _i32(0))
        infinity = builder.select(
            is_signed,
            builder.select(builder.icmp_signed("==", size, _i32(SIGNED_INF)),
                           builder.select(negative, _i32(_SIGN | _INF_BITS), _i32(_INF_BITS)), value_bits),
            builder.select(builder.icmp_signed("==", unsigned_code, _i32(UNSIGNED_INF)), _i32(_INF_BITS), value_bits),
        )
        nan = builder.select(is_signed, builder.icmp_signed("==", signed_code, _i32(SIGNED_NAN)),
                             builder.icmp_signed("==", unsigned_code, _i32(UNSIGNED_NAN)))
        return builder.bitcast(builder.select(nan, _i32(_NAN_BITS), infinity), _F32)

    return types.float32(types.int8, types.float32), codegen


@njit  # once per block: a call costs nothing, and inlining it trips numba's SSA check
def store_int8_block(codes, scales, block, values, count, key, slot):
    """Code ``values[:count]`` (fp32), the new values of one block of 256, into int8,
    rounded as ``element_noise`` draws for ``key`` and ``slot``."""
    # The largest magnitude under OVERFLOW, as the largest bit pattern of |value| below
    # its pattern: an integer maximum vectorizes, a float one cannot without fast-math.
    largest = np.uint32(0)
    signed = np.uint32(0)
    for k in range(count):
        magnitude = _float_bits(values[k]) & np.uint32(0x7FFFFFFF)
        kept = np.uint32(magnitude < np.uint32(OVERFLOW_BITS))
        largest = max(largest, magnitude * kept)
        signed = max(signed, np.uint32(values[k] < 0))
    absmax = _bits_float(largest)
    scales[block] = _bits_float(largest | (signed << np.uint32(31)))
    start = block * 256
    for k in range(count):
        codes[start + k] = int8_code(values[k], absmax, signed, element_noise(key, start + k, slot))


# A state slot in a pass: ``slot`` is the pass's argument for it (None if the rule keeps
# no such state), ``coded`` its int8 scales argument (None unless it is int8). numba
# compiles each call for what the slot is.
def block_scale(coded, scales, block):
    """An int8 slot's scale for ``block``; 0 for other slots."""


def read_state(values, scale, coded, index, like):
    """The slot's value at ``index`` in the compute type, the type of ``like`` (fp64 for
    fp64 parameters, whose bf16 or int8 state loads as fp32)."""


def keep_state(slot, coded, values, index, value, key, held, row, position):
    """Write the slot's new value: stored at once (rounded as its format says), or held
    in ``held[row, position]`` (fp32) until its int8 block is complete."""


def finish_block(coded, values, scales, block, held_row, count, key, slot):
    """Store an int8 slot's held block, rounded under ``key``; nothing for other slots."""


@overload(block_scale)
def _block_scale(coded, scales, block):
    if isinstance(coded, types.NoneType):
        return lambda coded, scales, block: np.float32(0)
    return lambda coded, scales, block: scales[block]


@overload(read_state)
def _read_state(values, scale, coded, index, like):
    compute = as_dtype(like).type
    if isinstance(coded, types.NoneType):
        return lambda values, scale, coded, index, like: compute(load(values, index))
    return lambda values, scale, coded, index, like: compute(int8_value(values[index], scale))


def _keep_nothing(slot, coded, values, index, value, key, held, row, position):
    pass


def _keep_stored(slot, coded, values, index, value, key, held, row, position):
    store_state(values, index, value, key, row)


def _keep_held(slot, coded, values, index, value, key, held, row, position):
    held[row, position] = value


@overload(keep_state)
def _keep_state(slot, coded, values, index, value, key, held, row, position):
    if isinstance(slot, types.NoneType):
        return _keep_nothing
    return _keep_stored if isinstance(coded, types.NoneType) else _keep_held


def _finish_nothing(coded, values, scales, block, held_row, count, key, slot):
    pass


def _finish_int8(coded, values, scales, block, held_row, count, key, slot):
    store_int8_block(values, scales, block, held_row, count, key, slot)


@overload(finish_block)
def _finish_block(coded, values, scales, block, held_row, count, key, slot):
    return _finish_nothing if isinstance(coded, types.NoneType) else _finish_int8
