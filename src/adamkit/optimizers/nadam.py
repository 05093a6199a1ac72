"""adamkit.NAdam: a drop-in for torch.optim.NAdam."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_adam_hyperparameters, check_non_negative

if TYPE_CHECKING:
    from typing_extensions import Unpack


class NAdam(RuleOptimizer):
    """NAdam: Adam with Nesterov momentum, on a momentum schedule that ``momentum_decay`` sets.

    Same signature, defaults, param-group keys, state (``mu_product`` included) and
    checkpoint format as ``torch.optim.NAdam``; with ``foreach=False`` its results equal
    torch's for-loop bit for bit. ``weight_decay`` is L2, or decoupled with
    ``decoupled_weight_decay=True`` (NAdamW).

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.NAdam([w], lr=0.1)
        >>> w.grad = torch.tensor([2.0])
        >>> optimizer.step()
        >>> w.detach(), sorted(optimizer.state[w])
        (tensor([0.8944]), ['exp_avg', 'exp_avg_sq', 'mu_product', 'step'])
    """

    update_rule = rules.nadam
    flag_defaults = {
        "foreach": None, "maximize": False, "capturable": False, "differentiable": False,
        "decoupled_weight_decay": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_adam_hyperparameters(lr, eps, betas, weight_decay, foreach=None, capturable=capturable)
        check_non_negative("momentum_decay value", momentum_decay)
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "momentum_decay": momentum_decay,
            "decoupled_weight_decay": decoupled_weight_decay, "maximize": maximize, "foreach": foreach,
            "capturable": capturable, "differentiable": differentiable,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}
