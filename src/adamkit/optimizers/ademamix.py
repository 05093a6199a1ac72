"""adamkit.AdEMAMix: the authors' AdEMAMix, fused, exact, with low-precision state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_adam_hyperparameters, check_three_betas

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AdEMAMix(RuleOptimizer):
    """AdEMAMix: Adam's update plus ``alpha`` times a slow momentum (``beta3``, default
    0.9999: a half-life of about 7000 steps), which keeps old gradients in play.

    The authors' defaults (``betas=(0.9, 0.999, 0.9999)``, ``alpha=2.0``, decoupled
    weight decay as in AdamW; ``decoupled_weight_decay=False`` adds it to the gradient
    instead). With ``t_alpha_beta3=T``, alpha and beta3 warm up over ``T`` steps on the
    paper's schedules (alpha linearly, beta3 by half-life). pytorch-optimizer's
    ``AdEMAMix`` defaults to alpha 5.0 and L2 decay; the tests pass it the authors'
    values.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.AdEMAMix([w], lr=0.1)
        >>> w.grad = torch.tensor([2.0])
        >>> optimizer.step()
        >>> w.detach()  # Adam's first step, lr, plus alpha * (1 - beta3) of it
        tensor([0.9000])
    """

    update_rule = rules.ademamix
    flag_defaults = {"maximize": False, "foreach": None, "decoupled_weight_decay": True}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 2.0,
        t_alpha_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_three_betas(betas, "AdEMAMix")
        check_adam_hyperparameters(lr, eps, betas, weight_decay, foreach=None, capturable=False)
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha: {alpha}; use a weight >= 0 for the slow momentum")
        if t_alpha_beta3 is not None and not t_alpha_beta3 > 0:
            raise ValueError(f"Invalid t_alpha_beta3: {t_alpha_beta3}; use a number of steps > 0, or None")
        defaults = {
            "lr": lr, "betas": betas, "alpha": alpha, "t_alpha_beta3": t_alpha_beta3, "eps": eps,
            "weight_decay": weight_decay, "decoupled_weight_decay": decoupled_weight_decay, "maximize": maximize,
            "foreach": foreach,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0, "exp_avg_slow": 0.0}
