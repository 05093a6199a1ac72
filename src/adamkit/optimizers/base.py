"""The shared base of adamkit's optimizers: groups, state, validation, checkpoints.

An optimizer class names its update rule, its hyperparameters and its state layout;
this base does the rest the way ``torch.optim`` does it, so param groups, state dicts,
hooks, schedulers and ``GradScaler`` see an ordinary ``torch.optim.Optimizer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import math
import operator
from itertools import repeat
import warnings

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from adamkit.kernels import eager_step, fused_cpu
from adamkit.kernels.fused import FusedKernel
from adamkit.kernels.fused_cpu import FusedCpuKernel
from adamkit.kernels.fused_cuda import FusedCudaKernel
from adamkit.optimizers.agreement import GradientChecks, agreement_group, is_sharded, on_any_rank
from adamkit.rules import Rule
from adamkit.state import allocate_flat_state, like_param, local_tensor
from adamkit.state.formats import (
    MIN_ELEMENTS, SCALE_SUFFIX, StateSpec, blocks_of, check_state_dtype, constant_codes, dequantize,
)

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


_grad_of = operator.attrgetter("grad")


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


def _in_params_dtype(state: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """A parameter's state as torch keeps it: every state tensor in the parameter's dtype,
    int8 codes decoded with their scales (which are left out)."""
    plain = {}
    for name, value in state.items():
        if name.endswith(SCALE_SUFFIX) or name == "step" or not torch.is_tensor(value):
            if not name.endswith(SCALE_SUFFIX):
                plain[name] = value
        elif value.dtype is torch.int8:
            values = dequantize(local_tensor(value), state[name + SCALE_SUFFIX]).to(dtype)
            plain[name] = like_param(values, value)  # a DTensor's codes: values sharded like them
        else:
            plain[name] = value.to(dtype) if value.dtype != dtype else value
    return plain


def _local_copies(params: list[Tensor]) -> list[Tensor]:
    """Copies of ``params``' values (a DTensor's local shard: comparing DTensors is a collective)."""
    return [local_tensor(p).detach().clone() for p in params]


def _changed(params: list[Tensor], copies: list[Tensor]) -> list[Tensor]:
    """The parameters whose values differ from their ``_local_copies``."""
    return [p for p, old in zip(params, copies) if not torch.equal(local_tensor(p).detach(), old)]


def _fused_kernels() -> list[FusedKernel]:
    """The fused kernels an optimizer tries, in order; the eager kernel takes the rest."""
    return [FusedCudaKernel(), FusedCpuKernel()]


def capturable_devices() -> list[str]:
    return ["cuda", "xpu", "hpu", torch._C._get_privateuse1_backend_name(), "xla"]


class RuleOptimizer(Optimizer):
    """Base class: runs ``update_rule`` over every parameter that has a gradient.

    Subclasses set ``update_rule``, ``flag_defaults`` (group keys filled in when an old
    checkpoint lacks them) and implement ``init_state`` (the moments of a new parameter).
    The other class attributes say how the algorithm differs from Adam's conventions:
    ``counts_steps`` (a ``step`` tensor in the state), ``complex_as_real`` (the rule sees
    complex tensors as real views), ``sparse_grad_error`` (None where sparse
    gradients are supported) and ``eager_state`` (state created at construction, as
    torch's Adagrad does, instead of at a parameter's first step).

    Beyond torch, every adamkit optimizer can freeze parameters (``freeze``), clear
    their state (``reset_state``), skip steps with non-finite gradients
    (``skip_nonfinite=True``; counted in ``skipped_steps``) and warns once per
    parameter when weight decay or momentum moves a parameter whose gradient is all
    zeros (``warn_zero_grad_update=False`` turns that off). ``state_dtype`` ("fp32",
    "bf16", "int8") stores the state in another format than the parameter's dtype, for
    tensors of at least ``low_precision_min_elements`` elements (``adamkit.state.formats``);
    ``state_seed`` seeds bf16's stochastic rounding.

    Under ``torch.distributed`` both gradient checks are agreed on by the ranks of
    ``process_group`` (default: the default group, when initialized), one small
    ``all_reduce`` per step while a check is on (``adamkit.optimizers.agreement``). The
    group is not pickled: a copy or an unpickled optimizer uses the default group.
    """

    update_rule: ClassVar[Rule]
    flag_defaults: ClassVar[dict[str, Any]]
    _step_supports_amp_scaling: ClassVar[bool] = True  # see step()
    counts_steps: ClassVar[bool] = True
    complex_as_real: ClassVar[bool] = True
    sparse_grad_error: ClassVar[str | None]
    eager_state: ClassVar[bool] = False

    # Optimizer.__getstate__ keeps only defaults, state and param_groups; these must
    # survive copy.deepcopy and pickling too.
    _extra_attributes = (
        "skip_nonfinite", "warn_zero_grad_update", "skipped_steps", "frozen", "state_dtype", "state_seed",
        "low_precision_min_elements", "rounds",
    )

    def __init__(
        self,
        params,
        defaults: dict[str, Any],
        *,
        skip_nonfinite: bool = False,
        warn_zero_grad_update: bool = True,
        state_dtype: str | None = None,
        state_seed: int = 0,
        low_precision_min_elements: int = MIN_ELEMENTS,
        process_group: ProcessGroup | None = None,
    ) -> None:
        check_state_dtype(state_dtype)
        if low_precision_min_elements < 0:
            raise ValueError(
                f"Invalid low_precision_min_elements: {low_precision_min_elements}; use 0 or more elements"
            )
        self.state_dtype, self.state_seed = state_dtype, state_seed
        self.process_group = process_group
        self.low_precision_min_elements = low_precision_min_elements
        self.rounds = 0
        super().__init__(params, defaults)
        if defaults.get("fused"):
            if defaults.get("differentiable"):
                raise RuntimeError("`fused` does not support `differentiable`")
            if defaults.get("foreach"):
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self.skip_nonfinite = skip_nonfinite
        self.warn_zero_grad_update = warn_zero_grad_update
        self.skipped_steps = 0
        self.frozen: set[Tensor] = set()
        self._warned_zero_grad: set[Tensor] = set()
        self._moved_shards: set[Tensor] = set()
        self.fused_kernels = _fused_kernels()
        self.last_step_kernels: dict[str, int] = {}
        if self.eager_state:
            for group in self.param_groups:
                self._create_state(group["params"], group)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: getattr(self, name) for name in self._extra_attributes})
        return state

    def state_fills(self, group: dict[str, Any]) -> dict[str, float | None]:
        """The state tensors a parameter of ``group`` has after a step, with their initial
        value; None for one the rule creates on its first step (SGD's momentum buffer)."""
        raise NotImplementedError

    def init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The algorithm's state tensors for a parameter seen for the first time, each
        real component at its fill (a complex one at ``fill + fill j``, as torch's Adagrad),
        in the optimizer's state format."""
        state = {}
        dtype = self.state_spec(group).storage_dtype(param)
        for name, fill in self.state_fills(group).items():
            if fill is not None and dtype is torch.int8:
                code = constant_codes(fill)
                state[name] = torch.full_like(param, code, dtype=dtype, memory_format=torch.preserve_format)
                blocks = blocks_of(local_tensor(param))  # a shard's blocks: each rank scales its own
                state[name + SCALE_SUFFIX] = torch.full((blocks,), fill, dtype=torch.float32, device=param.device)
            elif fill is not None:
                state[name] = torch.empty_like(param, dtype=dtype, memory_format=torch.preserve_format)
                (torch.view_as_real(state[name]) if param.is_complex() else state[name]).fill_(fill)
        return state

    def decoupled_weight_decay(self, group: dict[str, Any]) -> bool:
        return bool(group.get("decoupled_weight_decay", False))

    def check_grad(self, param: Tensor, group: dict[str, Any]) -> None:
        """Raise for a gradient this algorithm cannot use."""
        if param.grad.is_sparse and self.sparse_grad_error is not None:
            raise RuntimeError(self.sparse_grad_error)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("skip_nonfinite", False)
        self.__dict__.setdefault("warn_zero_grad_update", True)
        self.__dict__.setdefault("skipped_steps", 0)
        self.__dict__.setdefault("frozen", set())
        self.__dict__.setdefault("_warned_zero_grad", set())
        self.__dict__.setdefault("_moved_shards", set())
        self.__dict__.setdefault("process_group", None)
        self.__dict__.setdefault("fused_kernels", _fused_kernels())
        self.__dict__.setdefault("last_step_kernels", {})
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("state_seed", 0)
        self.__dict__.setdefault("low_precision_min_elements", MIN_ELEMENTS)
        self.__dict__.setdefault("rounds", 0)
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

    def state_spec(self, group: dict[str, Any]) -> StateSpec:
        """What ``group``'s state is: its tensors, step counter and storage format."""
        return StateSpec(
            fills=self.state_fills(group),
            step_dtype=scalar_dtype(group.get("fused")) if self.counts_steps else None,
            state_dtype=self.state_dtype,
            min_elements=self.low_precision_min_elements,
            seed=self.state_seed,
            tensor_ids=self._tensor_ids(),
            rounds=self.rounds,
        )

    def _tensor_ids(self) -> dict[int, int]:
        """id(param) -> the parameter's index in the optimizer (its key in ``state_dict``),
        which keys its stochastic rounding; made again when parameters are added."""
        count = sum(len(group["params"]) for group in self.param_groups)
        ids = self.__dict__.get("_tensor_id_cache")
        if ids is None or len(ids) != count:
            ids = {id(p): index for index, p in enumerate(p for group in self.param_groups for p in group["params"])}
            self._tensor_id_cache = ids
        return ids

    def state_dict(self, compact: bool = False) -> dict[str, Any]:
        """torch's ``state_dict``, each parameter's state a plain dict of torch's tensors,
        so that ``torch.load(weights_only=True)`` and torch.optim read it: state kept in
        a low-precision format comes in the parameter's dtype, unless ``compact``, which
        gives it as stored (``load_state_dict`` takes either). With a ``state_dtype``,
        each param group also carries ``rounds``, the steps taken (it keys the rounding
        of rules without a step count), where ``torch.distributed.checkpoint``'s
        optimizer state dicts keep it."""
        state_dict = super().state_dict()
        params = [p for group in self.param_groups for p in group["params"]]
        state_dict["state"] = {
            index: dict(state) if compact else _in_params_dtype(state, params[index].dtype)
            for index, state in state_dict["state"].items()
        }
        if self.state_dtype is not None:
            for group in state_dict["param_groups"]:
                group["rounds"] = self.rounds
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, refusing state tensors shaped unlike their
        parameter; then the state takes the optimizer's ``state_dtype`` and the fused
        kernel's state moves into flat buffers."""
        self._check_loaded_shapes(state_dict)
        # torch casts every loaded state tensor to its parameter's dtype: int8 state in its
        # stored form (codes and fp32 scales) is taken as it is instead.
        stored = {
            index: {
                name: value for name, value in state.items()
                if name.endswith(SCALE_SUFFIX) or name + SCALE_SUFFIX in state
            }
            for index, state in state_dict["state"].items()
        }
        param_of = self._params_by_key(state_dict)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self.rounds = group.pop("rounds", self.rounds)
        for key, kept in stored.items():
            self.state[param_of[key]].update({name: value.to(param_of[key].device) for name, value in kept.items()})
        for kernel in self.fused_kernels:
            kernel.forget()
        for group in self.param_groups:
            fused = self.uses_fused_kernel(group)
            batches: dict[tuple, list[Tensor]] = {}
            for p in group["params"]:
                state = self.state.get(p)
                flat = fused and self._fused_takes(p)
                # Other state is torch's as loaded, unless it has a format to take.
                if state and (flat or self.state_dtype is not None) and all(map(torch.is_tensor, state.values())):
                    step = state.get("step")
                    names = tuple(name for name in state if name != "step" and not name.endswith(SCALE_SUFFIX))
                    key = (flat, p.dtype, names, None if step is None else step.dtype)
                    batches.setdefault(key, []).append(p)
            storage = self.state_spec(group).storage_dtype
            for (flat, _, names, step_dtype), params in batches.items():
                initial = [self.state[p] for p in params]
                formatted = allocate_flat_state(
                    params, dict.fromkeys(names, 0.0), step_dtype=step_dtype if flat else None, initial=initial,
                    storage=storage,
                )
                for p, old, state in zip(params, initial, formatted):
                    if flat:
                        self.state[p] = state
                    else:  # the eager kernel's step counter stays where it is (on the device if capturable)
                        old.update(state)

    def _params_by_key(self, state_dict: dict[str, Any]) -> dict[Any, Tensor]:
        """The parameter each key of a state dict to load stands for: an index, or a name
        (``torch.distributed.checkpoint``'s optimizer state dicts), matched by position in
        the param groups, as torch matches them."""
        return {
            key: param
            for saved, group in zip(state_dict.get("param_groups", []), self.param_groups)
            for key, param in zip(saved.get("params", []), group["params"])
        }

    def _check_loaded_shapes(self, state_dict: dict[str, Any]) -> None:
        if len(state_dict.get("param_groups", [])) != len(self.param_groups):
            return  # torch's own check names this
        params = self._params_by_key(state_dict)
        for index, state in state_dict.get("state", {}).items():
            param = params.get(index)
            for key, value in state.items() if param is not None else ():
                if key.endswith(SCALE_SUFFIX):
                    blocks = blocks_of(local_tensor(param))
                    if not (torch.is_tensor(value) and value.numel() == blocks):
                        raise ValueError(
                            f"loaded int8 block scales {key!r} of parameter {index} are not "
                            f"{blocks} values, one per 256 of the parameter's elements (under FSDP2, "
                            "of this rank's shard): a compact state dict loads only into the same sharding; "
                            "save state_dict() without compact=True to load it elsewhere"
                        )
                elif torch.is_tensor(value) and key != "step" and value.shape != param.shape:
                    raise ValueError(
                        f"loaded state {key!r} of parameter {index} has shape {tuple(value.shape)}, but the "
                        f"parameter has shape {tuple(param.shape)}: this state dict belongs to other parameters "
                        "(or lists them in another order)"
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

    def _create_state(self, params: list[Tensor], group: dict[str, Any]) -> None:
        """Give ``params`` (of ``group``) their initial state now, not at their first step;
        in flat buffers where the fused kernel will use it."""
        created: dict[int, dict[str, Tensor]] = {}
        if self.uses_fused_kernel(group):
            batches: dict[torch.dtype, list[Tensor]] = {}
            for p in params:
                if self._fused_takes(p):
                    batches.setdefault((p.dtype, p.device), []).append(p)
            spec = self.state_spec(group)
            fills = {name: fill for name, fill in spec.fills.items() if fill is not None}
            for batch in batches.values():
                made = allocate_flat_state(batch, fills, step_dtype=spec.step_dtype, storage=spec.storage_dtype)
                created.update(zip(map(id, batch), made))
        for p in params:
            self.state[p] = created.get(id(p)) or self.new_state(p, group)

    def _params_with_grad(self, group: dict[str, Any], candidates: list[Tensor] | None = None) -> list[Tensor]:
        params = []
        for p in group["params"] if candidates is None else candidates:
            if p.grad is None or p in self.frozen:
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

    def _group_of(self, param: Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(
            f"parameter of shape {tuple(param.shape)} is not in this optimizer; "
            "pass parameters that were given to it (or add them with add_param_group)"
        )

    def freeze(self, params) -> None:
        """Leave ``params`` and their state bit-for-bit unchanged by ``step()``, whatever their grad."""
        for p in params:
            self._group_of(p)
            self.frozen.add(p)

    def unfreeze(self, params, *, reset: bool = False) -> None:
        """Let ``params`` train again, with their kept state or, with ``reset=True``, fresh state."""
        params = list(params)
        for p in params:
            self._group_of(p)
            self.frozen.discard(p)
        if reset:
            self.reset_state(params)

    def reset_state(self, params=None) -> None:
        """Clear the moments and step count of ``params`` (default: every parameter).

        A cleared parameter starts again as on its first step.

        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.ones(2)); w.grad = torch.ones(2)
        >>> optimizer = adamkit.Adam([w]); optimizer.step()
        >>> optimizer.reset_state(); len(optimizer.state[w])
        0
        """
        if params is None:
            params = [p for group in self.param_groups for p in group["params"]]
        by_group: dict[int, tuple[dict[str, Any], list[Tensor]]] = {}
        for p in params:
            group = self._group_of(p)
            by_group.setdefault(id(group), (group, []))[1].append(p)
        for group, group_params in by_group.values():
            if self.eager_state:
                self._create_state(group_params, group)
            else:
                for p in group_params:
                    self.state.pop(p, None)

    def _unfrozen_with_grad(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None and p not in self.frozen]

    @staticmethod
    def _grad_extremes(params: list[Tensor]) -> dict[Tensor, tuple[float, float]]:
        """(min, max) of each parameter's gradient: one pass each and one host sync in all.

        A gradient is finite when both are, all zeros when both are 0 (NaN compares
        unequal, so a NaN gradient is never "all zeros").
        """
        with_values, extremes = [], []
        for p in params:
            grad = local_tensor(p.grad)  # this rank's shard of a DTensor
            if grad.device.type == "meta":
                continue  # no values to look at
            if grad.is_sparse:
                grad = grad.coalesce().values()
            if torch.is_complex(grad):
                grad = torch.view_as_real(grad)
            if grad.numel():
                with_values.append(p)
                extremes.append(torch.stack(torch.aminmax(grad.detach())).float().cpu())
        if not with_values:
            return {}
        return dict(zip(with_values, map(tuple, torch.stack(extremes).tolist())))

    def _unscale_grads(self, grad_scale: Tensor) -> None:
        """Divide every gradient by the loss scale, in place, as torch's fused optimizers do
        (GradScaler's scales are powers of two: exact)."""
        by_device: dict[tuple, list[Tensor]] = {}
        for p in self._unfrozen_with_grad():
            grad = p.grad
            if grad.is_sparse:
                grad.div_(grad_scale.to(grad.device))
            else:
                by_device.setdefault((grad.device, grad.dtype), []).append(grad)
        for (device, _), grads in by_device.items():
            torch._foreach_div_(grads, grad_scale.to(device))

    def _grads_finite(self) -> bool:
        """Whether every unfrozen gradient is finite; the fused kernel's check where it applies."""
        params = self._unfrozen_with_grad()
        grads = list(map(_grad_of, params))
        flags = fused_cpu.readable(grads)
        other = [p for p, readable in zip(params, flags) if not readable]
        readable = [g for g, flag in zip(grads, flags) if flag]
        return fused_cpu.all_finite(type(self).update_rule, readable) and all(
            math.isfinite(low) and math.isfinite(high) for low, high in self._grad_extremes(other).values()
        )

    def _grads_nonzero(self, params: list[Tensor]) -> list[bool]:
        """Per parameter: its gradient (this rank's shard of it) has a nonzero element; the
        fused kernel's read where it applies, else one ``aminmax``."""
        grads = list(map(_grad_of, params))
        flags = fused_cpu.readable(grads)
        read = iter(fused_cpu.any_nonzero(type(self).update_rule, [g for g, flag in zip(grads, flags) if flag]))
        extremes = self._grad_extremes([p for p, flag in zip(params, flags) if not flag])
        return [next(read) if flag else extremes.get(p, (0.0, 0.0)) != (0.0, 0.0) for p, flag in zip(params, flags)]

    def _agreed_checks(self, overflowed: bool, scaled: bool) -> GradientChecks:
        """This step's gradient checks, as every rank of the agreement group sees them
        (``adamkit.optimizers.agreement``); without a group, this rank's own.
        ``overflowed``: a GradScaler (``scaled``: one is in use) said to skip this step."""
        finite = not self.skip_nonfinite or self._grads_finite()
        group = agreement_group(self.process_group)
        if group is None:
            return GradientChecks(overflowed, finite, frozenset(), [], [])
        # A capturable step must not wait for the device (CUDA graphs): no zero-grad check.
        sharded = [p for g in self.param_groups if not g.get("capturable") for p in g["params"] if is_sharded(p)]
        watched = sharded if self.warn_zero_grad_update else []
        if not (scaled or self.skip_nonfinite or watched):
            return GradientChecks(overflowed, finite, frozenset(sharded), [], [])
        stepping = [p.grad is not None and p not in self.frozen for p in watched]
        stepped = [p for p, steps in zip(watched, stepping) if steps]
        nonzero_of = dict(zip(stepped, self._grads_nonzero(stepped)))
        nonzero = [nonzero_of.get(p, False) for p in watched]
        moved = [p in self._moved_shards for p in watched]
        flags = on_any_rank([overflowed, not finite, *nonzero, *moved], group)
        self._moved_shards = set()
        zero = [
            p for p, steps, anywhere in zip(watched, stepping, flags[2:])
            if steps and not anywhere and p not in self._warned_zero_grad
        ]
        return GradientChecks(
            overflowed=flags[0],
            finite=not flags[1],
            sharded=frozenset(sharded),
            zero=zero,
            moved_earlier=[p for p, anywhere in zip(watched, flags[2 + len(watched):]) if anywhere],
        )

    def _warn_moved(self, params: list[Tensor]) -> None:
        for p in params:
            if p in self._warned_zero_grad:
                continue
            self._warned_zero_grad.add(p)
            warnings.warn(
                f"{type(self).__name__}: a parameter of shape {tuple(p.shape)} has an all-zero "
                "gradient but a step changed it (weight decay or momentum). A zero gradient "
                "does not freeze a parameter: use adamkit.freeze(optimizer, params), or set its "
                ".grad to None. Pass warn_zero_grad_update=False to silence this warning.",
                stacklevel=4,
            )

    def uses_fused_kernel(self, group: dict[str, Any]) -> bool:
        """Whether ``group`` runs on the fused CPU kernel (where its tensors allow).

        It does unless the group asks for torch's for-loop (``foreach=False``) or needs
        autograd or device-side scalars (``differentiable``, ``capturable``).
        """
        return not (
            group.get("foreach") is False
            or group.get("differentiable")
            or group.get("capturable")
            or torch.compiler.is_compiling()
        )

    def _fused_takes(self, param: Tensor) -> bool:
        return any(kernel.takes(param, param) for kernel in self.fused_kernels)

    def _fused_group_step(self, group: dict[str, Any], hp: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        """Step what the fused kernels take of the group's unfrozen parameters with a
        gradient, each kernel what the one before left. Returns the rest, for the eager
        kernel, and the stepped ones whose all-zero gradient did not keep them still."""
        frozen = self.frozen
        spec = self.state_spec(group)
        params = group["params"]
        grads = list(map(_grad_of, params))
        if frozen or any(map(operator.is_, grads, repeat(None))):
            active = [(p, g) for p, g in zip(params, grads) if g is not None and p not in frozen]
            params, grads = [p for p, _ in active], [g for _, g in active]
        moved, rest = [], []
        for kernel in self.fused_kernels:
            on_device = list(map(kernel.on_device, params))
            if not any(on_device):
                continue
            mine = [(p, g) for p, g, here in zip(params, grads, on_device) if here] if not all(on_device) else None
            if mine is not None:
                others = [(p, g) for p, g, here in zip(params, grads, on_device) if not here]
                params, grads, later = [p for p, _ in mine], [g for _, g in mine], others
            else:
                later = []
            left, kernel_moved, stepped = kernel.step_group(
                type(self).update_rule,
                id(group),
                params,
                grads,
                self.state,
                spec,
                hp,
                decoupled_weight_decay=self.decoupled_weight_decay(group),
                report_moved=self.warn_zero_grad_update,
            )
            moved += kernel_moved
            if stepped:
                self.last_step_kernels[kernel.name] = self.last_step_kernels.get(kernel.name, 0) + stepped
            rest += left
            params, grads = [p for p, _ in later], [g for _, g in later]
        return rest + params, moved

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # torch.amp.GradScaler hands optimizers that support it the loss scale and whether
        # a gradient overflowed, instead of unscaling and checking them itself.
        found_inf = getattr(self, "found_inf", None)
        overflowed = found_inf is not None and bool(found_inf)  # one host sync on a GPU, as GradScaler's own path
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None and not overflowed:
            self._unscale_grads(grad_scale)

        checks = self._agreed_checks(overflowed, found_inf is not None)
        if self.warn_zero_grad_update:
            self._warn_moved(checks.moved_earlier)
        if checks.overflowed:
            self.last_step_kernels = {}
            return loss
        if not checks.finite:
            self.skipped_steps += 1
            warnings.warn(
                f"{type(self).__name__}: skipped a step because a gradient holds NaN or Inf "
                f"({self.skipped_steps} skipped so far); parameters and state are unchanged.",
                stacklevel=3,
            )
            return loss

        self.last_step_kernels = {}
        self.rounds += 1
        zero_shards = _local_copies(checks.zero)
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(self.defaults.get("differentiable", False))
        try:
            for group in self.param_groups:
                hp = dict(group)
                hp["lr"] = squeeze_scalar(group["lr"])
                exact = self.uses_fused_kernel(group)
                if exact:
                    rest, moved = self._fused_group_step(group, hp)
                    if self.warn_zero_grad_update:
                        # A shard's all-zero gradient is not the whole gradient: DTensors are watched below.
                        self._warn_moved([p for p in moved if p not in checks.sharded])
                    if not rest:
                        continue
                    params = self._params_with_grad(group, rest)
                else:
                    params = self._params_with_grad(group)
                if not params:
                    continue
                # A capturable step must not wait for the device (CUDA graphs): no zero-grad check.
                watch = self.warn_zero_grad_update and not group.get("capturable")
                whole = [p for p in params if p not in checks.sharded]
                extremes = self._grad_extremes(whole) if watch else {}
                zero_grad_params = [
                    p for p in whole if p not in self._warned_zero_grad and extremes.get(p) == (0.0, 0.0)
                ]
                before = _local_copies(zero_grad_params)
                eager_step(
                    type(self).update_rule,
                    params,
                    self.state,
                    hp,
                    decoupled_weight_decay=self.decoupled_weight_decay(group),
                    step_as_tensor=bool(group.get("capturable") or group.get("differentiable")),
                    complex_as_real=self.complex_as_real,
                    exact=exact,
                    spec=self.state_spec(group),
                )
                self.last_step_kernels["eager"] = self.last_step_kernels.get("eager", 0) + len(params)
                self._warn_moved(_changed(zero_grad_params, before))
        finally:
            torch.set_grad_enabled(grad_enabled)
        # Known only now, and on this rank only: told to every rank by the next step's checks.
        self._moved_shards = set(_changed(checks.zero, zero_shards))
        return loss
