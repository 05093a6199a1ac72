"""The fused CPU kernel's loops (numba), compiled once per update rule.

This module is a template. ``adamkit.kernels.compile_cache`` writes one copy of it per
rule into the compile cache, with the lines between the BINDING markers naming that
rule's update, imports the copy, and numba caches the compiled loops beside it. The
rule is a global of the copy, never an argument: a compiled function passed as an
argument would put a per-process identity into numba's cache key, so no later process
would find the entry. Read as it is, this module binds Adam and compiles uncached.
"""

import numpy as np
from numba import njit

from adamkit.kernels import scalar_ops
from adamkit.kernels.scalar_ops import (
    block_scale, finish_block, keep_state, load, noise_key, pointer, read_state, store,
)
from adamkit.rules import bind, transform_gradient

# BINDING
from adamkit.rules.adam import adam_update as rule_update

CACHE = False
# END BINDING

# nogil: adamkit.kernels.compile_cache runs a pass on several threads, each over its own work items.
_JIT = {"error_model": "numpy", "cache": CACHE, "nogil": True}
_update = njit(error_model="numpy")(bind(rule_update, scalar_ops))
_decay = njit(error_model="numpy")(bind(transform_gradient, scalar_ops))


@njit(**_JIT)
def fused_pass(
    c, decay, like, params, grads, slot0, slot1, slot2, slot3, like0, like1, like2, like3, scale0, scale1, scale2, scale3,
    noise, tensor_ids, watch, items, starts, ends, changed,
):
    """Run the rule's update over every element of the work items, a block of 256 at a time.

    A slot the parameters lack is None: numba then compiles that slot's code away (a
    store that might alias the gradient would keep the loop from vectorizing), and the
    rule reads the gradient in its place and never uses it. ``like0``...``like3`` give
    each slot's storage type. A slot with scales (``scale0``...) is int8 state: read from
    its codes and the block's scale, and written back a block at a time, once the
    block's new values, and so its scale, are known (work items start at multiples of 256).
    Unless ``noise`` is None, bf16 and int8 state is rounded stochastically, keyed by ``noise``
    (seed, step) and the tensor's id. With ``watch``, it records in ``changed`` per work
    item whether any parameter element changed (a flag, not a compiled variant: the
    compiler hoists the test out of the loop).
    """
    unit = np.zeros(0, np.float32)
    for w in range(items.shape[0]):
        t = items[w]
        p = pointer(params[t], like)
        g = pointer(grads[t], like)
        s0 = pointer(grads[t] if slot0 is None else slot0[t], like0)
        s1 = pointer(grads[t] if slot1 is None else slot1[t], like1)
        s2 = pointer(grads[t] if slot2 is None else slot2[t], like2)
        s3 = pointer(grads[t] if slot3 is None else slot3[t], like3)
        f0 = pointer(grads[t] if scale0 is None else scale0[t], unit)
        f1 = pointer(grads[t] if scale1 is None else scale1[t], unit)
        f2 = pointer(grads[t] if scale2 is None else scale2[t], unit)
        f3 = pointer(grads[t] if scale3 is None else scale3[t], unit)
        # One key for slots 0 and 1, one for 2 and 3, so that the compiler hashes each element once per pair.
        k01 = None if noise is None else noise_key(noise[0], noise[1], tensor_ids[t], 0)
        k23 = None if noise is None else noise_key(noise[0], noise[1], tensor_ids[t], 2)
        held = np.empty((4, 256), np.float32)
        moved = False
        for block_start in range(starts[w], ends[w], 256):
            count = min(256, ends[w] - block_start)
            block = block_start >> 8
            b0 = block_scale(scale0, f0, block)
            b1 = block_scale(scale1, f1, block)
            b2 = block_scale(scale2, f2, block)
            b3 = block_scale(scale3, f3, block)
            for k in range(count):
                i = block_start + k
                old = load(p, i)
                new, decayed_grad = _decay(old, load(g, i), decay)
                v0 = read_state(s0, b0, scale0, i, old)
                v1 = read_state(s1, b1, scale1, i, old)
                v2 = read_state(s2, b2, scale2, i, old)
                v3 = read_state(s3, b3, scale3, i, old)
                new, y0, y1, y2, y3 = _update(new, decayed_grad, v0, v1, v2, v3, c)
                store(p, i, new)
                keep_state(slot0, scale0, s0, i, y0, k01, held, 0, k)
                keep_state(slot1, scale1, s1, i, y1, k01, held, 1, k)
                keep_state(slot2, scale2, s2, i, y2, k23, held, 2, k)
                keep_state(slot3, scale3, s3, i, y3, k23, held, 3, k)
                if watch:
                    moved |= load(p, i) != old
            finish_block(scale0, s0, f0, block, held[0], count, k01, 0)
            finish_block(scale1, s1, f1, block, held[1], count, k01, 1)
            finish_block(scale2, s2, f2, block, held[2], count, k23, 2)
            finish_block(scale3, s3, f3, block, held[3], count, k23, 3)
        if watch:
            changed[w] = moved


@njit(**_JIT)
def advance_steps(addresses, like, write):
    """Each step counter plus 1, in its own dtype (as ``step += 1``); stored too if ``write``."""
    out = np.empty(addresses.shape[0], np.float64)
    for k in range(addresses.shape[0]):
        counter = pointer(addresses[k], like)
        advanced = counter[0] + 1
        if write:
            counter[0] = advanced
        out[k] = advanced
    return out


@njit(**_JIT)
def read_numbers(addresses, like):
    """The value of each 0-dim tensor at ``addresses`` (a rule's scalar state)."""
    out = np.empty(addresses.shape[0], np.float64)
    for k in range(addresses.shape[0]):
        out[k] = pointer(addresses[k], like)[0]
    return out


@njit(**_JIT)
def write_numbers(addresses, values, like):
    """Store ``values`` (each exact in the tensors' dtype) into the 0-dim tensors at ``addresses``."""
    for k in range(addresses.shape[0]):
        pointer(addresses[k], like)[0] = values[k]


@njit(**_JIT)
def all_zero(addresses, numels, like):
    """Per tensor: every element is zero (and there is at least one). Most gradients
    stop at their first element, so this costs next to nothing."""
    zero = np.zeros(addresses.shape[0], np.bool_)
    for t in range(addresses.shape[0]):
        g = pointer(addresses[t], like)
        zero[t] = numels[t] > 0
        for i in range(numels[t]):
            if load(g, i) != 0:
                zero[t] = False
                break
    return zero


@njit(**_JIT)
def all_finite(addresses, like, items, starts, ends, finite):
    """Per work item: every element is finite (into ``finite``). No early exit, so the loop vectorizes."""
    for w in range(items.shape[0]):
        g = pointer(addresses[items[w]], like)
        bad = False
        for i in range(starts[w], ends[w]):
            x = load(g, i)
            bad |= x - x != 0  # NaN for NaN and for +-Inf
        finite[w] = not bad


@njit(**_JIT)
def sum_of_squares(addresses, like, items, starts, ends, sums):
    """Per work item: the sum of its elements' squares in fp64 (into ``sums``), in a fixed
    order (eight running sums, element i in sum i % 8, then paired), so that the result
    is the same on every machine and thread count; the eight sums' additions overlap
    (LLVM keeps them scalar: it may not reorder them)."""
    for w in range(items.shape[0]):
        g = pointer(addresses[items[w]], like)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        i, end = starts[w], ends[w]
        while i + 8 <= end:
            s0 += np.float64(load(g, i)) ** 2
            s1 += np.float64(load(g, i + 1)) ** 2
            s2 += np.float64(load(g, i + 2)) ** 2
            s3 += np.float64(load(g, i + 3)) ** 2
            s4 += np.float64(load(g, i + 4)) ** 2
            s5 += np.float64(load(g, i + 5)) ** 2
            s6 += np.float64(load(g, i + 6)) ** 2
            s7 += np.float64(load(g, i + 7)) ** 2
            i += 8
        while i < end:
            s0 += np.float64(load(g, i)) ** 2
            i += 1
        sums[w] = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(**_JIT)
def largest_magnitude(addresses, like, items, starts, ends, largest):
    """Per work item: its largest |element| (fp64, into ``largest``); NaN if one is NaN."""
    for w in range(items.shape[0]):
        g = pointer(addresses[items[w]], like)
        top = 0.0
        nan = False
        for i in range(starts[w], ends[w]):
            x = abs(np.float64(load(g, i)))
            nan |= x != x
            top = max(top, x)
        largest[w] = np.nan if nan else top
