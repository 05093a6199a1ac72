"""adamkit.ScheduleFreeAdamW: schedulefree's AdamWScheduleFree, fused, exact, with low-precision state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adamkit import rules
from adamkit.optimizers.base import AdamkitOptions, RuleOptimizer
from adamkit.optimizers.hyperparameters import check_adam_hyperparameters
from adamkit.state.formats import decoded

if TYPE_CHECKING:
    from typing_extensions import Unpack


class ScheduleFreeAdamW(RuleOptimizer):
    """Schedule-Free AdamW: AdamW without a learning-rate schedule. Training steps the
    parameters at ``y``; call ``optimizer.eval()`` before evaluating or saving the model
    (parameters move to ``x``, the average the method guarantees) and
    ``optimizer.train()`` before training again.

    The reference implementation's signature, defaults (``lr=0.0025``,
    ``betas=(0.9, 0.999)``, ``warmup_steps=0``, ``r=0``, ``weight_lr_power=2``), state
    (``z``, ``exp_avg_sq``) and param-group keys (``k``, ``lr_max``, ``weight_sum``,
    ``scheduled_lr``, ``train_mode``): checkpoints move both ways with schedulefree's
    ``AdamWScheduleFree``. ``weight_decay`` is applied at ``y`` to the normalized
    gradient, as there. Unlike it, a new optimizer starts in train mode.

    Example:
        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.ScheduleFreeAdamW([w], lr=0.1)
        >>> for _ in range(3):
        ...     w.grad = 2 * w.detach()
        ...     optimizer.step()
        >>> optimizer.eval()
        >>> w.detach()  # x, the weighted average of the z iterates (schedulefree gives the same)
        tensor([0.8061])
    """

    update_rule = rules.schedule_free_adamw
    counts_steps = False
    flag_defaults = {"foreach": None, "maximize": False}

    def __init__(
        self,
        params,
        lr: float | Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        **options: Unpack[AdamkitOptions],
    ) -> None:
        check_adam_hyperparameters(lr, eps, betas, weight_decay, foreach=None, capturable=False)
        if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
            raise ValueError(f"Invalid warmup_steps: {warmup_steps!r}; use a number of steps >= 0")
        defaults = {
            "lr": lr, "betas": betas, "eps": eps, "r": r, "k": 0, "warmup_steps": warmup_steps, "train_mode": True,
            "weight_sum": 0.0, "lr_max": -1.0, "scheduled_lr": 0.0, "weight_lr_power": weight_lr_power,
            "weight_decay": weight_decay, "foreach": foreach, "maximize": maximize,
        }
        super().__init__(params, defaults, **options)

    def state_fills(self, group: dict) -> dict[str, float | None]:
        return {"z": None, "exp_avg_sq": 0.0}

    def step(self, closure=None) -> Any:
        for group in self.param_groups:
            if not group["train_mode"]:
                raise RuntimeError(
                    "ScheduleFreeAdamW.step() called in eval mode: the parameters hold x, the average; "
                    "call optimizer.train() before training steps (and optimizer.eval() before evaluating)"
                )
        return super().step(closure)

    @torch.no_grad()
    def eval(self) -> None:
        """Move the parameters to ``x`` (for evaluation and saving the model); idempotent."""
        self._switch(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Move the parameters back to ``y`` (for training steps); idempotent."""
        self._switch(train=True)

    def _switch(self, *, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta1 = group["betas"][0]
            # y = (1 - beta1) z + beta1 x: eval solves for x, train goes back to y
            weight = 1 - beta1 if train else 1 - 1 / beta1
            for p in group["params"]:
                state = self.state.get(p, {})
                if "z" in state:
                    p.lerp_(decoded(state)["z"].to(p.device, p.dtype), weight)
            group["train_mode"] = train
