"""adamkit.Adam and adamkit.AdamW: drop-ins for torch.optim.Adam / AdamW."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_adam_hyperparameters, squeeze_scalar

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Adam(RuleOptimizer):
    """Adam, with L2 or decoupled (AdamW) weight decay and the AMSGrad variant.

    Same signature, defaults, param-group keys, state and checkpoint format as
    ``torch.optim.Adam``; results equal torch's for-loop implementation bit for bit.

    Example:
        >>> import torch, adamkit
        >>> model = torch.nn.Linear(3, 1)
        >>> optimizer = adamkit.Adam(model.parameters(), lr=0.01)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> for _ in range(3):
        ...     optimizer.zero_grad()
        ...     torch.nn.functional.mse_loss(model(x), y).backward()
        ...     optimizer.step()
        >>> sorted(optimizer.state[model.weight])
        ['exp_avg', 'exp_avg_sq', 'step']
    """

    update_rule = rules.adam
    sparse_grad_error = "Adam does not support sparse gradients, please consider SparseAdam instead"
    flag_defaults = {
        "amsgrad": False, "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
        "decoupled_weight_decay": False, "fused": None,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_adam_hyperparameters(lr, eps, betas, weight_decay, foreach=foreach, capturable=capturable)
        defaults = {
            "lr": lr, "betas": tuple(map(squeeze_scalar, betas)), "eps": eps, "weight_decay": weight_decay,
            "amsgrad": amsgrad, "maximize": maximize, "foreach": foreach, "capturable": capturable,
            "differentiable": differentiable, "fused": fused, "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float]:
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        return dict.fromkeys(names, 0.0)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, default 1e-2.

    A drop-in for ``torch.optim.AdamW``; every group decays decoupled, also after
    loading a checkpoint that says otherwise.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.ones(2))
        >>> optimizer = adamkit.AdamW([w], lr=0.1)
        >>> w.grad = torch.zeros(2)
        >>> optimizer.step()
        >>> w.detach()  # zero gradient: only the decay moved it, by lr * weight_decay
        tensor([0.9990, 0.9990])
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=True, **options,
        )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
