"""Checkpoints that are written atomically and validated before anything is changed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

FORMAT = "adamkit-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model / optimizer it is loaded into."""


def _param_names(model: nn.Module, optimizer: Optimizer) -> list[list[str | None]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names.get(id(p)) for p in group["params"]] for group in optimizer.param_groups]


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: Any = None,
    extra: Any = None,
) -> None:
    """Write model, optimizer (and scheduler) state to ``path`` atomically.

    The data goes to a temporary file in the same folder, is flushed to disk, then
    renamed over ``path``: a crash leaves either the old checkpoint or the new one,
    never half of one. ``extra`` is any data that ``torch.load(weights_only=True)`` can
    read (numbers, strings, lists, dicts, tensors), returned by ``load_checkpoint``.

    >>> import tempfile, os, torch, adamkit
    >>> model = torch.nn.Linear(2, 1); optimizer = adamkit.Adam(model.parameters())
    >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
    >>> adamkit.save_checkpoint(path, model, optimizer, extra={"epoch": 3})
    >>> adamkit.load_checkpoint(path, model, optimizer)
    {'epoch': 3}
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "param_names": _param_names(model, optimizer),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "extra": extra,
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _read(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        # torch's first line names the failure; the rest suggests weights_only=False,
        # which is the wrong advice for a damaged file.
        reason = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated, corrupted or not a checkpoint "
            f"({type(exc).__name__}: {reason}); nothing was loaded"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an adamkit checkpoint (written by adamkit.save_checkpoint)")
    return payload


def _check_model(path: Path, model: nn.Module, saved: dict) -> None:
    current = model.state_dict()
    for key in current:
        if key not in saved:
            raise CheckpointError(f"{path}: model entry {key!r} is missing from the checkpoint")
    for key, value in saved.items():
        if key not in current:
            raise CheckpointError(f"{path}: checkpoint has model entry {key!r}, which the model does not have")
        if torch.is_tensor(value) and value.shape != current[key].shape:
            raise CheckpointError(
                f"{path}: model entry {key!r} has shape {tuple(value.shape)} in the checkpoint "
                f"but {tuple(current[key].shape)} in the model"
            )


def _check_optimizer(path: Path, model: nn.Module, optimizer: Optimizer, saved: dict, saved_names) -> None:
    groups = optimizer.param_groups
    saved_groups = saved["param_groups"]
    if len(saved_groups) != len(groups):
        raise CheckpointError(
            f"{path}: the checkpoint has {len(saved_groups)} parameter groups, the optimizer {len(groups)}"
        )
    current_names = _param_names(model, optimizer)
    params_by_index = {}
    for g, (group, saved_group) in enumerate(zip(groups, saved_groups)):
        if len(saved_group["params"]) != len(group["params"]):
            raise CheckpointError(
                f"{path}: parameter group {g} has {len(saved_group['params'])} parameters in the "
                f"checkpoint but {len(group['params'])} in the optimizer"
            )
        for i, (index, param) in enumerate(zip(saved_group["params"], group["params"])):
            saved_name, name = saved_names[g][i], current_names[g][i]
            if saved_name is not None and name is not None and saved_name != name:
                raise CheckpointError(
                    f"{path}: parameter {i} of group {g} is {saved_name!r} in the checkpoint but {name!r} "
                    "in the optimizer; build the optimizer over the parameters in the same order"
                )
            params_by_index[index] = (param, name or f"group {g} parameter {i}")
    for index, state in saved["state"].items():
        param, name = params_by_index[index]
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                raise CheckpointError(
                    f"{path}: optimizer state {key!r} of {name} has shape {tuple(value.shape)} "
                    f"but the parameter has shape {tuple(param.shape)}"
                )


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: Optimizer, scheduler: Any = None
) -> Any:
    """Load a ``save_checkpoint`` file into ``model``, ``optimizer`` (and ``scheduler``).

    Everything is checked first: model keys and shapes, the optimizer's group count and
    sizes, parameter names, every state tensor's shape against its parameter. The first
    mismatch raises ``CheckpointError`` naming it, and so does a truncated or corrupted
    file; in both cases model, optimizer and scheduler are left as they were. Returns
    the checkpoint's ``extra``.
    """
    path = Path(path)
    payload = _read(path)
    _check_model(path, model, payload["model"])
    _check_optimizer(path, model, optimizer, payload["optimizer"], payload["param_names"])
    if scheduler is not None and payload["scheduler"] is None:
        raise CheckpointError(f"{path}: a scheduler was given but the checkpoint has no scheduler state")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    return payload["extra"]
