"""Optimizers by name, for the command line."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer

from adamkit.optimizers import SGD, Adagrad, Adam, AdamW, RMSprop, Yogi

_FACTORIES: dict[str, Callable[..., Optimizer]] = {
    "adam": Adam,
    "adamw": AdamW,
    "amsgrad": lambda params, lr: Adam(params, lr=lr, amsgrad=True),
    "yogi": Yogi,
    "sgd": SGD,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
    "torch-adam": torch.optim.Adam,
}

OPTIMIZER_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def build_optimizer(name: str, params: Iterable, lr: float) -> Optimizer:
    """Build the optimizer called ``name`` over ``params`` with learning rate ``lr``.

    ``torch-adam`` is ``torch.optim.Adam`` itself, for comparison runs.

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
    return factory(params, lr=lr)
