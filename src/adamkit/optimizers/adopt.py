"""adamkit.ADOPT: the authors' ADOPT, fused, exact, with low-precision state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_adam_hyperparameters

if TYPE_CHECKING:
    from typing_extensions import Unpack


class ADOPT(RuleOptimizer):
    """ADOPT: Adam with the gradient normalized by the second moment of the steps
    *before* it (so that the update does not depend on the gradient it scales), clipped
    to ``step ** clip_exponent`` and then averaged into the momentum; step 1 only sets
    ``exp_avg_sq = g^2``.

    The authors' defaults (``betas=(0.9, 0.9999)``, ``eps=1e-6``, clipping at
    ``step ** 0.25``; ``clip_exponent=None`` turns it off) and weight decay (L2, or
    decoupled with ``decoupled_weight_decay=True``, their ``decouple``). Tested against
    pytorch-optimizer's ``ADOPT`` (its ``clip_lambda`` is ``step ** clip_exponent``)
    and a float64 transcription of the paper.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.ADOPT([w], lr=0.1)
        >>> for _ in range(2):
        ...     w.grad = torch.tensor([2.0])
        ...     optimizer.step()
        >>> w.detach()  # step 1 measured g^2; step 2 moved lr (1 - beta1) g / |g|
        tensor([0.9900])
    """

    update_rule = rules.adopt
    flag_defaults = {"maximize": False, "foreach": None, "decoupled_weight_decay": False}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.9999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        clip_exponent: float | None = 0.25,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_adam_hyperparameters(lr, eps, betas, weight_decay, foreach=None, capturable=False)
        if clip_exponent is not None and not 0.0 <= clip_exponent:
            raise ValueError(f"Invalid clip_exponent: {clip_exponent}; use a number >= 0, or None for no clipping")
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "clip_exponent": clip_exponent,
            "decoupled_weight_decay": decoupled_weight_decay, "maximize": maximize, "foreach": foreach,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0}
