"""AdaGrad (Duchi, Hazan & Singer, 2011) with learning-rate decay."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def adagrad(
    param: Tensor, grad: Tensor, state: Mapping[str, Tensor], hp: Mapping, step: float | Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """One AdaGrad step at step number ``step`` (1 on the first call):

        s = s + g^2
        param -= lr / (1 + (step - 1) lr_decay) * g / (sqrt(s) + eps)

    A sparse ``grad`` updates only the rows it touches.

    >>> p, g = torch.tensor([1.0]), torch.tensor([2.0])
    >>> hp = {"lr": 0.1, "lr_decay": 0.0, "eps": 0.0}
    >>> adagrad(p, g, {"sum": torch.zeros(1)}, hp, 1.0)
    (tensor([0.9000]), {'sum': tensor([4.])})
    """
    clr = hp["lr"] / (1 + (step - 1) * hp["lr_decay"])
    if grad.is_sparse:
        # The update is non-linear in g, so duplicate indices must be summed first.
        grad = grad.coalesce()
        indices, values = grad._indices(), grad._values()
        state_sum = state["sum"].add(_sparse_like(grad, indices, values.pow(2)))
        std_values = state_sum.sparse_mask(grad)._values().sqrt_().add_(hp["eps"])
        return param.add(_sparse_like(grad, indices, values / std_values), alpha=-clr), {"sum": state_sum}

    state_sum = state["sum"].addcmul(grad, grad, value=1)
    std = state_sum.sqrt().add(hp["eps"])
    return torch.addcdiv(param, grad, std, value=-clr), {"sum": state_sum}


def _sparse_like(grad: Tensor, indices: Tensor, values: Tensor) -> Tensor:
    return torch.sparse_coo_tensor(indices, values, grad.size())
