"""adamkit.SGD: a drop-in for torch.optim.SGD."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_tensor_lr, squeeze_scalar

if TYPE_CHECKING:
    from typing_extensions import Unpack


class SGD(RuleOptimizer):
    """Stochastic gradient descent with optional momentum, dampening and Nesterov momentum.

    Same signature, defaults, state (``momentum_buffer``) and checkpoint format as
    ``torch.optim.SGD``; results equal torch's for-loop implementation bit for bit.
    Sparse gradients are supported, as in torch, without weight decay (torch fails
    there halfway through its step; adamkit says so before the step changes anything).

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> optimizer = adamkit.SGD([w], lr=0.1, momentum=0.9)
        >>> w.grad = torch.tensor([1.0, 1.0])
        >>> optimizer.step()
        >>> w.detach()
        tensor([ 0.9000, -2.1000])
    """

    update_rule = rules.sgd
    counts_steps = False
    complex_as_real = False
    sparse_grad_error = None
    flag_defaults = {"nesterov": False, "maximize": False, "foreach": None, "differentiable": False, "fused": False}

    def check_grad(self, param: Tensor, group: dict) -> None:
        if param.grad.is_sparse and group["weight_decay"] != 0:
            raise RuntimeError(
                f"SGD: weight_decay={squeeze_scalar(group['weight_decay'])} does not work with sparse gradients "
                "(torch.optim.SGD fails there with 'add(sparse, dense) is not supported'); "
                "put the parameters with sparse gradients in a group with weight_decay=0, or pass dense gradients"
            )

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_tensor_lr(lr, foreach=None, capturable=False)
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
            "nesterov": nesterov, "maximize": maximize, "foreach": foreach, "differentiable": differentiable,
            "fused": fused,
        }
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, None]:
        return {"momentum_buffer": None} if group["momentum"] != 0 else {}
