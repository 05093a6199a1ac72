"""adamkit.Rprop: a drop-in for torch.optim.Rprop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_non_negative, check_tensor_lr

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Rprop(RuleOptimizer):
    """Rprop (resilient backpropagation): a step size per element, starting at ``lr``,
    times ``etas[1]`` while the gradient keeps its sign and ``etas[0]`` when it flips,
    kept within ``step_sizes``; each step moves by the step size against the sign.

    Same signature, defaults, param-group keys, state (``prev``, ``step_size``) and
    checkpoint format as ``torch.optim.Rprop``; with ``foreach=False`` its results equal
    torch's for-loop bit for bit. Meant for full-batch training: minibatch noise flips
    signs at random.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.Rprop([w], lr=0.1)
        >>> for _ in range(2):
        ...     w.grad = torch.tensor([3.0])
        ...     optimizer.step()
        >>> w.detach()  # the same sign twice: 0.1, then 0.1 * 1.2
        tensor([0.7800])
    """

    update_rule = rules.rprop

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_tensor_lr(lr, foreach=None, capturable=capturable)
        check_non_negative("learning rate", lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        defaults = {
            "lr": lr, "etas": etas, "step_sizes": step_sizes, "foreach": foreach, "maximize": maximize,
            "differentiable": differentiable, "capturable": capturable,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        return {"prev": 0.0, "step_size": float(group["lr"])}
