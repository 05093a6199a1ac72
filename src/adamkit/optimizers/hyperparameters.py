"""Checks of hyperparameters and options, made when an optimizer is built.

Where torch.optim has the option, the check and its message are torch's; adamkit's own
options (``state_dtype``, ``state_seed``, ``low_precision_min_elements``, ``max_grad_norm``,
``norm_type``) are checked
here too, each message naming the option, the value and what to pass instead.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from adamkit.state.formats import check_state_dtype

SEED_LIMIT = 2**32  # bf16 rounding keys are 32-bit: a larger seed would repeat a smaller one's bits


def scalar_dtype(fused: bool | None = None) -> torch.dtype:
    """dtype of the ``step`` counter, as torch.optim chooses it."""
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def squeeze_scalar(value: float | Tensor) -> float | Tensor:
    """A 1-element tensor hyperparameter becomes 0-dim; numbers pass through."""
    if isinstance(value, Tensor) and value.dim() != 0:
        return value.squeeze()
    return value


def check_non_negative(name: str, value: float | Tensor) -> None:
    """Raise torch's ValueError for a negative (or NaN) hyperparameter."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name}: {value}")


def check_tensor_lr(lr: float | Tensor, *, foreach: bool | None, capturable: bool) -> None:
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")


def check_betas(betas: tuple[float | Tensor, float | Tensor], *, foreach: bool | None, capturable: bool) -> None:
    """Adam-style ``betas``: each in [0, 1), both floats or both 1-element tensors."""
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if not (
        all(isinstance(beta, float) for beta in betas) or all(isinstance(beta, Tensor) for beta in betas)
    ):
        raise ValueError("betas must be either both floats or both Tensors")
    for index, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            if not capturable and foreach:
                raise ValueError(
                    f"betas[{index}] as a Tensor is not supported for capturable=False and foreach=True"
                )
            if beta.numel() != 1:
                raise ValueError(f"Tensor betas[{index}] must be 1-element")


def check_three_betas(betas: tuple, algorithm: str) -> None:
    """Raise a ValueError naming ``betas`` unless there are three (AdEMAMix, Adan).

    >>> check_three_betas((0.9, 0.999), "Adan")
    Traceback (most recent call last):
    ...
    ValueError: Invalid betas: (0.9, 0.999); Adan takes three, (beta1, beta2, beta3)
    """
    if len(betas) != 3:
        raise ValueError(f"Invalid betas: {betas}; {algorithm} takes three, (beta1, beta2, beta3)")


def check_adam_hyperparameters(
    lr: float | Tensor, eps: float, betas: tuple, weight_decay: float, *, foreach: bool | None, capturable: bool
) -> None:
    """The checks torch's Adam, AdamW, Adamax, NAdam and RAdam make, in their order and
    with their messages (``foreach``: None where torch does not check it).

    >>> check_adam_hyperparameters(1e-3, 1e-8, (0.9, 1.0), 0.0, foreach=None, capturable=False)
    Traceback (most recent call last):
    ...
    ValueError: Invalid beta parameter at index 1: 1.0
    """
    check_tensor_lr(lr, foreach=foreach, capturable=capturable)
    check_non_negative("learning rate", lr)
    check_non_negative("epsilon value", eps)
    check_betas(betas, foreach=foreach, capturable=capturable)
    check_non_negative("weight_decay value", weight_decay)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_state_options(state_dtype, state_seed, low_precision_min_elements) -> None:
    """Raise a ValueError naming the first of adamkit's state options that is not valid.

    >>> check_state_options("bf16", 2**32, 4096)
    Traceback (most recent call last):
    ...
    ValueError: Invalid state_seed: 4294967296; use an integer from 0 to 2**32 - 1 (it seeds bf16 and int8 state's stochastic rounding)
    """
    check_state_dtype(state_dtype)
    if not (_is_integer(state_seed) and 0 <= state_seed < SEED_LIMIT):
        raise ValueError(
            f"Invalid state_seed: {state_seed!r}; use an integer from 0 to 2**32 - 1 "
            "(it seeds bf16 and int8 state's stochastic rounding)"
        )
    if not (_is_integer(low_precision_min_elements) and low_precision_min_elements >= 0):
        raise ValueError(
            f"Invalid low_precision_min_elements: {low_precision_min_elements!r}; use an integer of 0 or more "
            "elements (tensors with fewer keep fp32 state)"
        )


def check_clipping_options(max_grad_norm, norm_type) -> None:
    """Raise a ValueError naming ``max_grad_norm`` or ``norm_type`` if it is not valid.

    >>> check_clipping_options(0.0, 2.0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid max_grad_norm: 0.0; use a positive finite number, or None not to clip
    """
    if max_grad_norm is not None and not (
        isinstance(max_grad_norm, numbers.Real) and not isinstance(max_grad_norm, bool)
        and 0 < max_grad_norm < float("inf")
    ):
        raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r}; use a positive finite number, or None not to clip")
    try:
        valid = float(norm_type) > 0 and not isinstance(norm_type, bool)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"Invalid norm_type: {norm_type!r}; use a positive number, 2.0 or 'inf' as clip_grad_norm_ takes")
