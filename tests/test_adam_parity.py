"""adamkit.Adam / AdamW (eager kernel) against torch.optim.Adam / AdamW, bit for bit on CPU."""

import itertools

import pytest
import torch

import adamkit
from parity import EAGER, assert_bitwise_equal, make_params, run_side_by_side

FLAGS = list(
    itertools.product(
        [0.0, 0.1],  # weight_decay
        [False, True],  # amsgrad
        [False, True],  # maximize
        [False, True],  # decoupled_weight_decay
        [False, True],  # tensor lr
    )
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("weight_decay,amsgrad,maximize,decoupled,tensor_lr", FLAGS)
def test_adam_matches_torch_bitwise(dtype, complex_, contiguous, weight_decay, amsgrad, maximize, decoupled, tensor_lr):
    torch.set_default_dtype(dtype)  # the step counter follows the default dtype, as in torch
    params = make_params(dtype, complex_=complex_, contiguous=contiguous)
    lr = torch.tensor(0.01) if tensor_lr else 0.01
    kwargs = dict(lr=lr, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay,
                  amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled)
    result = run_side_by_side(torch.optim.Adam, adamkit.Adam, params, kwargs, adamkit_kwargs=EAGER)
    assert_bitwise_equal(*result)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_bitwise(amsgrad, weight_decay):
    params = make_params(torch.float32)
    kwargs = dict(lr=0.02, weight_decay=weight_decay, amsgrad=amsgrad)
    assert_bitwise_equal(*run_side_by_side(torch.optim.AdamW, adamkit.AdamW, params, kwargs, adamkit_kwargs=EAGER))


def test_adamw_defaults_match_torch():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert adamkit.AdamW(p).defaults == torch.optim.AdamW(p).defaults
    assert adamkit.Adam(p).defaults == torch.optim.Adam(p).defaults


def test_fused_flag_runs_and_matches_eager_state_layout():
    params = make_params(torch.float32)
    theirs, ours, opt_t, opt_a = run_side_by_side(torch.optim.Adam, adamkit.Adam, params, dict(lr=0.01, fused=True))
    for pt, pa in zip(theirs, ours):
        assert opt_a.state[pa]["step"].dtype == torch.float32
        torch.testing.assert_close(pa, pt, rtol=1e-5, atol=1e-6)
