"""State formats: where and how optimizer state is stored, apart from the update math.

``flat`` keeps every state tensor of a (device, dtype) as a view into one contiguous
buffer per state name, so a kernel streams it in one pass; ``optimizer.state`` still
shows torch's per-parameter tensors. Narrower formats (bf16, 8-bit blockwise) belong
here too: kernels read and write state through a format's load and store.
"""

from adamkit.state.flat import TrackedState, allocate_flat_state, like_param, local_tensor
from adamkit.state.layout import is_dense, memory_order

__all__ = ["TrackedState", "allocate_flat_state", "is_dense", "like_param", "local_tensor", "memory_order"]
