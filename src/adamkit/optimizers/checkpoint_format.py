"""State dicts: torch's format by default, or the state as stored (``compact=True``).

``state_dict()`` is torch's: each parameter's state a dict of tensors in the
parameter's dtype, int8 state decoded, so torch.optim and ``torch.load(weights_only=True)``
read it. For bf16 parameters that rounds what is kept wider: fp32 state (``state_dtype=
"fp32"``, and tensors under the low-precision threshold) becomes bf16, and int8 state
is decoded into bf16 values, so its block scales are rounded to bf16 when loaded again.

``state_dict(compact=True)`` keeps each tensor as stored: int8 codes with their fp32
block scales (``<slot>.scale``), bf16 state, fp32 state of bf16 parameters. Loaded
into an adamkit optimizer it resumes bit for bit. A parameter's state whose stored form
is not torch's carries a ``CompactState`` entry, which makes ``torch.optim``'s
``load_state_dict`` refuse the whole dict, before anything changes, with a message
saying what to do (torch would otherwise cast int8 codes to values: NaN a step later).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adamkit.state import like_param, local_tensor
from adamkit.state.formats import SCALE_SUFFIX, blocks_of, dequantize

if TYPE_CHECKING:
    from adamkit.optimizers.base import RuleOptimizer

MARKER_KEY = "state_format"
REFUSAL = (
    "this optimizer state dict was saved with state_dict(compact=True) by adamkit: it holds state as adamkit "
    "stores it (int8 codes and block scales, or dtypes other than the parameter's), which torch.optim would "
    "misread. Load it into an adamkit optimizer, or save it with state_dict() (torch's format) for torch.optim."
)


class CompactState:
    """Marks a parameter's state in a compact state dict as stored, not torch's.

    torch.optim's ``load_state_dict`` rebuilds every iterable it meets in a state dict
    as ``type(value)(items)``; given items instead of a description, this class refuses
    (with ``REFUSAL``), and torch's load stops before it has changed anything.

    >>> CompactState("int8")
    CompactState('int8')
    """

    def __init__(self, stored: str) -> None:
        if not isinstance(stored, str):
            raise ValueError(REFUSAL)
        self.stored = stored

    def __iter__(self):
        return iter(())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CompactState) and other.stored == self.stored

    def __hash__(self) -> int:
        return hash(self.stored)

    def __repr__(self) -> str:
        return f"CompactState({self.stored!r})"

    def __reduce__(self):
        return CompactState, (self.stored,)


# Compact checkpoints load with torch.load(weights_only=True) wherever adamkit is imported.
torch.serialization.add_safe_globals([CompactState])


def _in_params_dtype(state: Mapping[str, Any], dtype: torch.dtype, numbers: frozenset[str]) -> dict[str, Any]:
    """A parameter's state as torch keeps it: every state tensor but the per-tensor
    ``numbers`` in the parameter's dtype, int8 codes decoded with their scales (which are
    left out)."""
    plain = {}
    for name, value in state.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if name in numbers or not torch.is_tensor(value):
            plain[name] = value
        elif value.dtype is torch.int8:
            values = dequantize(local_tensor(value), state[name + SCALE_SUFFIX]).to(dtype)
            plain[name] = like_param(values, value)  # a DTensor's codes: values sharded like them
        else:
            plain[name] = value.to(dtype) if value.dtype != dtype else value
    return plain


def _as_stored(state: Mapping[str, Any], dtype: torch.dtype, numbers: frozenset[str]) -> dict[str, Any]:
    """A parameter's state as stored, marked where torch's form differs (per-tensor
    ``numbers`` aside)."""
    stored = dict(state)
    formats = sorted({
        str(value.dtype).removeprefix("torch.") for name, value in state.items()
        if torch.is_tensor(value) and name not in numbers and not name.endswith(SCALE_SUFFIX) and value.dtype != dtype
    })
    if formats:
        stored[MARKER_KEY] = CompactState(",".join(formats))
    return stored


def convert_state_dict(optimizer: RuleOptimizer, state_dict: dict[str, Any], compact: bool) -> dict[str, Any]:
    """torch's ``state_dict`` of ``optimizer`` in torch's format, or as stored."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    convert = _as_stored if compact else _in_params_dtype
    numbers = per_tensor_numbers(optimizer)
    state_dict["state"] = {
        index: convert(state, params[index].dtype, numbers) for index, state in state_dict["state"].items()
    }
    if optimizer.formats_state():
        for group in state_dict["param_groups"]:
            group["rounds"] = optimizer.rounds
    return state_dict


def per_tensor_numbers(optimizer: RuleOptimizer) -> frozenset[str]:
    """The state entries that are one number per parameter (0-dim tensors): the step
    counter and the rule's scalar state (NAdam's ``mu_product``)."""
    return frozenset(("step", *(name for name, _ in optimizer.update_rule.scalar_state)))


def params_by_key(optimizer: RuleOptimizer, state_dict: Mapping[str, Any]) -> dict[Any, Tensor]:
    """The parameter each key of a state dict to load stands for: an index, or a name
    (``torch.distributed.checkpoint``'s optimizer state dicts), matched by position in
    the param groups, as torch matches them."""
    return {
        key: param
        for saved, group in zip(state_dict.get("param_groups", []), optimizer.param_groups)
        for key, param in zip(saved.get("params", []), group["params"])
    }


def check_loadable(optimizer: RuleOptimizer, state_dict: Mapping[str, Any]) -> None:
    """Refuse, before anything changes, state that does not fit its parameter: another
    shape, int8 codes without their block scales (or scales without codes), scales of
    another sharding."""
    if len(state_dict.get("param_groups", [])) != len(optimizer.param_groups):
        return  # torch's own check names this
    params = params_by_key(optimizer, state_dict)
    numbers = per_tensor_numbers(optimizer)
    for index, state in state_dict.get("state", {}).items():
        param = params.get(index)
        for key, value in state.items() if param is not None else ():
            if key.endswith(SCALE_SUFFIX):
                codes = state.get(key.removesuffix(SCALE_SUFFIX))
                if not (torch.is_tensor(codes) and codes.dtype is torch.int8):
                    raise ValueError(
                        f"loaded state {key!r} of parameter {index} holds int8 block scales, but "
                        f"{key.removesuffix(SCALE_SUFFIX)!r} is not int8 codes: the state dict was edited or "
                        "mixed from two checkpoints; load the state dict as saved"
                    )
                blocks = blocks_of(local_tensor(param))
                if not (torch.is_tensor(value) and value.numel() == blocks):
                    raise ValueError(
                        f"loaded int8 block scales {key!r} of parameter {index} are not "
                        f"{blocks} values, one per 256 of the parameter's elements (under FSDP2, "
                        "of this rank's shard): a compact state dict loads only into the same sharding; "
                        "save state_dict() without compact=True to load it elsewhere"
                    )
            elif torch.is_tensor(value) and value.dtype is torch.int8 and key + SCALE_SUFFIX not in state:
                raise ValueError(
                    f"loaded state {key!r} of parameter {index} is int8 codes without their block scales "
                    f"{key + SCALE_SUFFIX!r}: its values cannot be known; load the state dict as saved by "
                    "state_dict(compact=True), or one saved by state_dict()"
                )
            elif torch.is_tensor(value) and key not in numbers and value.shape != param.shape:
                raise ValueError(
                    f"loaded state {key!r} of parameter {index} has shape {tuple(value.shape)}, but the "
                    f"parameter has shape {tuple(param.shape)}: this state dict belongs to other parameters "
                    "(or lists them in another order)"
                )


def split_stored(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[Any, dict[str, Tensor]]]:
    """``(torch's part, stored part)`` of a state dict to load: the stored part holds the
    tensors to keep as they are (int8 codes and scales; all of a marked parameter's
    state), which torch's ``load_state_dict`` would cast to the parameter's dtype; the
    rest, without markers, goes through torch's load."""
    plain, stored = dict(state_dict), {}
    plain["state"] = {}
    for index, state in state_dict.get("state", {}).items():
        marked = isinstance(state.get(MARKER_KEY), CompactState)
        kept = {
            name: value for name, value in state.items()
            if torch.is_tensor(value) and name != "step"
            and (marked or name.endswith(SCALE_SUFFIX) or name + SCALE_SUFFIX in state)
        }
        if kept:
            stored[index] = kept
        plain["state"][index] = {name: value for name, value in state.items() if name != MARKER_KEY}
    return plain, stored
