"""adamkit.RAdam: a drop-in for torch.optim.RAdam."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_adam_hyperparameters

if TYPE_CHECKING:
    from typing_extensions import Unpack


class RAdam(RuleOptimizer):
    """RAdam: Adam with its adaptive step rectified, and a momentum step while the
    second moment is too young to trust (the first 5 steps with ``beta2 = 0.999``).

    Same signature, defaults, param-group keys, state and checkpoint format as
    ``torch.optim.RAdam``; with ``foreach=False`` its results equal torch's for-loop bit
    for bit. ``weight_decay`` is L2, or decoupled with ``decoupled_weight_decay=True``.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.RAdam([w], lr=0.1)
        >>> w.grad = torch.tensor([2.0])
        >>> optimizer.step()
        >>> w.detach()  # step 1 is not rectified: lr times the bias-corrected momentum
        tensor([0.8000])
    """

    update_rule = rules.radam
    flag_defaults = {
        "foreach": None, "maximize": False, "differentiable": False, "decoupled_weight_decay": False,
        "capturable": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_adam_hyperparameters(lr, eps, betas, weight_decay, foreach=None, capturable=capturable)
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "maximize": maximize,
            "foreach": foreach, "capturable": capturable, "decoupled_weight_decay": decoupled_weight_decay,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}
