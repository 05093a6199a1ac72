"""The shared base of adamkit's optimizers: torch.optim's contract, and a step's outline.

An optimizer class names its update rule, its hyperparameters and its state layout;
this base does the rest the way ``torch.optim`` does it, so param groups, state dicts,
hooks, schedulers and ``GradScaler`` see an ordinary ``torch.optim.Optimizer``. The
parts of a step live beside it: ``gradient_checks`` (non-finite skip, zero-gradient
warning, agreed across ranks by ``agreement``), ``grad_scaling`` (the GradScaler
protocol), ``dispatch`` (which kernel steps what; all or nothing), ``state_creation``
and ``checkpoint_format``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import torch
from torch import Tensor
from torch.optim import Optimizer

from adamkit.kernels.fused import FusedKernel
from adamkit.kernels.fused_cpu import FusedCpuKernel
from adamkit.kernels.fused_cuda import FusedCudaKernel
from adamkit.optimizers import checkpoint_format, gradient_checks
from adamkit.optimizers.clipping import clip_coefficient
from adamkit.optimizers.dispatch import prepare_step
from adamkit.optimizers.grad_scaling import scaler_verdict, unscale_grads
from adamkit.optimizers.hyperparameters import check_clipping_options, check_state_options, scalar_dtype
from adamkit.optimizers.state_creation import create_state_now
from adamkit.rules import Rule
from adamkit.state import allocate_flat_state
from adamkit.state.formats import MIN_ELEMENTS, SCALE_SUFFIX, StateSpec, check_state_dtype

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


def _fused_kernels() -> list[FusedKernel]:
    """The fused kernels an optimizer tries, in order; the eager kernel takes the rest."""
    return [FusedCudaKernel(), FusedCpuKernel()]


class AdamkitOptions(TypedDict, total=False):
    """adamkit's keyword options beyond torch's signature, taken by every optimizer class
    and handed to :class:`RuleOptimizer` as they are (its docstring says what each does)."""

    skip_nonfinite: bool
    warn_zero_grad_update: bool
    state_dtype: str | None
    state_seed: int
    low_precision_min_elements: int
    process_group: ProcessGroup | None
    max_grad_norm: float | None
    norm_type: float | str
    error_if_nonfinite: bool


class RuleOptimizer(Optimizer):
    """Base class: runs ``update_rule`` over every parameter that has a gradient.

    Subclasses set ``update_rule``, ``flag_defaults`` where torch's class fills in other
    group keys for an old checkpoint, and implement ``state_fills`` (the state of a new
    parameter) and the constructor: torch's signature and checks, adamkit's options
    (``AdamkitOptions``) passed on as ``**options``.
    The other class attributes say how the algorithm differs from Adam's conventions:
    ``counts_steps`` (a ``step`` tensor in the state), ``complex_as_real`` (the rule sees
    complex tensors as real views), ``sparse_grad_error`` (None where sparse
    gradients are supported), ``eager_state`` (state created at construction, as
    torch's Adagrad does, instead of at a parameter's first step) and
    ``second_moment_beta`` (the index in ``betas`` of the second moment's decay, for
    ``adamkit.trace``'s bias correction: Adan's is its third).

    Beyond torch, every adamkit optimizer can freeze parameters (``freeze``), clear
    their state (``reset_state``), skip steps with non-finite gradients
    (``skip_nonfinite=True``; counted in ``skipped_steps``) and warns once per
    parameter when weight decay or momentum moves a parameter whose gradient is all
    zeros (``warn_zero_grad_update=False`` turns that off). ``state_dtype`` ("fp32",
    "bf16", "int8"; also per param group) stores the state in another format than the
    parameter's dtype, for tensors of at least ``low_precision_min_elements`` elements
    (``adamkit.state.formats``); ``state_seed`` (0 to 2**32 - 1) seeds its stochastic
    rounding. ``max_grad_norm`` clips the gradients by their global norm inside the step,
    as ``torch.nn.utils.clip_grad_norm_(params, max_grad_norm, norm_type,
    error_if_nonfinite)`` before it would, without rewriting them; the norm before
    clipping is kept as ``last_grad_norm`` (``adamkit.optimizers.clipping``). A step that
    raises changes nothing (``adamkit.optimizers.dispatch``).

    Under ``torch.distributed`` both gradient checks are agreed on by the ranks of
    ``process_group`` (default: the default group, when initialized), one small
    ``all_reduce`` per step while a check is on (``adamkit.optimizers.agreement``). The
    group is not pickled: a copy or an unpickled optimizer uses the default group.
    """

    update_rule: ClassVar[Rule]
    # torch's __setstate__ defaults for the flags most of its optimizers share
    flag_defaults: ClassVar[dict[str, Any]] = {
        "foreach": None, "maximize": False, "differentiable": False, "capturable": False,
    }
    _step_supports_amp_scaling: ClassVar[bool] = True  # see grad_scaling
    counts_steps: ClassVar[bool] = True
    complex_as_real: ClassVar[bool] = True
    sparse_grad_error: ClassVar[str | None]  # default: torch's "<class name> does not support sparse gradients"
    eager_state: ClassVar[bool] = False
    second_moment_beta: ClassVar[int] = 1

    # Optimizer.__getstate__ keeps only defaults, state and param_groups; these must
    # survive copy.deepcopy and pickling too, and take these values when an older pickle lacks them.
    _extra_defaults: ClassVar[dict[str, Any]] = {
        "skip_nonfinite": False, "warn_zero_grad_update": True, "skipped_steps": 0, "frozen": set(),
        "state_dtype": None, "state_seed": 0, "low_precision_min_elements": MIN_ELEMENTS, "rounds": 0,
        "max_grad_norm": None, "norm_type": 2.0, "error_if_nonfinite": False,
    }

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "sparse_grad_error" not in vars(cls) and not hasattr(cls, "sparse_grad_error"):
            cls.sparse_grad_error = f"{cls.__name__} does not support sparse gradients"

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
        max_grad_norm: float | None = None,
        norm_type: float | str = 2.0,
        error_if_nonfinite: bool = False,
    ) -> None:
        check_state_options(state_dtype, state_seed, low_precision_min_elements)
        check_clipping_options(max_grad_norm, norm_type)
        self.max_grad_norm, self.norm_type, self.error_if_nonfinite = max_grad_norm, float(norm_type), error_if_nonfinite
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
        self._set_runtime_attributes()
        if self.eager_state:
            for group in self.param_groups:
                create_state_now(self, group["params"], group)

    def _set_runtime_attributes(self) -> None:
        """What an optimizer keeps only while it runs: kernels and their plans, warnings given."""
        self._warned_zero_grad: set[Tensor] = set()
        self._moved_shards: set[Tensor] = set()
        self.fused_kernels = _fused_kernels()
        self.last_step_kernels: dict[str, int] = {}
        self.last_grad_norm: Tensor | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``; a group may also set its own ``state_dtype``."""
        if isinstance(param_group, dict) and "state_dtype" in param_group:
            check_state_dtype(param_group["state_dtype"])
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: getattr(self, name) for name in self._extra_defaults})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for name, default in self._extra_defaults.items():
            self.__dict__.setdefault(name, type(default)(default) if isinstance(default, set) else default)
        self.__dict__.setdefault("process_group", None)
        if "fused_kernels" not in self.__dict__:
            self._set_runtime_attributes()
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

    def state_fills(self, group: dict[str, Any]) -> dict[str, float | None]:
        """The state tensors a parameter of ``group`` has after a step, with their initial
        value; None for one the rule creates on its first step (SGD's momentum buffer)."""
        raise NotImplementedError

    def scalar_fills(self, group: dict[str, Any]) -> dict[str, float]:
        """The initial values of the rule's scalar state (``Rule.scalar_state``) in ``group``."""
        return dict(self.update_rule.scalar_state)

    def decoupled_weight_decay(self, group: dict[str, Any]) -> bool:
        return bool(group.get("decoupled_weight_decay", False))

    def check_grad(self, param: Tensor, group: dict[str, Any]) -> None:
        """Raise for a gradient this algorithm cannot use."""
        if param.grad.is_sparse and self.sparse_grad_error is not None:
            raise RuntimeError(self.sparse_grad_error)

    def state_spec(self, group: dict[str, Any], rounds: int | None = None) -> StateSpec:
        """What ``group``'s state is: its tensors, step counter and storage format;
        ``rounds`` is the step being taken (default: the last one taken)."""
        return StateSpec(
            fills=self.state_fills(group),
            step_dtype=scalar_dtype(group.get("fused")) if self.counts_steps else None,
            scalar_fills=self.scalar_fills(group),
            wide_slots=frozenset(self.update_rule.full_precision_slots),
            state_dtype=group.get("state_dtype", self.state_dtype),
            min_elements=self.low_precision_min_elements,
            seed=self.state_seed,
            tensor_ids=self._tensor_ids(),
            rounds=self.rounds if rounds is None else rounds,
        )

    def formats_state(self) -> bool:
        """Whether any group keeps its state in a format of adamkit's (``state_dtype``)."""
        return any(group.get("state_dtype", self.state_dtype) is not None for group in self.param_groups)

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
        a low-precision format comes in the parameter's dtype. With ``compact``, state
        comes as stored, for adamkit alone (``adamkit.optimizers.checkpoint_format``);
        ``load_state_dict`` takes either. With a ``state_dtype``, each param group also
        carries ``rounds``, the steps taken (it keys the rounding of rules without a step
        count), where ``torch.distributed.checkpoint``'s optimizer state dicts keep it."""
        return checkpoint_format.convert_state_dict(self, super().state_dict(), compact)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, refusing state that does not fit its parameter;
        state saved as stored (``state_dict(compact=True)``) is kept bit for bit. Then the
        state takes the optimizer's ``state_dtype`` and the fused kernel's state moves
        into flat buffers."""
        checkpoint_format.check_loadable(self, state_dict)
        plain, stored = checkpoint_format.split_stored(state_dict)
        param_of = checkpoint_format.params_by_key(self, state_dict)
        super().load_state_dict(plain)
        for group in self.param_groups:
            self.rounds = group.pop("rounds", self.rounds)
        for key, kept in stored.items():
            self.state[param_of[key]].update({name: value.to(param_of[key].device) for name, value in kept.items()})
        for kernel in self.fused_kernels:
            kernel.forget()
        for group in self.param_groups:
            self._format_loaded_state(group)

    def _format_loaded_state(self, group: dict[str, Any]) -> None:
        """Move a group's loaded state into flat buffers (where the fused kernels step it)
        and its storage format."""
        fused = self.uses_fused_kernel(group)
        formatted = group.get("state_dtype", self.state_dtype) is not None
        batches: dict[tuple, list[Tensor]] = {}
        numbers = checkpoint_format.per_tensor_numbers(self)
        for p in group["params"]:
            state = self.state.get(p)
            flat = fused and self.fused_takes(p)
            # Other state is torch's as loaded, unless it has a format to take.
            if state and (flat or formatted) and all(map(torch.is_tensor, state.values())):
                step = state.get("step")
                names = tuple(name for name in state if name not in numbers and not name.endswith(SCALE_SUFFIX))
                key = (flat, p.dtype, names, None if step is None else step.dtype)
                batches.setdefault(key, []).append(p)
        spec = self.state_spec(group)
        for (flat, _, names, step_dtype), params in batches.items():
            initial = [self.state[p] for p in params]
            formatted_state = allocate_flat_state(
                params, dict.fromkeys(names, 0.0), step_dtype=step_dtype if flat else None,
                scalar_fills=spec.scalar_fills, initial=initial, storage=spec.storage_dtype,
            )
            for p, old, state in zip(params, initial, formatted_state):
                if flat:
                    self.state[p] = state
                else:  # the eager kernel's step counter and scalar state stay where they are (on the device if capturable)
                    old.update(state)

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
                create_state_now(self, group_params, group)
            else:
                for p in group_params:
                    self.state.pop(p, None)

    def unfrozen_with_grad(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None and p not in self.frozen]

    def uses_fused_kernel(self, group: dict[str, Any]) -> bool:
        """Whether ``group`` runs on the fused kernels (where its tensors allow).

        It does unless the group asks for torch's for-loop (``foreach=False``) or needs
        autograd or device-side scalars (``differentiable``, ``capturable``).
        """
        return not (
            group.get("foreach") is False
            or group.get("differentiable")
            or group.get("capturable")
            or torch.compiler.is_compiling()
        )

    def fused_takes(self, param: Tensor) -> bool:
        """Whether a fused kernel steps ``param`` (given a gradient laid out like it)."""
        return any(kernel.takes(param, param) for kernel in self.fused_kernels)

    def _check_graph_capture(self) -> None:
        """As torch: a step captured in a CUDA graph must be capturable, or the graph would
        replay one step's host-computed coefficients forever."""
        if torch.cuda.is_available() and not torch.compiler.is_compiling() and torch.cuda.is_current_stream_capturing():
            if not all(group["capturable"] for group in self.param_groups if "capturable" in group):
                raise RuntimeError(
                    f"Attempting CUDA graph capture of step() for an instance of {type(self).__name__} "
                    "but param_groups' capturable is False; construct it with capturable=True to capture its steps."
                )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss.

        All or nothing: a step that raises leaves parameters, state and step counts as they were.
        """
        self._check_graph_capture()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scaler = scaler_verdict(self)
        checks = gradient_checks.agreed_checks(self, scaler.overflowed, scaler.scaled)
        if self.warn_zero_grad_update:
            gradient_checks.warn_moved(self, checks.moved_earlier, stacklevel=3)
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

        zero_shards = gradient_checks.local_copies(checks.zero)
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(self.defaults.get("differentiable", False))
        try:
            prepared = prepare_step(self, checks)
            if scaler.grad_scale is not None:
                unscale_grads(self.unfrozen_with_grad(), scaler.grad_scale)
            try:
                grad_scale = clip_coefficient(self)
            except BaseException:
                prepared.undo()
                raise
            prepared.commit(stacklevel=3, grad_scale=grad_scale)
        finally:
            torch.set_grad_enabled(grad_enabled)
        # Known only now, and on this rank only: told to every rank by the next step's checks.
        self._moved_shards = set(gradient_checks.changed(checks.zero, zero_shards))
        return loss
