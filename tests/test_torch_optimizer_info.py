"""torch's own optimizer test inputs (``torch.testing._internal.common_optimizers``),
re-pointed at adamkit's classes: every configuration torch tests its CPU optimizers with
steps bit for bit as torch's for-loop (``foreach=False``) and within ``parity.ULP_BOUND``
on the default kernel; every construction and step error torch expects, adamkit raises
with the same type and message."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import adamkit
from algorithms import WITH_TORCH
from parity import EAGER, KERNELS, assert_bitwise_equal, assert_matches_torch, make_params, run_side_by_side

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")

PAIRS = {a.torch_cls: a.cls for a in WITH_TORCH}
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


# The default kernel is checked against the eager kernel's exact mode everywhere else
# (test_fused_cpu.py): against torch here only with -m slow.
@pytest.mark.parametrize("kernel", [pytest.param(k, marks=pytest.mark.slow) if k == "default" else k for k in KERNELS])
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


# torch's TestDifferentiableOptimizer, for the algorithms the Adam tests in test_dropin.py do not cover:
# state of one step, given as inputs that require grad; ``extra`` holds per-tensor numbers.
DIFFERENTIABLE = {
    a.torch_cls: (a.cls.update_rule.slots, a.extra_state)
    for a in WITH_TORCH if a.cls not in (adamkit.Adam, adamkit.AdamW, adamkit.SGD, adamkit.RMSprop, adamkit.Adagrad)
}


def _differentiable_step(cls, kwargs, names, extra, param, grad, *slots):
    param = param.clone()  # a non-leaf, so the optimizer may update it in place
    param.grad = grad
    optimizer = cls([param], **kwargs)
    optimizer.state[param].update(
        {"step": torch.tensor(10.0, dtype=torch.float64)}
        | {name: torch.tensor(value, dtype=torch.float64) for name, value in extra.items()}
        | {name: value.clone() for name, value in zip(names, slots)}
    )
    optimizer.step()
    return (param, *(optimizer.state[param][name] for name in names))


@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
@pytest.mark.parametrize("torch_cls", list(DIFFERENTIABLE), ids=lambda cls: cls.__name__)
def test_differentiable_steps_match_torch_and_pass_gradcheck(torch_cls, maximize):
    names, extra = DIFFERENTIABLE[torch_cls]
    kwargs = dict(lr=0.9, maximize=maximize, differentiable=True)
    if "weight_decay" in inspect.signature(torch_cls).parameters:
        kwargs["weight_decay"] = 0.1
    g = torch.Generator().manual_seed(0)
    inputs = [torch.rand(6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2 + len(names))]
    ours, theirs = PAIRS[torch_cls], torch_cls
    assert torch.autograd.gradcheck(lambda *a: _differentiable_step(ours, kwargs, names, extra, *a), inputs)
    for a, b in zip(_differentiable_step(ours, kwargs, names, extra, *inputs),
                    _differentiable_step(theirs, kwargs, names, extra, *inputs), strict=True):
        assert torch.equal(a, b)
