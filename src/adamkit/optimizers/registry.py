"""Optimizers by name, for the command line."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

from adamkit.optimizers import (
    ADOPT, ASGD, SGD, Adadelta, Adagrad, AdEMAMix, Adam, Adamax, AdamW, Adan, Lion, NAdam, RAdam, RMSprop, Rprop, ScheduleFreeAdamW,
    Yogi,
)

_FACTORIES: dict[str, Callable[..., Optimizer]] = {
    "adam": Adam,
    "adamw": AdamW,
    "amsgrad": lambda params, **options: Adam(params, amsgrad=True, **options),
    "yogi": Yogi,
    "adamax": Adamax,
    "radam": RAdam,
    "nadam": NAdam,
    "sgd": SGD,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
    "adadelta": Adadelta,
    "rprop": Rprop,
    "asgd": ASGD,
    "lion": Lion,
    "adopt": ADOPT,
    "ademamix": AdEMAMix,
    "adan": Adan,
    "schedulefree": ScheduleFreeAdamW,
    "torch-adam": torch.optim.Adam,
}

OPTIMIZER_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def build_optimizer(name: str, params: Iterable, lr: float, **options) -> Optimizer:
    """Build the optimizer called ``name`` over ``params`` with learning rate ``lr``;
    ``options`` are passed on (``state_dtype=...``, for example).

    ``torch-adam`` is ``torch.optim.Adam`` itself, for comparison runs; it takes none of
    adamkit's options.

    >>> import torch
    >>> build_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], lr=0.1).defaults["lr"]
    0.1
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}"
        ) from None
    if name == "torch-adam" and options:
        raise ValueError(f"torch-adam takes none of adamkit's options, got {sorted(options)}; use adam")
    return factory(params, lr=lr, **options)
