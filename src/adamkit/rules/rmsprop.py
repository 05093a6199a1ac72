"""RMSProp (Tieleman & Hinton, 2012), optionally centered (Graves, 2013) and with momentum."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def rmsprop(
    param: Tensor, grad: Tensor, state: Mapping[str, Tensor], hp: Mapping, step: float | Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """One RMSProp step with smoothing constant alpha:

        s = alpha s + (1 - alpha) g^2
        a = g_avg = alpha g_avg + (1 - alpha) g ; d = sqrt(s - a^2) + eps  (centered)
        d = sqrt(s) + eps                                                (otherwise)
        b = momentum b + g / d ; param -= lr b     (momentum > 0)
        param -= lr g / d                          (otherwise)

    >>> p, g = torch.tensor([1.0]), torch.tensor([2.0])
    >>> hp = {"lr": 0.01, "alpha": 0.75, "eps": 0.0, "momentum": 0, "centered": False}
    >>> p, state = rmsprop(p, g, {"square_avg": torch.zeros(1)}, hp, 1.0)
    >>> p, state["square_avg"]  # s = 0.25 * 4, p = 1 - 0.01 * 2 / 1
    (tensor([0.9800]), tensor([1.]))
    """
    lr, alpha = hp["lr"], hp["alpha"]
    square_avg = state["square_avg"].mul(alpha).addcmul_(grad, grad, value=1 - alpha)
    new_state = {"square_avg": square_avg}
    if hp["centered"]:
        grad_avg = torch.lerp(state["grad_avg"], grad, 1 - alpha)
        new_state["grad_avg"] = grad_avg
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    # Out of place: sqrt's backward needs its output unmodified (differentiable mode).
    avg = avg.add(hp["eps"])

    if hp["momentum"] > 0:
        buf = state["momentum_buffer"].mul(hp["momentum"]).addcdiv_(grad, avg)
        new_state["momentum_buffer"] = buf
        return param.add(buf, alpha=-lr), new_state
    return torch.addcdiv(param, grad, avg, value=-lr), new_state
