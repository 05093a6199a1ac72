"""The eager kernel: runs a rule with ordinary torch operations, tensor by tensor.

Large contiguous CPU tensors are cut into chunks of ``CHUNK_ELEMENTS``: a rule returns
new tensors, and on a chunk those temporaries and the copies back stay in cache, so the
step streams each parameter, gradient and state tensor through memory about once
instead of once per operation. Every operation is elementwise, so the result does not
depend on the chunking (the parity tests include tensors of many chunks). On a GPU
each operation is a launch: tensors go whole (a 4096 x 4096 AdamW step in chunks made
3,849 aten calls, counted on the meta device).

By default it makes torch's calls, so it equals ``torch.optim``'s for-loop on the
machine it runs on. With ``exact=True`` (the default optimizer mode, for the few tensors
the fused kernels do not take: sparse gradients, devices without a fused kernel) its
square roots and coefficients are correctly rounded instead, as the fused kernels' are.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np
import torch
from torch import Tensor

from adamkit.rules import (
    EXACT, SLOT_COUNT, TORCH, GradientTransform, Rule, bind, gradient_transform, ops, transform_gradient,
)
from adamkit.state import like_param, local_tensor
from adamkit.state.formats import BLOCK, SCALE_SUFFIX, StateSpec, dequantize, noise_key, quantize, stochastic_bfloat16

CHUNK_ELEMENTS = 1 << 16  # 256 KiB of fp32: larger chunks were no faster and glibc kept more of them (and whole int8 blocks)


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


def _identity(t: Tensor) -> Tensor:
    return t


def correctly_rounded_sqrt(x: Tensor) -> Tensor:
    """``sqrt`` rounded once. torch's CPU ``sqrt`` (MKL, SLEEF) is not: up to 16% of fp32
    results are an ulp off, depending on the CPU. NumPy's is the processor's IEEE
    instruction; CUDA's ``sqrt`` is IEEE-rounded already."""
    if x.device.type != "cpu" or x.requires_grad:
        return torch.sqrt(x)
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return torch.from_numpy(np.asarray(np.sqrt(wide.numpy()))).to(x.dtype)


EXACT_OPS = types.ModuleType("exact_ops", "adamkit.rules.ops with a correctly rounded sqrt")
EXACT_OPS.__dict__.update({name: getattr(ops, name) for name in ops.__all__}, sqrt=correctly_rounded_sqrt)
UNFUSED_OPS = types.ModuleType("unfused_ops", "adamkit.rules.ops with add_scaled's product rounded before the sum")
UNFUSED_OPS.__dict__.update({name: getattr(ops, name) for name in ops.__all__}, add_scaled=lambda a, b, alpha: a + b * alpha)


def _slices(numel: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, numel)) for start in range(0, numel, chunk)]


def eager_step(
    rule: Rule,
    params: Sequence[Tensor],
    states: Mapping[Tensor, MutableMapping[str, Tensor]],
    hp: Mapping,
    *,
    decoupled_weight_decay: bool,
    step_as_tensor: bool,
    complex_as_real: bool = True,
    exact: bool = False,
    spec: StateSpec | None = None,
    grad_scale: Tensor | None = None,
) -> None:
    """Advance every parameter in ``params`` (all with a gradient) by one step of ``rule``.

    ``hp`` is the parameter group's hyperparameters. Each parameter's ``states[param]``
    is updated in place: its ``step`` (if the algorithm counts steps) is incremented
    and its scalar state (``Rule.scalar_state``) stored once the step has been computed,
    the rule's results are copied into the existing state tensors, or
    stored when a state entry does not exist yet (SGD's momentum buffer).

    With ``complex_as_real``, complex tensors are handed to the rule as real views,
    after maximize and weight decay have run on the complex values; otherwise the rule
    sees them as they are (torch's SGD does complex arithmetic directly).

    ``exact`` takes square roots and coefficients correctly rounded (see above).
    ``grad_scale`` (a 0-dim tensor) multiplies every gradient first, as
    ``torch.nn.utils.clip_grad_norm_`` does with its coefficient, moved to each gradient's device.

    With a low-precision state format (``spec.state_dtype``), each piece is computed in
    fp32 (fp64 for fp64 parameters), as the fused kernels compute it, and state is
    stored through the format's rounding.
    """
    real = _real if complex_as_real else _identity
    scalars = EXACT if exact else TORCH
    update = bind(rule.update, EXACT_OPS) if exact else rule.update
    complex_update = bind(rule.update, UNFUSED_OPS) if rule.complex_step_unfused and not exact else update
    sparse_update = rule.sparse_update
    if exact and sparse_update is not None:
        sparse_update = bind(sparse_update, EXACT_OPS)
    unscaled = gradient_transform(hp, decoupled=decoupled_weight_decay, in_update=rule.decays_in_update)
    scales: dict[torch.device, GradientTransform] = {}
    # Differentiable mode: autograd keeps the rule's inputs for backward, so the rule
    # must get copies of what the write-back below overwrites.
    tracked = torch.is_grad_enabled()
    for position, param in enumerate(params):
        state = states.get(param, {})
        step_count = state.get("step")
        step = None
        if step_count is not None:  # the counter is advanced once the step has been computed
            step = step_count + 1 if step_as_tensor else (step_count + 1).item()
        scalar_state = {name: state[name] for name, _ in rule.scalar_state if name in state}
        coefficients = rule.coefficients(hp, step, rule.slots[0] not in state, scalars, **scalar_state)
        store = _StateStore(state, param, spec, position, step)

        # A DTensor (FSDP2) steps as its local shard: every operation is elementwise, and
        # torch's for-loop on DTensors runs the same operations on the same shards.
        local, grad = local_tensor(param), local_tensor(param.grad)
        decay = unscaled
        if grad_scale is not None:
            decay = scales.get(grad.device)
            if decay is None:
                decay = scales[grad.device] = unscaled._replace(grad_scale=grad_scale.to(grad.device))
        if grad.is_sparse and sparse_update is None and store.formatted and any(name in state for name in rule.slots):
            # Formatted state is dense: so is a step that reads it (same values). A step
            # without state (SGD) stays sparse, computed as without a format.
            grad = grad.to_dense()
        if grad.is_sparse and sparse_update is not None:
            if decay.grad_scale is not None:
                grad = grad * decay.grad_scale
            if decay.maximize:
                grad = -grad
            name = rule.slots[0]
            compute = store.compute_dtype if store.formatted else local.dtype
            new_param, new_sum = sparse_update(local.to(compute), grad.to(compute), store.read(name), coefficients)
            local.copy_(new_param)
            store.write(name, 0, new_sum, state[name], 0)
            store.advance(step_count, step, scalar_state, coefficients)
            continue

        present = [name for name in rule.slots if name in state]
        state_made_here = set(rule.slots) - set(present)  # SGD's first momentum buffer
        tensors = [local, grad, *(local_tensor(state[name]) for name in present)]
        # A step that creates state (SGD's first momentum step, Schedule-Free's first z)
        # runs whole: the new entry must be a full tensor, not chunks.
        chunked = (
            not tracked
            and present
            and not state_made_here & set(rule.slots if spec is None else spec.fills)
            and not grad.is_sparse
            and local.is_cpu
            and local.numel() > CHUNK_ELEMENTS
            and all(t.is_contiguous() for t in tensors)
        )
        coded = {name: state[name + SCALE_SUFFIX] for name in present if state[name].dtype is torch.int8}
        if chunked:
            flat = [t.view(-1) for t in tensors]
            slices = _slices(local.numel(), CHUNK_ELEMENTS)  # chunks of whole int8 blocks
            pieces = [[t[s] for t in flat] for s in slices]
            scale_pieces = [{n: scales[s.start // BLOCK : -(-s.stop // BLOCK)] for n, scales in coded.items()} for s in slices]
        else:
            pieces, scale_pieces = [tensors], [coded]

        offset = 0
        for (param_piece, grad_piece, *state_pieces), scales in zip(pieces, scale_pieces):
            new_param = param_piece.clone() if tracked else param_piece
            views = dict(zip(present, map(real, state_pieces)))
            inputs = {name: v.clone() for name, v in views.items()} if tracked else views
            inputs = {name: dequantize(v, scales[name]) if name in scales else v for name, v in inputs.items()}
            if store.formatted:
                widen = (lambda t: t.to(store.compute_dtype)) if not param.is_complex() else (lambda t: t)
                new_param, grad_piece = widen(new_param), widen(grad_piece)
                inputs = {name: widen(v) for name, v in inputs.items()}
            if rule.decays_real_view:
                new_param, grad_piece = real(new_param), real(grad_piece)
            new_param, grad_piece = transform_gradient(new_param, grad_piece, decay)
            slot_values = [inputs.get(name) for name in rule.slots]
            slot_values += [None] * (SLOT_COUNT - len(slot_values))
            step_rule = complex_update if param.is_complex() else update
            new_param, *new_values = step_rule(real(new_param), real(grad_piece), *slot_values, coefficients)

            real(param_piece).copy_(new_param)
            for slot, (name, value) in enumerate(zip(rule.slots, new_values)):
                if value is None or (name not in views and name not in state_made_here):
                    continue
                if name in views:
                    store.write(name, slot, value, views[name], offset, scales.get(name))
                else:
                    store.create(name, slot, value, complex_as_real)
                    _in_slot_order(state, rule.slots)
            offset += param_piece.numel()
        store.advance(step_count, step, scalar_state, coefficients)
        if state and param not in states:
            states[param] = state


def _in_slot_order(state: MutableMapping[str, Tensor], slots: Sequence[str]) -> None:
    """Put state entries in the rule's slot order, as the fused kernels allocate them (an
    entry made on the first step is added last)."""
    rank = {name: index for index, name in enumerate(slots)}
    entries = [key for key in state if key.removesuffix(SCALE_SUFFIX) in rank]
    for key in sorted(entries, key=lambda key: rank[key.removesuffix(SCALE_SUFFIX)]):
        state[key] = state.pop(key)


class _StateStore:
    """Reads and writes one parameter's state in its format: int8 codes through their
    block scales, bf16 with stochastic rounding keyed as the fused kernels key it."""

    def __init__(self, state: MutableMapping[str, Tensor], param: Tensor, spec: StateSpec | None, position: int, step) -> None:
        self.state, self.param, self.spec = state, param, spec
        self.formatted = spec is not None and spec.state_dtype is not None
        self.compute_dtype = torch.float64 if param.dtype in (torch.float64, torch.complex128) else torch.float32
        if self.formatted and spec.stochastic:  # used where a slot is stored in bf16 or int8
            self.rounding = (spec.seed, int(step if step is not None else spec.rounds), spec.tensor_ids.get(id(param), position))
        else:
            self.rounding = None

    def read(self, name: str) -> Tensor:
        """A whole state tensor's values, in the compute dtype when the state is formatted."""
        value = local_tensor(self.state[name])
        if value.dtype is torch.int8:
            return dequantize(value, self.state[name + SCALE_SUFFIX]).to(self.compute_dtype)
        return value.to(self.compute_dtype) if self.formatted else value

    def _key(self, slot: int):
        """The rounding key of ``slot`` in this step; None where state is rounded to nearest."""
        if self.rounding is None:
            return None
        seed, round_, tensor = self.rounding
        return noise_key(seed, round_, tensor, slot)

    def write(self, name: str, slot: int, value: Tensor, target: Tensor, offset: int, scales: Tensor | None = None) -> None:
        """Store ``value`` into ``target`` (slot ``slot``, the state tensor or a piece of it
        starting at element ``offset``), rounded as its format says."""
        key = self._key(slot)
        if key is not None and target.dtype is torch.bfloat16:
            value = stochastic_bfloat16(value, key, offset, slot, like=target)
        if target.dtype is torch.int8:
            scales = self.state[name + SCALE_SUFFIX] if scales is None else scales
            codes, block_scales = quantize(value, like=target, key=key, offset=offset, slot=slot)
            target.copy_(codes)
            scales.copy_(block_scales)
        else:
            target.copy_(value)

    def create(self, name: str, slot: int, value: Tensor, complex_as_real: bool) -> None:
        """Store a state entry the rule made on its first step (SGD's momentum buffer)."""
        param, spec = self.param, self.spec
        if self.formatted and value.is_sparse:  # made from a sparse gradient; formatted state is dense
            value = value.to_dense()
        storage = spec.storage_dtype(param, name) if self.formatted else None
        key = self._key(slot)
        if storage is torch.int8:
            codes, self.state[name + SCALE_SUFFIX] = quantize(value, like=local_tensor(param), key=key, slot=slot)
            self.state[name] = like_param(codes, param)
            return
        as_complex = complex_as_real and torch.is_complex(param)  # the rule made it on the real view
        if key is not None and storage is torch.bfloat16:
            value = stochastic_bfloat16(value, key, 0, slot, like=local_tensor(param))
        elif self.formatted:
            value = value.to(storage.to_real() if as_complex else storage)
        if as_complex:
            value = torch.view_as_complex(value)
        self.state[name] = like_param(value, param)

    @staticmethod
    def advance(step_count: Tensor | None, step, scalar_state: Mapping[str, Tensor], coefficients) -> None:
        """Store the step's count and the rule's new scalar state (``Rule.scalar_state``)."""
        if step_count is not None:
            step_count.copy_(step) if torch.is_tensor(step) else step_count.fill_(step)
        for name, value in scalar_state.items():
            value.copy_(getattr(coefficients, name))
