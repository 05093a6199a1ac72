"""How a tensor's elements lie in memory: the order kernels walk them in."""

from __future__ import annotations

import torch
from torch import Tensor


def is_dense(t: Tensor) -> bool:
    """``t``'s elements fill one block of memory without gaps or overlaps, in any
    dimension order (contiguous, transposed, channels_last...).

    >>> is_dense(torch.zeros(3, 4).t()), is_dense(torch.zeros(3, 4)[:, ::2])
    (True, False)
    """
    if t.layout is not torch.strided:
        return False
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((stride, size) for size, stride in zip(t.shape, t.stride()) if size != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def memory_order(t: Tensor) -> Tensor:
    """A dense tensor's elements as a 1-D view in the order they lie in memory (the
    order kernels walk them, and int8 blocks follow)."""
    if t.is_contiguous():
        return t.view(-1)
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.size(d)), reverse=True)
    return t.permute(order).reshape(-1)
