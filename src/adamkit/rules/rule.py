"""What an update rule is: per-step coefficients plus one elementwise update."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """An optimization algorithm's math, independent of how it is run.

    ``coefficients(hp, step, fresh)`` turns a parameter group's hyperparameters and a
    step number (None for algorithms that count no steps) into the scalars of one step:
    a NamedTuple of numbers and flags, tensors on the capturable and differentiable
    paths. ``fresh`` says the parameter has no value in its first slot yet (SGD starts
    its momentum buffer from the gradient). ``update(param, grad, s0, s1, s2, c)``
    is the elementwise update: it takes the values of up to three state ``slots`` (a
    slot the parameter does not have is None) and returns ``(param, s0, s1, s2)``.
    It is written with ``adamkit.rules.ops`` and plain arithmetic only, so it runs on
    whole tensors (the eager kernel) as well as on single numbers (the fused kernel).

    ``sparse_update(param, grad, state, c)``, where present, handles sparse gradients
    (eager kernel only).
    """

    name: str
    slots: tuple[str, ...]
    coefficients: Callable
    update: Callable
    sparse_update: Callable | None = None
