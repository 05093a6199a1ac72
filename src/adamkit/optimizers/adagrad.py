"""adamkit.Adagrad: a drop-in for torch.optim.Adagrad."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_non_negative, check_tensor_lr

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Adagrad(RuleOptimizer):
    """AdaGrad with learning-rate decay and an initial accumulator value.

    Same signature, defaults, state (``step``, ``sum``) and checkpoint format as
    ``torch.optim.Adagrad``, whose state is created at construction; results equal
    torch's for-loop implementation bit for bit. Sparse gradients are supported
    (without weight decay), as in torch.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.Adagrad([w], lr=0.1)
        >>> w.grad = torch.tensor([2.0])
        >>> optimizer.step()
        >>> w.detach(), optimizer.state[w]["sum"]
        (tensor([0.9000]), tensor([4.]))
    """

    update_rule = rules.adagrad
    sparse_grad_error = None
    eager_state = True
    flag_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_tensor_lr(lr, foreach=None, capturable=False)
        check_non_negative("learning rate", lr)
        check_non_negative("lr_decay value", lr_decay)
        check_non_negative("weight_decay value", weight_decay)
        check_non_negative("initial_accumulator_value value", initial_accumulator_value)
        check_non_negative("epsilon value", eps)
        defaults = {
            "lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value, "foreach": foreach, "maximize": maximize,
            "differentiable": differentiable, "fused": fused,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"sum": group["initial_accumulator_value"]}

    def check_grad(self, param: Tensor, group: dict) -> None:
        if param.grad.is_sparse and group["weight_decay"] != 0:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
