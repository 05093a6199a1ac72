"""adamkit.Adamax: a drop-in for torch.optim.Adamax."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_adam_hyperparameters

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Adamax(RuleOptimizer):
    """Adamax: Adam with the infinity norm, ``u = max(beta2 u, |g| + eps)``, as its denominator.

    Same signature, defaults, param-group keys, state and checkpoint format as
    ``torch.optim.Adamax``; with ``foreach=False`` its results equal torch's for-loop bit
    for bit. ``weight_decay`` is L2 (added to the gradient), as in torch.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        >>> optimizer = adamkit.Adamax([w], lr=0.1)
        >>> w.grad = torch.tensor([0.5, -2.0])
        >>> optimizer.step()
        >>> w.detach()  # the first step moves each weight by lr, whatever the gradient's size
        tensor([ 0.9000, -0.9000])
    """

    update_rule = rules.adamax

    def __init__(
        self,
        params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_adam_hyperparameters(lr, eps, betas, weight_decay, foreach=None, capturable=capturable)
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "foreach": foreach,
            "maximize": maximize, "differentiable": differentiable, "capturable": capturable,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_inf": 0.0}
