"""torch's own optimizer test inputs (``torch.testing._internal.common_optimizers``),
re-pointed at adamkit's classes: every configuration torch tests its CPU optimizers with
steps bit for bit as torch's for-loop (``foreach=False``) and within ``parity.ULP_BOUND``
on the default kernel; every construction and step error torch expects, adamkit raises
with the same type and message."""

from __future__ import annotations

import warnings

import pytest
import torch

import adamkit
from parity import EAGER, KERNELS, assert_bitwise_equal, assert_matches_torch, make_params, run_side_by_side

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")

PAIRS = {
    torch.optim.Adam: adamkit.Adam,
    torch.optim.AdamW: adamkit.AdamW,
    torch.optim.SGD: adamkit.SGD,
    torch.optim.RMSprop: adamkit.RMSprop,
    torch.optim.Adagrad: adamkit.Adagrad,
    torch.optim.Adamax: adamkit.Adamax,
    torch.optim.RAdam: adamkit.RAdam,
}
INFOS = {info.optim_cls: info for info in common_optimizers.optim_db if info.optim_cls in PAIRS}


def _inputs():
    for torch_cls, info in INFOS.items():
        for position, optimizer_input in enumerate(info.optim_inputs_func("cpu")):
            yield pytest.param(torch_cls, optimizer_input.kwargs, id=f"{torch_cls.__name__}-{position}-{optimizer_input.desc}")


def _error_inputs():
    for torch_cls, info in INFOS.items():
        for dtype in (torch.float32, torch.float64):
            for position, error in enumerate(info.optim_error_inputs_func("cpu", dtype)):
                yield pytest.param(torch_cls, error, id=f"{torch_cls.__name__}-{dtype}-{position}")


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("torch_cls,kwargs", list(_inputs()))
def test_torchs_configurations_step_as_torch(torch_cls, kwargs, complex_, kernel):
    if complex_ and not INFOS[torch_cls].supports_complex:
        pytest.skip(f"torch does not test {torch_cls.__name__} on complex parameters")
    params = make_params(torch.float32, complex_=complex_)
    adamkit_kwargs = EAGER if kernel == "for-loop" else {}
    theirs, ours, opt_t, opt_a = run_side_by_side(torch_cls, PAIRS[torch_cls], params, kwargs, steps=6,
                                                  adamkit_kwargs=adamkit_kwargs)
    if kernel == "for-loop":
        assert_bitwise_equal(theirs, ours, opt_t, opt_a)
    else:
        assert_matches_torch(theirs, ours, opt_t, opt_a, kernel)
    for ours_group, their_group in zip(opt_a.state_dict()["param_groups"], opt_t.state_dict()["param_groups"], strict=True):
        assert {**ours_group, "foreach": None} == {**their_group, "foreach": None}


def _raise(cls, error):
    given = error.optimizer_error_input
    params = given.params if given.params is not None else [torch.nn.Parameter(torch.randn(2, 3))]
    if error.error_on == common_optimizers.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        cls(params, **given.kwargs)
        return
    optimizer = cls(params, **given.kwargs)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.randn_like(p)
    optimizer.step()


@pytest.mark.parametrize("torch_cls,error", list(_error_inputs()))
def test_torchs_error_cases_raise_as_torch(torch_cls, error):
    for cls in (torch_cls, PAIRS[torch_cls]):
        if issubclass(error.error_type, Warning):  # torch's test asserts these warnings
            with pytest.warns(error.error_type, match=error.error_regex):
                _raise(cls, error)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(error.error_type, match=error.error_regex):
                _raise(cls, error)
