"""Adam (Kingma & Ba, 2015) and its AMSGrad variant (Reddi, Kale & Kumar, 2018)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def adam(
    param: Tensor, grad: Tensor, state: Mapping[str, Tensor], hp: Mapping, step: float | Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """One Adam step for one tensor.

    ``state`` holds ``exp_avg`` (m) and ``exp_avg_sq`` (v), and ``max_exp_avg_sq`` when
    ``hp["amsgrad"]``. ``step`` is the step number after this step (1 on the first call):
    a float on the ordinary path, a tensor when the optimizer is capturable or
    differentiable, which keeps every scalar on the tensor side (no host sync, and
    gradients flow into ``lr`` and ``betas``).

        m = beta1 m + (1 - beta1) g
        v = beta2 v + (1 - beta2) g^2          (AMSGrad: v_max = max(v_max, v))
        param -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    >>> p, g = torch.tensor([0.5]), torch.tensor([1.0])
    >>> state = {"exp_avg": torch.zeros(1), "exp_avg_sq": torch.zeros(1)}
    >>> hp = {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}
    >>> p, state = adam(p, g, state, hp, 1.0)
    >>> p, state["exp_avg"], state["exp_avg_sq"]
    (tensor([0.4000]), tensor([0.1000]), tensor([0.0010]))
    """
    beta1, beta2 = hp["betas"]
    exp_avg = torch.lerp(state["exp_avg"], grad, 1 - beta1)
    if isinstance(beta2, Tensor) and beta2.requires_grad:
        # addcmul's `value` must be a number; lerp takes the tensor weight and its gradient.
        exp_avg_sq = torch.lerp(state["exp_avg_sq"], torch.square(grad), 1 - beta2)
    else:
        exp_avg_sq = state["exp_avg_sq"].mul(beta2).addcmul_(grad, grad, value=1 - beta2)
    new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    second_moment = exp_avg_sq
    if hp["amsgrad"]:
        second_moment = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        new_state["max_exp_avg_sq"] = second_moment
    return bias_corrected_update(param, exp_avg, second_moment, hp, step), new_state


def bias_corrected_update(
    param: Tensor, exp_avg: Tensor, second_moment: Tensor, hp: Mapping, step: float | Tensor
) -> Tensor:
    """``param - lr * m_hat / (sqrt(v_hat) + eps)``, Adam's update from its two moments.

    Shared by every rule that bias-corrects an Adam-style pair of moments (Adam, Yogi).
    """
    lr, eps = hp["lr"], hp["eps"]
    beta1, beta2 = hp["betas"]
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1

    if torch.is_tensor(step):
        # Fold the step size into the denominator: addcdiv's `value` must be a Python
        # number, and turning a tensor into one would sync the device and cut the graph.
        step_size_neg = -step_size
        denom = (second_moment.sqrt() / (bias_correction2.sqrt() * step_size_neg)).add_(
            eps / step_size_neg
        )
        return torch.addcdiv(param, exp_avg, denom)

    denom = (second_moment.sqrt() / bias_correction2**0.5).add_(eps)
    return torch.addcdiv(param, exp_avg, denom, value=-step_size)
