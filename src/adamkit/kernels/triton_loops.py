"""The fused CUDA kernel's pass (Triton), compiled once per update rule.

A template, as ``cpu_loops`` is: ``adamkit.kernels.compile_cache`` writes one copy per
rule with the lines between the BINDING markers naming the rule's update and loaders
of its coefficients, and imports the copy (Triton compiles from source files). Read as
it is, this module binds Adam.

One launch steps every tensor of a plan: program ``i`` takes block ``i`` of
``BLOCK`` elements, finds its tensor and offset in the plan's block tables, and reads
the tensor's addresses from the address table (parameter, gradient, up to four state
slots, and the block scales of int8 slots). Coefficients come from a small tensor of the compute dtype (fp32 or fp64;
Triton passes Python floats as fp32): the rule's, then the weight-decay transform's.
"""

import triton
import triton.language as tl

from adamkit.kernels import triton_ops
from adamkit.rules import SLOT_COUNT, bind, transform_gradient
from adamkit.rules.transforms import GradientTransform

# BINDING
from adamkit.rules.adam import AdamCoefficients as Coefficients
from adamkit.rules.adam import adam_update as rule_update


@triton.jit
def load_coefficients(pointer):
    return Coefficients(
        tl.load(pointer + 0), tl.load(pointer + 1), tl.load(pointer + 2), tl.load(pointer + 3),
        tl.load(pointer + 4), tl.load(pointer + 5), tl.load(pointer + 6) != 0,
    )


@triton.jit
def load_transform(pointer):
    return GradientTransform(
        tl.load(pointer + 0) != 0, tl.load(pointer + 1) != 0, tl.load(pointer + 2), tl.load(pointer + 3), tl.load(pointer + 4),
    )
# END BINDING

# Triton's interpreter looks for triton.language among a jit function's globals.
_update = triton.jit(bind(rule_update, triton_ops, tl=tl))
_transform = triton.jit(bind(transform_gradient, triton_ops, tl=tl))


SCALE_ROWS = tl.constexpr(SLOT_COUNT)  # an int8 slot's scales: the slot's row + SCALE_ROWS in the address table


@triton.jit
def _slot(tables, row: tl.constexpr, t, count, offsets, mask, STORAGE: tl.constexpr, COMPUTE: tl.constexpr, codebook):
    pointer = tl.load(tables + row * count + t).to(tl.pointer_type(STORAGE))
    stored = tl.load(pointer + offsets, mask=mask)
    if STORAGE == tl.int8:
        scales = tl.load(tables + (row + SCALE_ROWS) * count + t).to(tl.pointer_type(tl.float32))
        return pointer, triton_ops.decode_int8(stored, tl.load(scales + (offsets >> 8), mask=mask), codebook).to(COMPUTE)
    return pointer, triton_ops.from_storage(stored, COMPUTE)


@triton.jit
def _keep(tables, row: tl.constexpr, t, count, pointer, value, offsets, mask, STORAGE: tl.constexpr, key,
          STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
    if STORAGE == tl.int8:
        codes, block_scales = triton_ops.encode_int8(value, mask, offsets, key, STOCHASTIC, row - 2, BLOCK)
        tl.store(pointer + offsets, codes, mask=mask)
        scales = tl.load(tables + (row + SCALE_ROWS) * count + t).to(tl.pointer_type(tl.float32))
        first = tl.min(offsets, axis=0)  # the block's start, a multiple of 256
        blocks = tl.arange(0, BLOCK // 256)
        ends = tl.max(tl.where(mask, offsets, -1), axis=0)
        tl.store(scales + (first >> 8) + blocks, block_scales, mask=first + 256 * blocks <= ends)
    else:
        tl.store(pointer + offsets, triton_ops.to_state(value, STORAGE, key, offsets, STOCHASTIC, row - 2), mask=mask)


# Triton's launcher compiles an integer argument equal to 1 as a constant, and one that
# is a multiple of 16 with that fact: each a compile of its own, at steps 1, 2 and 16
# (and a constant 1 has no ``.to``). These vary from step to step or model to model.
@triton.jit(do_not_specialize=["count", "noise_seed", "noise_round"])
def fused_pass(
    tables, elements, block_tensor, block_start, coefficients, gradient_transform, flags, count,
    tensor_ids, noise_seed, noise_round, codebook,
    STORAGE: tl.constexpr, COMPUTE: tl.constexpr,
    SLOT0: tl.constexpr, SLOT1: tl.constexpr, SLOT2: tl.constexpr, SLOT3: tl.constexpr, WATCH: tl.constexpr,
    BLOCK: tl.constexpr, PIECE: tl.constexpr, STOCHASTIC: tl.constexpr,
):
    """Step one block, ``PIECE`` elements at a time (a loop, so that fewer values are held
    in registers at once). ``SLOT0``...``SLOT3`` are the slots' storage dtypes, None for a
    slot the parameters lack (not read or written; the rule gets the gradient in its
    place and never uses it). An int8 slot is decoded with ``codebook`` and coded
    a block of 256 at a time. With ``STOCHASTIC``, bf16 and int8
    state is rounded stochastically, keyed by the seed, the step and the tensor's id.
    With ``WATCH``, ``flags[2t]`` is set if any gradient element of tensor t is nonzero,
    ``flags[2t + 1]`` if any parameter element changed (as stored)."""
    block = tl.program_id(0)
    t = tl.load(block_tensor + block)
    first = tl.load(block_start + block)
    end = tl.load(elements + t)
    tensor_id = tl.load(tensor_ids + t)
    key01 = triton_ops.noise_key(noise_seed, noise_round, tensor_id, 0)  # slots 0 and 1 share it, 2 and 3 another
    key23 = triton_ops.noise_key(noise_seed, noise_round, tensor_id, 2)
    transform = load_transform(gradient_transform)
    c = load_coefficients(coefficients)
    for piece in range(0, BLOCK, PIECE):
        offsets = first + piece + tl.arange(0, PIECE)
        mask = offsets < end
        param_pointer, old = _slot(tables, 0, t, count, offsets, mask, STORAGE, COMPUTE, codebook)
        grad_pointer, grad = _slot(tables, 1, t, count, offsets, mask, STORAGE, COMPUTE, codebook)
        s0, s1, s2, s3 = grad, grad, grad, grad
        if SLOT0 is not None:
            s0_pointer, s0 = _slot(tables, 2, t, count, offsets, mask, SLOT0, COMPUTE, codebook)
        if SLOT1 is not None:
            s1_pointer, s1 = _slot(tables, 3, t, count, offsets, mask, SLOT1, COMPUTE, codebook)
        if SLOT2 is not None:
            s2_pointer, s2 = _slot(tables, 4, t, count, offsets, mask, SLOT2, COMPUTE, codebook)
        if SLOT3 is not None:
            s3_pointer, s3 = _slot(tables, 5, t, count, offsets, mask, SLOT3, COMPUTE, codebook)
        new, transformed_grad = _transform(old, grad, transform)
        new, y0, y1, y2, y3 = _update(new, transformed_grad, s0, s1, s2, s3, c)
        stored = triton_ops.to_storage(new, STORAGE)
        tl.store(param_pointer + offsets, stored, mask=mask)
        if SLOT0 is not None:
            _keep(tables, 2, t, count, s0_pointer, y0, offsets, mask, SLOT0, key01, STOCHASTIC, PIECE)
        if SLOT1 is not None:
            _keep(tables, 3, t, count, s1_pointer, y1, offsets, mask, SLOT1, key01, STOCHASTIC, PIECE)
        if SLOT2 is not None:
            _keep(tables, 4, t, count, s2_pointer, y2, offsets, mask, SLOT2, key23, STOCHASTIC, PIECE)
        if SLOT3 is not None:
            _keep(tables, 5, t, count, s3_pointer, y3, offsets, mask, SLOT3, key23, STOCHASTIC, PIECE)
        if WATCH:
            nonzero = tl.max(((grad != 0) & mask).to(tl.int32), axis=0)
            changed = tl.max(((triton_ops.from_storage(stored, COMPUTE) != old) & mask).to(tl.int32), axis=0)
            tl.atomic_or(flags + 2 * t, nonzero)
            tl.atomic_or(flags + 2 * t + 1, changed)
