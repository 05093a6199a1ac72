"""adamkit.Yogi (Zaheer et al., NeurIPS 2018)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_betas, check_non_negative, check_tensor_lr, squeeze_scalar

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Yogi(RuleOptimizer):
    """Yogi: Adam whose second moment moves by at most ``(1 - beta2) g^2`` per step.

    ``v_t = v_{t-1} - (1 - beta2) sign(v_{t-1} - g_t^2) g_t^2``. Both moments start at
    ``initial_accumulator`` (as the paper's reference code does) and are bias-corrected
    as in Adam. ``weight_decay`` is L2 (added to the gradient), or decoupled as in AdamW
    with ``decoupled_weight_decay=True``. torch has no Yogi; tests check it against a
    float64 NumPy transcription of the paper's formulas.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        >>> optimizer = adamkit.Yogi([w], lr=0.01)
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     (w**2).sum().backward()
        ...     optimizer.step()
        >>> bool((w.abs() < 1).all())
        True
    """

    update_rule = rules.yogi
    sparse_grad_error = "Yogi does not support sparse gradients; pass dense gradients (grad.to_dense())"
    flag_defaults = {
        "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None,
        "decoupled_weight_decay": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-3,
        initial_accumulator: float = 1e-6,
        weight_decay: float = 0,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_tensor_lr(lr, foreach=foreach, capturable=capturable)
        check_non_negative("learning rate", lr)
        check_non_negative("epsilon value", eps)
        check_betas(betas, foreach=foreach, capturable=capturable)
        check_non_negative("initial_accumulator value", initial_accumulator)
        check_non_negative("weight_decay value", weight_decay)
        defaults = {
            "lr": lr, "betas": tuple(map(squeeze_scalar, betas)), "eps": eps,
            "initial_accumulator": initial_accumulator, "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay, "maximize": maximize, "foreach": foreach,
            "capturable": capturable, "differentiable": differentiable, "fused": fused,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return dict.fromkeys(("exp_avg", "exp_avg_sq"), group["initial_accumulator"])
