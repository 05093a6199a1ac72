import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_defaults():
    """Tests may switch the default dtype or seed; no test leaks that to the next."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
