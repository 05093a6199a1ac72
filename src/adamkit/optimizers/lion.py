"""adamkit.Lion: the authors' Lion (and lion-pytorch's), fused, exact, with low-precision state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_betas, check_non_negative, check_tensor_lr

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Lion(RuleOptimizer):
    """Lion: each step moves every weight by exactly ``lr``, in the direction of the sign
    of ``beta1 m + (1 - beta1) g``; one momentum tensor ``m`` (``exp_avg``), no step count.

    The authors' defaults (``lr=1e-4``, ``betas=(0.9, 0.99)``; a learning rate 3-10x
    smaller than AdamW's, weight decay 3-10x larger) and weight decay (decoupled:
    ``param *= 1 - lr * weight_decay``). Its state dict is lion-pytorch's (``exp_avg``
    only): checkpoints move both ways. Tested against lion-pytorch and a float64
    transcription of the paper.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
        >>> optimizer = adamkit.Lion([w], lr=0.1)
        >>> w.grad = torch.tensor([0.001, -5.0])
        >>> optimizer.step()
        >>> w.detach()  # lr against the gradient's sign, whatever its size
        tensor([ 0.9000, -0.9000])
    """

    update_rule = rules.lion
    counts_steps = False
    flag_defaults = {"maximize": False, "foreach": None}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_tensor_lr(lr, foreach=None, capturable=False)
        check_non_negative("learning rate", lr)
        check_betas(betas, foreach=None, capturable=False)
        check_non_negative("weight_decay value", weight_decay)
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "maximize": maximize, "foreach": foreach}
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"exp_avg": 0.0}

    def decoupled_weight_decay(self, group: dict) -> bool:
        return True
