"""The eager kernel: runs a rule with ordinary torch operations, tensor by tensor.

Large contiguous tensors are cut into chunks of ``CHUNK_ELEMENTS``: a rule returns new
tensors, and on a chunk those temporaries and the copies back stay in cache, so the
step streams each parameter, gradient and state tensor through memory about once
instead of once per operation. Every operation is elementwise, so the result does not
depend on the chunking (the parity tests include tensors of many chunks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence

import torch
from torch import Tensor

from adamkit.rules.transforms import maximize_and_weight_decay

CHUNK_ELEMENTS = 1 << 17


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


def _identity(t: Tensor) -> Tensor:
    return t


def _slices(numel: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, numel)) for start in range(0, numel, chunk)]


def eager_step(
    rule: Callable,
    params: Sequence[Tensor],
    states: Mapping[Tensor, MutableMapping[str, Tensor]],
    hp: Mapping,
    *,
    decoupled_weight_decay: bool,
    step_as_tensor: bool,
    complex_as_real: bool = True,
) -> None:
    """Advance every parameter in ``params`` (all with a gradient) by one step of ``rule``.

    ``hp`` is the parameter group's hyperparameters. Each parameter's ``states[param]``
    is updated in place: its ``step`` (if the algorithm counts steps) is incremented
    first, then the rule's results are copied into the existing state tensors, or
    stored when a state entry does not exist yet (SGD's momentum buffer).

    With ``complex_as_real``, complex tensors are handed to the rule as real views,
    after maximize and weight decay have run on the complex values; otherwise the rule
    sees them as they are (torch's SGD does complex arithmetic directly).
    """
    real = _real if complex_as_real else _identity
    # Differentiable mode: autograd keeps the rule's inputs for backward, so the rule
    # must get copies of what the write-back below overwrites.
    tracked = torch.is_grad_enabled()
    for param in params:
        state = states.get(param, {})
        step_count = state.get("step")
        step = None
        if step_count is not None:
            step_count += 1
            step = step_count if step_as_tensor else step_count.item()
            if tracked:
                step = step.clone()

        grad = param.grad
        moments = {name: value for name, value in state.items() if name != "step"}
        tensors = [param, grad, *moments.values()]
        # A step that creates state (SGD's first momentum step) runs whole: the new
        # entry must be a full tensor, not chunks.
        chunked = (
            not tracked
            and moments
            and param.numel() > CHUNK_ELEMENTS
            and not grad.is_sparse
            and all(t.is_contiguous() for t in tensors)
        )
        if chunked:
            flat = [t.view(-1) for t in tensors]
            pieces = [[t[s] for t in flat] for s in _slices(param.numel(), CHUNK_ELEMENTS)]
        else:
            pieces = [tensors]

        for param_piece, grad_piece, *moment_pieces in pieces:
            new_param, grad_piece = maximize_and_weight_decay(
                param_piece.clone() if tracked else param_piece,
                grad_piece,
                lr=hp["lr"],
                weight_decay=hp["weight_decay"],
                maximize=hp["maximize"],
                decoupled=decoupled_weight_decay,
            )
            moment_views = {name: real(piece) for name, piece in zip(moments, moment_pieces)}
            rule_moments = {name: v.clone() for name, v in moment_views.items()} if tracked else moment_views
            new_param, new_moments = rule(real(new_param), real(grad_piece), rule_moments, hp, step)

            real(param_piece).copy_(new_param)
            for name, value in new_moments.items():
                if name in moment_views:
                    moment_views[name].copy_(value)
                elif complex_as_real and torch.is_complex(param):
                    state[name] = torch.view_as_complex(value)
                else:
                    state[name] = value
        if state and param not in states:
            states[param] = state
