import os

import torch

# Without a GPU, Triton runs the fused CUDA kernel's pass in its interpreter, on CPU
# tensors (tests/test_fused_cuda.py). It must be on before the first kernel is made.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_defaults():
    """Tests may switch the default dtype or seed; no test leaks that to the next."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
