"""Checkpoints that are written atomically, read back whatever was saved, and are
validated before anything is changed."""

from __future__ import annotations

import argparse
import io
import os
import re
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

FORMAT = "adamkit-checkpoint"
VERSION = 2  # 2 adds "checksum"
READABLE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read, or does not fit the model / optimizer it is loaded into."""


def _numpy_globals() -> list:
    """What pickled numpy scalars, arrays, dtypes and RNG states refer to."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    dtype_classes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUVOMm"]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


# Besides tensors and Python's own types, a checkpoint may hold these in ``extra``:
# torch.load(weights_only=True) reads them when they are allowed by name, and nothing
# among them runs code when unpickled.
SAFE_GLOBALS = [*_numpy_globals(), argparse.Namespace]


def _load(source) -> Any:
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(source, map_location="cpu", weights_only=True)


def _param_names(model: nn.Module, optimizer: Optimizer) -> list[list[str | None]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names.get(id(p)) for p in group["params"]] for group in optimizer.param_groups]


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for key in value:
            yield from _tensors(value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _checksum(model_state: dict, optimizer_state: dict) -> int:
    """CRC-32 of the bytes of every model and optimizer tensor (2.9 GB/s here)."""
    crc = 0
    for tensor in _tensors([model_state, optimizer_state]):
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        raw = local.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        crc = zlib.crc32(raw.numpy(), crc)
    return crc


def _check_extra(extra: Any) -> None:
    """Raise CheckpointError naming the first part of ``extra`` that would not load back."""
    parts = extra.items() if isinstance(extra, dict) else [(None, extra)]
    for key, value in parts:
        try:
            buffer = io.BytesIO()
            torch.save(value, buffer)
            buffer.seek(0)
            _load(buffer)
        except Exception as error:
            where = "extra" if key is None else f"extra[{key!r}]"
            raise CheckpointError(
                f"{where} ({type(value).__name__}) could not be read back by load_checkpoint "
                f"({type(error).__name__}: {_first_line(error)}); keep to numbers, strings, lists, dicts, "
                "tensors, numpy scalars and arrays and argparse.Namespace. Nothing was written."
            ) from None


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of saves whose process is gone (killed mid-save)."""
    for temporary in path.parent.glob(f".{path.name}.*.tmp"):
        match = re.fullmatch(rf"\.{re.escape(path.name)}\.(\d+)\..*\.tmp", temporary.name)
        if match is None:
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            temporary.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


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
    never half of one, and the next save removes what a killed save left behind.
    ``extra`` holds anything ``load_checkpoint`` can read back (numbers, strings, lists,
    dicts, tensors, numpy scalars and arrays, numpy RNG states, ``argparse.Namespace``);
    anything else is refused here, naming it, before the old file is touched. A CRC-32
    of all model and optimizer tensors is stored, so a damaged file is refused on load.

    >>> import tempfile, os, torch, adamkit
    >>> model = torch.nn.Linear(2, 1); optimizer = adamkit.Adam(model.parameters())
    >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
    >>> adamkit.save_checkpoint(path, model, optimizer, extra={"epoch": 3})
    >>> adamkit.load_checkpoint(path, model, optimizer)
    {'epoch': 3}
    """
    path = Path(path)
    _check_extra(extra)
    model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_state,
        "optimizer": optimizer_state,
        "param_names": _param_names(model, optimizer),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "extra": extra,
        "checksum": _checksum(model_state, optimizer_state),
    }
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(error: BaseException) -> str:
    return (_ANSI.sub("", str(error)).strip().splitlines() or [""])[0]


def _read(path: Path) -> dict:
    try:
        payload = _load(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        # torch's first line names the failure; the rest suggests weights_only=False,
        # which is the wrong advice for a damaged file.
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated, corrupted or not a checkpoint "
            f"({type(exc).__name__}: {_first_line(exc)}); nothing was loaded"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an adamkit checkpoint (written by adamkit.save_checkpoint)")
    _check_structure(path, payload)
    return payload


def _check_structure(path: Path, payload: dict) -> None:
    """Refuse a payload that lacks what loading needs, naming what is missing."""
    version = payload.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not one this adamkit reads "
            f"({', '.join(map(str, READABLE_VERSIONS))}); it was written by another adamkit"
        )
    expected = {"model": dict, "optimizer": dict, "param_names": list}
    for key, kind in expected.items():
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: the checkpoint's {key!r} entry is missing or not a {kind.__name__}")
    optimizer = payload["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
        raise CheckpointError(f"{path}: the checkpoint's optimizer entry lacks 'state' or 'param_groups'")
    groups = optimizer["param_groups"]
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise CheckpointError(f"{path}: a parameter group in the checkpoint has no 'params' list")
    names = payload["param_names"]
    if len(names) != len(groups) or any(
        not isinstance(n, list) or len(n) != len(g["params"]) for n, g in zip(names, groups)
    ):
        raise CheckpointError(f"{path}: the checkpoint's 'param_names' do not match its parameter groups")
    indices = {index for group in groups for index in group["params"]}
    unknown = sorted(set(optimizer["state"]) - indices, key=str)
    if unknown:
        raise CheckpointError(f"{path}: the checkpoint has optimizer state for parameter {unknown[0]!r}, which no group lists")
    if not all(isinstance(state, dict) for state in optimizer["state"].values()):
        raise CheckpointError(f"{path}: an optimizer state entry in the checkpoint is not a dict")
    if version >= 2 and payload.get("checksum") != _checksum(payload["model"], optimizer):
        raise CheckpointError(
            f"{path}: the tensors' checksum does not match: the file was damaged after it was written; "
            "nothing was loaded"
        )


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
            # 0-dim entries are per-tensor numbers (step, NAdam's mu_product, ASGD's eta and mu)
            if torch.is_tensor(value) and value.dim() != 0 and value.shape != param.shape:
                raise CheckpointError(
                    f"{path}: optimizer state {key!r} of {name} has shape {tuple(value.shape)} "
                    f"but the parameter has shape {tuple(param.shape)}"
                )


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: Optimizer, scheduler: Any = None
) -> Any:
    """Load a ``save_checkpoint`` file into ``model``, ``optimizer`` (and ``scheduler``).

    Everything is checked first: the file's structure and version, the tensors'
    checksum, model keys and shapes, the optimizer's group count and sizes, parameter
    names, every state tensor's shape against its parameter. The first problem raises
    ``CheckpointError`` naming it, and so does a truncated or corrupted file; in every
    case model, optimizer and scheduler are left as they were. Returns the checkpoint's
    ``extra``.
    """
    path = Path(path)
    payload = _read(path)
    _check_model(path, model, payload["model"])
    _check_optimizer(path, model, optimizer, payload["optimizer"], payload["param_names"])
    if scheduler is not None and payload.get("scheduler") is None:
        raise CheckpointError(f"{path}: a scheduler was given but the checkpoint has no scheduler state")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    return payload.get("extra")
