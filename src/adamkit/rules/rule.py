"""What an update rule is: per-step coefficients plus one elementwise update."""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

SLOT_COUNT = 4  # the most state slots a rule may have: the fused kernels pass each its own arguments


@dataclass(frozen=True)
class Rule:
    """An optimization algorithm's math, independent of how it is run.

    ``coefficients(hp, step, fresh, scalars)`` turns a parameter group's
    hyperparameters and a step number (None for algorithms that count no steps) into
    the scalars of one step: a NamedTuple of numbers and flags, tensors on the
    capturable and differentiable paths. ``fresh`` says the parameter has no value in
    its first slot yet (SGD starts its momentum buffer from the gradient); ``scalars``
    (``adamkit.rules.scalars``) supplies powers and square roots, torch's or correctly
    rounded ones. ``update(param, grad, s0, s1, s2, s3, c)`` is the elementwise update:
    it takes the values of up to four state ``slots`` (a slot the parameter does not
    have is None) and returns ``(param, s0, s1, s2, s3)``. It is written with
    ``adamkit.rules.ops`` and plain arithmetic only, so it runs on whole tensors (the
    eager kernel) as well as on single numbers (the fused kernels).

    ``sparse_update(param, grad, state, c)``, where present, handles sparse gradients
    (eager kernel only). ``decays_real_view``: torch's for-loop applies weight decay to a
    complex parameter's real view (RAdam, NAdam), not to the complex tensor (Adam),
    which rounds differently; the eager kernel follows it. ``complex_step_unfused``:
    torch's for-loop adds the step to a complex parameter as a complex tensor
    (Adadelta's ``param.add_(delta, alpha=-lr)``), a product and a sum rounded apart,
    where a real ``add`` rounds once; the eager kernel's torch mode does the same.

    ``group_step(hp)``, where present, returns the group's own numbers after this step
    (Schedule-Free's step count and averaging weights, kept in the param group as its
    reference implementation keeps them): ``coefficients`` sees them in ``hp``, and they
    are written to the group once the step is made. ``decays_in_update``: the update
    applies ``weight_decay`` itself (Schedule-Free, at ``y`` on the normalized
    gradient), so the shared transform does not. ``full_precision_slots`` stay in fp32
    (fp64) in every state format: Schedule-Free's ``z`` is an iterate the parameters are
    interpolated from, not a moment, and bf16 or int8 would round the model itself.

    ``scalar_state`` names per-tensor numbers the rule keeps beside the step counter
    (NAdam's ``mu_product``), with their initial values: 0-dim tensors in the state, as
    ``step``. ``coefficients`` takes their current values as keyword arguments (0-dim
    tensors, so that they round in their own dtype, as torch's in-place updates do) and
    returns their new values in fields of the same names, which the kernels store.
    """

    name: str
    slots: tuple[str, ...]
    coefficients: Callable
    update: Callable
    sparse_update: Callable | None = None
    decays_real_view: bool = False
    complex_step_unfused: bool = False
    group_step: Callable | None = None
    decays_in_update: bool = False
    full_precision_slots: tuple[str, ...] = ()
    scalar_state: tuple[tuple[str, float], ...] = ()


@lru_cache(maxsize=None)
def bind(function: Callable, ops: types.ModuleType, **names) -> Callable:
    """``function`` (an update or transform) with ``ops.*`` calls going to ``ops``.

    Rules call ``ops.lerp``, ``ops.sqrt``... by the module-level name ``ops``; a kernel
    that implements those operations differently runs the same code with its own
    module in that name's place. ``names`` become globals of the bound function too.

    >>> import math
    >>> def norm(x, y):
    ...     return ops.sqrt(x * x + y * y)
    >>> bind(norm, math)(3.0, 4.0)
    5.0
    """
    namespace = dict(function.__globals__, ops=ops, **names)
    bound = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    bound.__qualname__ = function.__qualname__
    bound.__doc__ = function.__doc__
    bound.__module__ = function.__module__
    return bound
