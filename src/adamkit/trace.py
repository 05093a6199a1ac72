"""Record what an optimizer does, step by step, from its own state.

``trace(optimizer)`` hooks into ``optimizer.step()``: before the step it copies the
traced parameters, after it reads the gradient and the optimizer's state. Nothing is
recomputed here, so a trace shows exactly what the optimizer did, whichever
``torch.optim.Optimizer`` it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from adamkit.state.formats import decoded

# State keys holding an algorithm's running moments of the gradient, by torch's names:
# Adam/AdamW/Yogi keep exp_avg and exp_avg_sq, centered RMSprop grad_avg and
# square_avg, Adagrad its sum of squares, Adamax exp_avg and exp_inf (an infinity norm,
# which is not bias-corrected).
FIRST_MOMENT_KEYS = ("exp_avg", "grad_avg")
SECOND_MOMENT_KEYS = ("exp_avg_sq", "square_avg", "sum", "exp_inf")

ParamsToTrace = Mapping[str, Tensor] | Iterable[Tensor] | Iterable[tuple[str, Tensor]]


@dataclass(frozen=True)
class StepRecord:
    """One parameter's part of one optimizer step; every tensor is a copy.

    ``grad`` is the gradient the step was given (before ``max_grad_norm`` clipping;
    the optimizer's ``last_grad_norm`` says by how much). ``exp_avg`` and ``exp_avg_sq`` are the first and second moments the algorithm
    keeps (``None`` where it keeps none; RMSprop's ``square_avg`` and Adagrad's ``sum``
    count as second moments, and so does Adamax's ``exp_inf``). ``m_hat`` and ``v_hat``
    are those moments divided by ``1 - beta1**step`` and ``1 - beta2**step``, for
    algorithms with ``betas`` (``v_hat`` only for an ``exp_avg_sq``).
    ``update`` is the new parameter minus the old; ``param`` is the new parameter.
    """

    step: int
    name: str
    index: int
    grad: Tensor
    exp_avg: Tensor | None
    exp_avg_sq: Tensor | None
    m_hat: Tensor | None
    v_hat: Tensor | None
    update: Tensor
    param: Tensor


TENSOR_FIELDS = tuple(
    field.name for field in fields(StepRecord) if field.name not in ("step", "name", "index")
)


def format_number(value: float) -> str:
    """Six significant digits, as short as they go.

    >>> format_number(0.0014400001), format_number(-1.2), format_number(1e-9)
    ('0.00144', '-1.2', '1e-09')
    """
    return f"{value:.6g}"


def element_label(name: str, shape: torch.Size, flat_index: int) -> str:
    """``name[i, j]`` for element ``flat_index`` of a tensor of ``shape``; ``name`` for a scalar.

    >>> element_label("theta", torch.Size([2]), 1), element_label("w", torch.Size([2, 3]), 4)
    ('theta[1]', 'w[1, 1]')
    """
    if not shape:
        return name
    position = torch.unravel_index(torch.tensor(flat_index), shape)
    return f"{name}[{', '.join(str(int(i)) for i in position)}]"


def _first_present(state: Mapping[str, Any], keys: tuple[str, ...]) -> Tensor | None:
    for key in keys:
        if torch.is_tensor(state.get(key)):
            return state[key]
    return None


def _copy(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().clone()


class Trace:
    """The records of a running trace; made by ``adamkit.trace``, which see."""

    def __init__(self, optimizer: Optimizer, params: ParamsToTrace | None = None) -> None:
        self.optimizer = optimizer
        self.records: list[StepRecord] = []
        self._chosen = None if params is None else self._name_params(params)
        self._params_before: list[tuple[str, int, Tensor, Tensor]] = []
        # Steps seen per parameter, for algorithms whose state has no step counter (SGD).
        self._steps_seen: dict[Tensor, int] = {}
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _name_params(self, params: ParamsToTrace) -> list[tuple[str, Tensor]]:
        items = list(params.items()) if isinstance(params, Mapping) else list(params)
        positions = {id(p): index for index, p in enumerate(self._all_params())}
        named = []
        for item in items:
            name, param = item if isinstance(item, tuple) else (None, item)
            if id(param) not in positions:
                label = f"{name!r} " if name else ""
                raise ValueError(f"parameter {label}is not in the optimizer's param_groups")
            named.append((name or f"param{positions[id(param)]}", param))
        return named

    def _traced(self) -> list[tuple[str, int, Tensor]]:
        # Parameters are looked up at every step, so that groups added later are traced
        # when no particular parameters were chosen.
        positions = {id(p): index for index, p in enumerate(self._all_params())}
        named = self._chosen
        if named is None:
            named = [(f"param{index}", p) for index, p in enumerate(self._all_params())]
        return [(name, positions[id(p)], p) for name, p in named]

    def _before_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        self._params_before = [(name, index, p, p.detach().clone()) for name, index, p in self._traced()]

    def _after_step(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        betas_of = {id(p): group.get("betas") for group in optimizer.param_groups for p in group["params"]}
        for name, index, param, before in self._params_before:
            # The gradient is read after the step, not before: with step(closure) it
            # only exists once the closure ran. Optimizers never write to .grad.
            if param.grad is None:
                continue
            state = decoded(optimizer.state.get(param, {}))  # int8 state as values, not codes
            self._steps_seen[param] = self._steps_seen.get(param, 0) + 1
            step = int(state["step"]) if "step" in state else self._steps_seen[param]
            exp_avg = _copy(_first_present(state, FIRST_MOMENT_KEYS))
            exp_avg_sq = _copy(_first_present(state, SECOND_MOMENT_KEYS))
            m_hat = v_hat = None
            betas = betas_of[id(param)]
            if betas is not None and exp_avg is not None and exp_avg_sq is not None:
                beta1, beta2 = float(betas[0]), float(betas[getattr(optimizer, "second_moment_beta", 1)])
                m_hat = exp_avg / (1 - beta1**step)
                if torch.is_tensor(state.get("exp_avg_sq")):
                    v_hat = exp_avg_sq / (1 - beta2**step)
            after = param.detach().clone()
            self.records.append(
                StepRecord(
                    step=step,
                    name=name,
                    index=index,
                    grad=param.grad.detach().clone(),
                    exp_avg=exp_avg,
                    exp_avg_sq=exp_avg_sq,
                    m_hat=m_hat,
                    v_hat=v_hat,
                    update=after - before,
                    param=after,
                )
            )
        self._params_before = []

    def table(self) -> list[dict[str, Any]]:
        """The records as plain dicts of numbers and nested lists, ready for ``json.dumps``.

        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> optimizer = adamkit.SGD([w], lr=0.5)
        >>> with adamkit.trace(optimizer, {"w": w}) as recorded:
        ...     w.grad = torch.tensor([1.0])
        ...     optimizer.step()
        >>> recorded.table()[0]["param"], recorded.table()[0]["update"]
        ([0.5], [-0.5])
        """
        return [
            {
                "step": record.step,
                "name": record.name,
                "index": record.index,
                **{
                    field: None if getattr(record, field) is None else getattr(record, field).tolist()
                    for field in TENSOR_FIELDS
                },
            }
            for record in self.records
        ]

    def columns(self) -> list[str]:
        """The tensor fields that at least one record has (no ``m_hat`` for SGD, say)."""
        return [
            field
            for field in TENSOR_FIELDS
            if any(getattr(record, field) is not None for record in self.records)
        ]

    def format_table(self) -> str:
        """The records as a plain-text table, one line per parameter element and step.

        Only ``columns()`` are shown. Meant for small parameters: every element gets a line.

        >>> import torch, adamkit
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> optimizer = adamkit.SGD([w], lr=0.5)
        >>> with adamkit.trace(optimizer, {"w": w}) as recorded:
        ...     w.grad = torch.tensor([1.0, -1.0])
        ...     optimizer.step()
        >>> print(recorded.format_table())
        step  name  grad  update  param
           1  w[0]     1    -0.5    0.5
           1  w[1]    -1     0.5    2.5
        """
        columns = self.columns()
        lines = [["step", "name", *columns]]
        for record in self.records:
            values = [getattr(record, column) for column in columns]
            for flat_index in range(record.param.numel()):
                lines.append(
                    [
                        str(record.step),
                        element_label(record.name, record.param.shape, flat_index),
                        *(
                            "-" if value is None else format_number(value.reshape(-1)[flat_index].item())
                            for value in values
                        ),
                    ]
                )
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        # Names read best left-aligned, numbers right-aligned.
        return "\n".join(
            "  ".join(
                cell.ljust(width) if i == 1 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(line, widths))
            ).rstrip()
            for line in lines
        )

    def remove(self) -> None:
        """Stop recording: remove the hooks from the optimizer. The records stay."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def trace(optimizer: Optimizer, params: ParamsToTrace | None = None) -> Trace:
    """Record every step of ``optimizer`` for ``params`` (default: all its parameters).

    ``params`` may be a dict of names to parameters, ``model.named_parameters()``, or
    plain parameters (named ``param<i>`` by their position in the optimizer). A
    parameter gets a ``StepRecord`` for each step in which it has a gradient. Use the
    result as a context manager, or call ``.remove()`` to stop recording.

    >>> import torch, adamkit
    >>> theta = torch.nn.Parameter(torch.tensor([0.5, -0.3]))
    >>> optimizer = adamkit.Adam([theta], lr=0.1)
    >>> with adamkit.trace(optimizer, {"theta": theta}) as recorded:
    ...     optimizer.zero_grad()
    ...     (theta[0] ** 2 + 2 * theta[1] ** 2).backward()
    ...     optimizer.step()
    >>> first = recorded.records[0]
    >>> first.grad, first.m_hat, first.param
    (tensor([ 1.0000, -1.2000]), tensor([ 1.0000, -1.2000]), tensor([ 0.4000, -0.2000]))
    """
    return Trace(optimizer, params)
