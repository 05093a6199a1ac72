"""adamkit.Adadelta: a drop-in for torch.optim.Adadelta."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_non_negative, check_tensor_lr

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Adadelta(RuleOptimizer):
    """Adadelta: each step is ``sqrt(u + eps) / sqrt(v + eps) * g``, from running averages
    of squared gradients ``v`` and of squared steps ``u``; ``lr`` scales it (default 1).

    Same signature, defaults, param-group keys, state and checkpoint format as
    ``torch.optim.Adadelta``; with ``foreach=False`` its results equal torch's for-loop
    bit for bit. ``weight_decay`` is L2 (added to the gradient), as in torch.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.Adadelta([w], rho=0.5, eps=1e-2)
        >>> w.grad = torch.tensor([4.0])
        >>> optimizer.step()
        >>> w.detach()  # sqrt(0 + 0.01) / sqrt(0.5 * 16 + 0.01) * 4 = 0.1413 down
        tensor([0.8587])
    """

    update_rule = rules.adadelta

    def __init__(
        self,
        params,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_tensor_lr(lr, foreach=None, capturable=capturable)
        check_non_negative("learning rate", lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_non_negative("epsilon value", eps)
        check_non_negative("weight_decay value", weight_decay)
        defaults = {
            "lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay, "maximize": maximize,
            "capturable": capturable, "foreach": foreach, "differentiable": differentiable,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"square_avg": 0.0, "acc_delta": 0.0}
