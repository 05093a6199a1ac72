"""Freeze parameters inside an optimizer, so that nothing moves them."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn
from torch.optim import Optimizer

from adamkit.optimizers.base import RuleOptimizer


def _as_params(params_or_module: nn.Module | Tensor | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(params_or_module, nn.Module):
        return list(params_or_module.parameters())
    if isinstance(params_or_module, Tensor):
        return [params_or_module]
    return list(params_or_module)


def _adamkit_optimizer(optimizer: Optimizer) -> RuleOptimizer:
    if not isinstance(optimizer, RuleOptimizer):
        raise TypeError(
            f"freezing needs an adamkit optimizer, got {type(optimizer).__module__}."
            f"{type(optimizer).__name__}; use the adamkit class of the same name (a drop-in), "
            "or set the parameters' .grad to None before each step"
        )
    return optimizer


def freeze(optimizer: Optimizer, params_or_module: nn.Module | Tensor | Iterable[Tensor]) -> None:
    """Freeze parameters: ``step()`` leaves them and their state bit-for-bit unchanged.

    A zero gradient is not enough to freeze a parameter under Adam: weight decay and
    the moments built up so far still move it. A frozen parameter is skipped whatever
    its ``.grad`` (None, zero or not), and its state is kept for ``unfreeze``.

    >>> import torch, adamkit
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> optimizer = adamkit.AdamW(model.parameters(), lr=0.1)
    >>> adamkit.freeze(optimizer, model[0])
    >>> before = model[0].weight.detach().clone()
    >>> model(torch.ones(1, 2)).sum().backward(); optimizer.step()
    >>> torch.equal(model[0].weight, before)
    True
    """
    _adamkit_optimizer(optimizer).freeze(_as_params(params_or_module))


def unfreeze(
    optimizer: Optimizer, params_or_module: nn.Module | Tensor | Iterable[Tensor], *, reset: bool = False
) -> None:
    """Let frozen parameters train again: with the state they had, or fresh with ``reset=True``.

    >>> import torch, adamkit
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> optimizer = adamkit.Adam([w])
    >>> adamkit.freeze(optimizer, w); adamkit.unfreeze(optimizer, w, reset=True)
    >>> w in optimizer.frozen
    False
    """
    _adamkit_optimizer(optimizer).unfreeze(_as_params(params_or_module), reset=reset)
