"""The eager kernel: one rule call per parameter tensor."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence

import torch
from torch import Tensor

from adamkit.rules.transforms import maximize_and_weight_decay


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


def _identity(t: Tensor) -> Tensor:
    return t


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

        new_param, grad = maximize_and_weight_decay(
            param.clone() if tracked else param,
            param.grad,
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            maximize=hp["maximize"],
            decoupled=decoupled_weight_decay,
        )
        moments = {name: real(value) for name, value in state.items() if name != "step"}
        rule_moments = {name: value.clone() for name, value in moments.items()} if tracked else moments
        new_param, new_moments = rule(real(new_param), real(grad), rule_moments, hp, step)

        real(param).copy_(new_param)
        for name, value in new_moments.items():
            if name in moments:
                moments[name].copy_(value)
            elif complex_as_real and torch.is_complex(param):
                state[name] = torch.view_as_complex(value)
            else:
                state[name] = value
        if state and param not in states:
            states[param] = state
