"""Yogi (Zaheer, Reddi, Sachan, Kale & Kumar, NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from adamkit.rules.adam import bias_corrected_update


def yogi(
    param: Tensor, grad: Tensor, state: Mapping[str, Tensor], hp: Mapping, step: float | Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """One Yogi step: Adam with an additive, sign-controlled second moment.

        m = beta1 m + (1 - beta1) g
        v = v - (1 - beta2) sign(v - g^2) g^2

    so ``v`` moves by at most ``(1 - beta2) g^2`` per step, however far it is from
    ``g^2``; Adam's ``v`` instead jumps to a fraction of a large ``g^2`` at once. The
    update is then Adam's, bias-corrected.

    >>> p, g = torch.tensor([0.0]), torch.tensor([2.0])
    >>> state = {"exp_avg": torch.zeros(1), "exp_avg_sq": torch.zeros(1)}
    >>> hp = {"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-3}
    >>> _, state = yogi(p, g, state, hp, 1.0)
    >>> state["exp_avg_sq"]  # + (1 - beta2) * g^2
    tensor([0.0040])
    """
    beta1, beta2 = hp["betas"]
    exp_avg = torch.lerp(state["exp_avg"], grad, 1 - beta1)
    grad_sq = grad * grad
    exp_avg_sq = state["exp_avg_sq"]
    exp_avg_sq = exp_avg_sq - (1 - beta2) * torch.sign(exp_avg_sq - grad_sq) * grad_sq
    new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    return bias_corrected_update(param, exp_avg, exp_avg_sq, hp, step), new_state
