"""Per-parameter optimizer state carved out of contiguous buffers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from adamkit.state import formats
from adamkit.state.layout import is_dense


class TrackedState(dict):
    """A parameter's state as torch keeps it, a dict of tensors, that counts writes.

    Every change to any ``TrackedState`` (setting, deleting, updating an entry) adds one
    to ``TrackedState.writes``, so a kernel that relies on which tensors the state holds
    can tell in one read that none has been replaced since it looked.
    """

    writes = 0

    def _wrote(self) -> None:
        TrackedState.writes += 1

    def __setitem__(self, key, value):
        self._wrote()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._wrote()
        super().__delitem__(key)

    def __ior__(self, other):
        self._wrote()
        return super().__ior__(other)

    def update(self, *args, **kwargs):
        self._wrote()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._wrote()
        return super().setdefault(key, default)

    def pop(self, *args):
        self._wrote()
        return super().pop(*args)

    def popitem(self):
        self._wrote()
        return super().popitem()

    def clear(self):
        self._wrote()
        super().clear()


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _view_like(chunk: Tensor, local: Tensor) -> Tensor:
    """``chunk`` (1-D, ``local.numel()`` elements) viewed with ``local``'s shape, and its
    strides where ``local`` is dense: then element i of one is element i of the other
    in memory, which is what a fused kernel walks."""
    if is_dense(local):
        return chunk.as_strided(local.shape, local.stride())
    return chunk.view(local.shape)


def like_param(local: Tensor, param: Tensor) -> Tensor:
    """``local`` wrapped as a DTensor placed like ``param`` when ``param`` is one (a
    shard of state for a shard of a parameter), ``local`` itself otherwise.

    >>> like_param(torch.zeros(2), torch.ones(2)).shape
    torch.Size([2])
    """
    if local_tensor(param) is param:
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local, param.device_mesh, param.placements, run_check=False, shape=param.shape, stride=param.stride()
    )


def allocate_flat_state(
    params: Sequence[Tensor],
    fills: Mapping[str, float],
    *,
    step_dtype: torch.dtype | None,
    scalar_fills: Mapping[str, float] | None = None,
    initial: Sequence[Mapping[str, Tensor]] | None = None,
    storage: Callable[[Tensor, str], torch.dtype] | None = None,
) -> list[dict[str, Tensor]]:
    """New state for ``params`` (one device and dtype), each entry a view into a shared buffer.

    ``fills`` names the state tensors and their initial value, per real component (a
    complex parameter's state starts at ``fill + fill j``, as torch's Adagrad does);
    ``initial``, if given, holds existing per-parameter values to copy in instead (a
    loaded checkpoint: values rounded to nearest, or coded into int8; int8 state given
    in its stored form, codes and ``.scale``, is copied as it is). ``storage(param, name)``
    gives each state tensor's dtype (default: the parameter's own); int8 state gets its
    block scales under ``<name>.scale``. With ``step_dtype``, each parameter also gets a 0-dim ``step``
    view into one buffer of step counts, as torch's 0-dim ``step`` tensors, and one
    for each of ``scalar_fills`` (a rule's scalar state: name and initial value). State
    tensors have the parameter's shape and, for a dense parameter, its strides
    (DTensors for DTensor parameters); each parameter's dict is a ``TrackedState``.

    >>> a, b = torch.zeros(2, 3), torch.zeros(4)
    >>> states = allocate_flat_state([a, b], {"exp_avg": 0.0}, step_dtype=torch.float32)
    >>> states[1]["exp_avg"].shape, states[0]["exp_avg"].untyped_storage().nbytes()
    (torch.Size([4]), 40)
    """
    locals_ = [local_tensor(p) for p in params]
    states: list[dict[str, Tensor]] = [TrackedState() for _ in params]
    if step_dtype is not None:
        for name, fill in {"step": 0.0, **(scalar_fills or {})}.items():
            numbers = torch.full((len(params),), fill, dtype=step_dtype)
            for index, state in enumerate(states):
                if initial is not None and name in initial[index]:
                    numbers[index] = initial[index][name]
                state[name] = numbers[index]
    for name, fill in fills.items():
        batches: dict[tuple, list[int]] = {}
        for index, local in enumerate(locals_):
            # The whole parameter chooses the format, so every rank stores its shard alike.
            dtype = local.dtype if storage is None else storage(params[index], name)
            batches.setdefault((local.device, dtype), []).append(index)
        for (device, dtype), indices in batches.items():
            sizes = [locals_[i].numel() for i in indices]
            blocks = [formats.blocks_of(locals_[i]) for i in indices]
            coded = dtype is torch.int8
            buffer = torch.empty((sum(sizes),), dtype=dtype, device=device)
            (torch.view_as_real(buffer) if dtype.is_complex else buffer).fill_(formats.constant_codes(fill) if coded else fill)
            scales = torch.full((sum(blocks),), fill, dtype=torch.float32, device=device).split(blocks) if coded else None
            for n, (index, chunk) in enumerate(zip(indices, buffer.split(sizes))):
                view = _view_like(chunk, locals_[index])
                given = initial[index] if initial is not None else {}
                if coded:
                    if name + formats.SCALE_SUFFIX in given:  # the stored form: copied as it is
                        view.copy_(local_tensor(given[name]))
                        scales[n].copy_(given[name + formats.SCALE_SUFFIX])
                    elif name in given:
                        codes, block_scales = formats.quantize(local_tensor(given[name]))
                        view.copy_(codes)
                        scales[n].copy_(block_scales)
                    states[index][name + formats.SCALE_SUFFIX] = scales[n]
                elif name in given:
                    loaded = local_tensor(given[name])
                    if name + formats.SCALE_SUFFIX in given:  # int8 stored form into another format
                        loaded = formats.dequantize(loaded, given[name + formats.SCALE_SUFFIX])
                    view.copy_(loaded)
                states[index][name] = like_param(view, params[index])
    return states
