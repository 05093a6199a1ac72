"""The shared base of adamkit's optimizers: groups, state, validation, checkpoints.

An optimizer class names its update rule, its hyperparameters and its state layout;
this base does the rest the way ``torch.optim`` does it, so param groups, state dicts,
hooks, schedulers and ``GradScaler`` see an ordinary ``torch.optim.Optimizer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from adamkit.kernels import eager_step


def scalar_dtype(fused: bool | None = None) -> torch.dtype:
    """dtype of the ``step`` counter, as torch.optim chooses it."""
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def squeeze_scalar(value: float | Tensor) -> float | Tensor:
    """A 1-element tensor hyperparameter becomes 0-dim; numbers pass through."""
    if isinstance(value, Tensor) and value.dim() != 0:
        return value.squeeze()
    return value


def check_non_negative(name: str, value: float | Tensor) -> None:
    """Raise torch's ValueError for a negative (or NaN) hyperparameter."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name}: {value}")


def check_tensor_lr(lr: float | Tensor, *, foreach: bool | None, capturable: bool) -> None:
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")


def check_betas(betas: tuple[float | Tensor, float | Tensor], *, foreach: bool | None, capturable: bool) -> None:
    """Adam-style ``betas``: each in [0, 1), both floats or both 1-element tensors."""
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if not (
        all(isinstance(beta, float) for beta in betas) or all(isinstance(beta, Tensor) for beta in betas)
    ):
        raise ValueError("betas must be either both floats or both Tensors")
    for index, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            if not capturable and foreach:
                raise ValueError(
                    f"betas[{index}] as a Tensor is not supported for capturable=False and foreach=True"
                )
            if beta.numel() != 1:
                raise ValueError(f"Tensor betas[{index}] must be 1-element")


def capturable_devices() -> list[str]:
    return ["cuda", "xpu", "hpu", torch._C._get_privateuse1_backend_name(), "xla"]


class RuleOptimizer(Optimizer):
    """Base class: runs ``update_rule`` over every parameter that has a gradient.

    Subclasses set ``update_rule``, ``flag_defaults`` (group keys filled in when an old
    checkpoint lacks them) and implement ``init_state`` (the moments of a new parameter).
    The other class attributes say how the algorithm differs from Adam's conventions:
    ``counts_steps`` (a ``step`` tensor in the state), ``complex_as_real`` (the rule sees
    complex tensors as real views) and ``sparse_grad_error`` (None where sparse
    gradients are supported).
    """

    update_rule: ClassVar[Callable]
    flag_defaults: ClassVar[dict[str, Any]]
    counts_steps: ClassVar[bool] = True
    complex_as_real: ClassVar[bool] = True
    sparse_grad_error: ClassVar[str | None]

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        if defaults.get("fused"):
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The algorithm's state tensors for a parameter seen for the first time."""
        raise NotImplementedError

    def decoupled_weight_decay(self, group: dict[str, Any]) -> bool:
        return bool(group.get("decoupled_weight_decay", False))

    def check_grad(self, param: Tensor, group: dict[str, Any]) -> None:
        """Raise for a gradient this algorithm cannot use."""
        if param.grad.is_sparse and self.sparse_grad_error is not None:
            raise RuntimeError(self.sparse_grad_error)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in self.flag_defaults.items():
                group.setdefault(key, default)
            if not self.counts_steps:
                continue
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    on_device = group.get("capturable") or group.get("fused")
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]),
                        dtype=scalar_dtype(group.get("fused")),
                        device=p.device if on_device else "cpu",
                    )

    def new_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        if self.counts_steps:
            if group.get("fused"):
                if not (
                    param.device.type in _get_fused_kernels_supported_devices()
                    and torch.is_floating_point(param)
                ):
                    raise RuntimeError(
                        "`fused=True` requires all the params to be floating point Tensors of "
                        f"supported devices: {_get_fused_kernels_supported_devices()} "
                        f"but {param.dtype} and {param.device.type}"
                    )
            on_device = group.get("capturable") or group.get("fused")
            state["step"] = (
                torch.zeros((), dtype=scalar_dtype(group.get("fused")), device=param.device)
                if on_device
                else torch.tensor(0.0, dtype=scalar_dtype())
            )
        state.update(self.init_state(param, group))
        return state

    def _params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            self.check_grad(p, group)
            state = self.state.get(p)
            if not state:
                # Stateless algorithms (SGD without momentum) leave no entry, as in torch.
                state = self.new_state(p, group)
                if state:
                    self.state[p] = state
            if group.get("differentiable") and "step" in state and state["step"].requires_grad:
                raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")
            if group.get("foreach") and torch.is_tensor(group["lr"]) and not group.get("capturable"):
                raise RuntimeError("lr as a Tensor is not supported for capturable=False and foreach=True")
            if group.get("capturable") and not torch.compiler.is_compiling():
                step = state.get("step")
                devices = capturable_devices()
                if not (
                    p.device.type in devices and (step is None or step.device.type == p.device.type)
                ):
                    raise AssertionError(
                        "If capturable=True, params and state_steps must be on supported devices: "
                        f"{devices}."
                    )
            params.append(p)
        return params

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(self.defaults.get("differentiable", False))
        try:
            for group in self.param_groups:
                params = self._params_with_grad(group)
                if not params:
                    continue
                hp = dict(group)
                hp["lr"] = squeeze_scalar(group["lr"])
                eager_step(
                    type(self).update_rule,
                    params,
                    self.state,
                    hp,
                    decoupled_weight_decay=self.decoupled_weight_decay(group),
                    step_as_tensor=bool(group.get("capturable") or group.get("differentiable")),
                    complex_as_real=self.complex_as_real,
                )
        finally:
            torch.set_grad_enabled(grad_enabled)
        return loss
