"""adamkit.RMSprop: a drop-in for torch.optim.RMSprop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_non_negative, check_tensor_lr

if TYPE_CHECKING:
    from typing_extensions import Unpack


class RMSprop(RuleOptimizer):
    """RMSProp, optionally centered and with momentum.

    Same signature, defaults, state (``step``, ``square_avg``, ``momentum_buffer``,
    ``grad_avg``) and checkpoint format as ``torch.optim.RMSprop``; results equal
    torch's for-loop implementation bit for bit.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.RMSprop([w], lr=0.01, centered=True, momentum=0.9)
        >>> w.grad = torch.tensor([2.0])
        >>> optimizer.step()
        >>> sorted(optimizer.state[w])
        ['grad_avg', 'momentum_buffer', 'square_avg', 'step']
    """

    update_rule = rules.rmsprop
    flag_defaults = {
        "momentum": 0, "centered": False, "foreach": None, "maximize": False, "differentiable": False,
        "capturable": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_tensor_lr(lr, foreach=None, capturable=False)
        check_non_negative("learning rate", lr)
        check_non_negative("epsilon value", eps)
        check_non_negative("momentum value", momentum)
        check_non_negative("weight_decay value", weight_decay)
        check_non_negative("alpha value", alpha)
        defaults = {
            "lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps, "centered": centered,
            "weight_decay": weight_decay, "capturable": capturable, "foreach": foreach, "maximize": maximize,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return dict.fromkeys(names, 0.0)
