"""adamkit.ASGD: a drop-in for torch.optim.ASGD."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_non_negative, check_tensor_lr

if TYPE_CHECKING:
    from typing_extensions import Unpack


class ASGD(RuleOptimizer):
    """Averaged SGD: SGD whose step size decays as ``lr / (1 + lambd lr t)^alpha``, with
    the average of the iterates from step ``t0`` on kept in the state as ``ax``.

    Same signature, defaults, param-group keys, state (``eta``, ``mu``, ``ax``) and
    checkpoint format as ``torch.optim.ASGD``; with ``foreach=False`` its results equal
    torch's for-loop bit for bit. ``weight_decay`` is L2, as in torch.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.ASGD([w], lr=0.1, t0=1)
        >>> for _ in range(5):
        ...     w.grad = torch.tensor([1.0])
        ...     optimizer.step()
        >>> w.detach(), optimizer.state[w]["ax"]  # ax: the mean of the last three iterates, 0.7, 0.6 and 0.5
        (tensor([0.5000]), tensor([0.6000]))
    """

    update_rule = rules.asgd

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_tensor_lr(lr, foreach=None, capturable=capturable)
        check_non_negative("learning rate", lr)
        check_non_negative("weight_decay value", weight_decay)
        defaults = {
            "lr": lr, "lambd": lambd, "alpha": alpha, "t0": t0, "weight_decay": weight_decay, "foreach": foreach,
            "maximize": maximize, "differentiable": differentiable, "capturable": capturable,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"ax": 0.0}

    def scalar_fills(self, group: dict) -> dict[str, float]:
        return {"eta": float(group["lr"]), "mu": 1.0}
