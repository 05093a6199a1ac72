"""adamkit.Adan: the authors' Adan, fused, exact, with low-precision state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_adam_hyperparameters, check_three_betas

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Adan(RuleOptimizer):
    """Adan: Adam's two moments, with the second taken of ``g + beta2 (g - g_prev)``,
    plus a third average, of the gradient differences ``g - g_prev``, added to the
    step: Nesterov momentum estimated from the previous gradient (kept in the state).

    The authors' names and defaults (``betas=(0.98, 0.92, 0.99)``, their ``1 - beta``
    of the paper; ``eps=1e-8``; ``weight_decay`` as a proximal step, ``param /= 1 + lr
    wd`` after the update, or ``param *= 1 - lr wd`` before it with ``no_prox=True``)
    and state (``exp_avg``, ``exp_avg_sq``, ``exp_avg_diff``, ``neg_pre_grad``, minus
    the previous gradient). Tested against pytorch-optimizer's ``Adan`` (its
    ``weight_decouple`` is ``no_prox``) and a float64 transcription of the paper. The
    authors' ``max_grad_norm`` (global clipping) is not offered.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.Adan([w], lr=0.1)
        >>> w.grad = torch.tensor([2.0])
        >>> optimizer.step()
        >>> w.detach()  # Adam's first step: lr times the gradient's sign
        tensor([0.9000])
    """

    update_rule = rules.adan
    flag_defaults = {"maximize": False, "foreach": None}
    second_moment_beta = 2

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_prox: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_three_betas(betas, "Adan")
        check_adam_hyperparameters(lr, eps, betas, weight_decay, foreach=None, capturable=False)
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "no_prox": no_prox,
            "maximize": maximize, "foreach": foreach,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0, "exp_avg_diff": 0.0, "neg_pre_grad": 0.0}
