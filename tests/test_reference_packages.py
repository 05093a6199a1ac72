"""adamkit's algorithms that torch.optim lacks, against the packages people use for them
(installed as test extras) and against the float64 transcriptions of their papers in
reference_numpy.py.

After 100 steps: float64 within 1e-9 (relative to each tensor's largest magnitude) of
the package and of the paper; float32 within 1e-6 of the package, or no farther from
adamkit's own float64 result than the package's float32 run is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import pytest
import torch

import adamkit
import reference_numpy as ref
from parity import KERNELS

lion_pytorch = pytest.importorskip("lion_pytorch")
pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
schedulefree = pytest.importorskip("schedulefree")

STEPS = 100


@dataclass(frozen=True)
class Reference:
    ours: Callable  # params -> adamkit optimizer
    package: Callable  # params -> the package's optimizer, given the same hyperparameters
    paper: Callable  # (param, grad, state, t) -> (param, state), float64 NumPy
    slots: tuple[str, ...]  # the paper's state, zeros before step 1 (Schedule-Free starts it itself)


def _in_train_mode(optimizer):
    optimizer.train()  # schedulefree's optimizers start in eval mode
    return optimizer


def _paper(step, **kwargs):
    return lambda param, grad, state, t: step(param, grad, state, t, **kwargs)


CASES = {
    "lion": Reference(
        lambda p: adamkit.Lion(p, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1),
        lambda p: lion_pytorch.Lion(p, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1),
        _paper(ref.lion_step, lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1),
        ("exp_avg",),
    ),
    "adopt": Reference(
        lambda p: adamkit.ADOPT(p, lr=1e-2, weight_decay=0.1),
        lambda p: pytorch_optimizer.ADOPT(p, lr=1e-2, weight_decay=0.1, foreach=False),
        _paper(ref.adopt_step, lr=1e-2, beta1=0.9, beta2=0.9999, eps=1e-6, weight_decay=0.1),
        ("exp_avg", "exp_avg_sq"),
    ),
    "adopt-decoupled-unclipped": Reference(
        lambda p: adamkit.ADOPT(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, clip_exponent=None,
                                maximize=True),
        lambda p: pytorch_optimizer.ADOPT(p, lr=1e-2, weight_decay=0.1, weight_decouple=True, clip_lambda=None,
                                          maximize=True, foreach=False),
        _paper(ref.adopt_step, lr=1e-2, beta1=0.9, beta2=0.9999, eps=1e-6, weight_decay=0.1, decoupled=True,
               clip_exponent=None, maximize=True),
        ("exp_avg", "exp_avg_sq"),
    ),
    # pytorch-optimizer defaults to alpha 5.0 and L2 decay: given the authors' 2.0 and decoupled decay
    "ademamix": Reference(
        lambda p: adamkit.AdEMAMix(p, lr=1e-2, weight_decay=0.1),
        lambda p: pytorch_optimizer.AdEMAMix(p, lr=1e-2, alpha=2.0, weight_decay=0.1, weight_decouple=True,
                                             foreach=False),
        _paper(ref.ademamix_step, lr=1e-2, beta1=0.9, beta2=0.999, beta3=0.9999, alpha=2.0, eps=1e-8,
               weight_decay=0.1),
        ("exp_avg", "exp_avg_sq", "exp_avg_slow"),
    ),
    "ademamix-warmup": Reference(
        lambda p: adamkit.AdEMAMix(p, lr=1e-2, betas=(0.9, 0.999, 0.999), alpha=5.0, t_alpha_beta3=60,
                                   decoupled_weight_decay=False, weight_decay=0.1),
        lambda p: pytorch_optimizer.AdEMAMix(p, lr=1e-2, betas=(0.9, 0.999, 0.999), alpha=5.0, t_alpha_beta3=60,
                                             weight_decay=0.1, foreach=False),
        _paper(ref.ademamix_step, lr=1e-2, beta1=0.9, beta2=0.999, beta3=0.999, alpha=5.0, eps=1e-8,
               t_alpha_beta3=60, weight_decay=0.1, decoupled=False),
        ("exp_avg", "exp_avg_sq", "exp_avg_slow"),
    ),
    # pytorch-optimizer's weight_decouple is the authors' no_prox; its maximize is not tested (at step 1 it
    # takes the gradient's difference to the unnegated gradient)
    "adan": Reference(
        lambda p: adamkit.Adan(p, lr=1e-2, weight_decay=0.1),
        lambda p: pytorch_optimizer.Adan(p, lr=1e-2, weight_decay=0.1, foreach=False),
        _paper(ref.adan_step, lr=1e-2, beta1=0.98, beta2=0.92, beta3=0.99, eps=1e-8, weight_decay=0.1),
        ("exp_avg", "exp_avg_diff", "exp_avg_sq", "previous_grad"),
    ),
    "adan-no-prox": Reference(
        lambda p: adamkit.Adan(p, lr=1e-2, betas=(0.9, 0.8, 0.95), weight_decay=0.1, no_prox=True),
        lambda p: pytorch_optimizer.Adan(p, lr=1e-2, betas=(0.9, 0.8, 0.95), weight_decay=0.1, weight_decouple=True,
                                         foreach=False),
        _paper(ref.adan_step, lr=1e-2, beta1=0.9, beta2=0.8, beta3=0.95, eps=1e-8, weight_decay=0.1, no_prox=True),
        ("exp_avg", "exp_avg_diff", "exp_avg_sq", "previous_grad"),
    ),
    # evaluated at x (eval()) after the steps; warm-up and r change the averaging weights
    "schedulefree": Reference(
        lambda p: adamkit.ScheduleFreeAdamW(p, lr=1e-2, weight_decay=0.1, warmup_steps=10, r=0.5),
        lambda p: _in_train_mode(schedulefree.AdamWScheduleFree(p, lr=1e-2, weight_decay=0.1, warmup_steps=10, r=0.5,
                                                                foreach=False)),
        _paper(ref.schedule_free_adamw_step, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
               warmup_steps=10, r=0.5),
        (),
    ),
}


def _initial(dtype):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for shape in ((40, 30), (77,), (5000,))]


def _gradient(param: torch.Tensor, step: int) -> torch.Tensor:
    """A quadratic's gradient plus noise: it depends on the trajectory, as in training."""
    noise = torch.randn(param.shape, generator=torch.Generator().manual_seed(1000 + step), dtype=torch.float64)
    return (param.double() * 0.5 + noise).to(param.dtype)


def _run(make, dtype, steps=STEPS):
    params = [torch.nn.Parameter(t) for t in _initial(dtype)]
    optimizer = make(params)
    for step in range(steps):
        for p in params:
            p.grad = _gradient(p.detach(), step)
        optimizer.step()
    if hasattr(optimizer, "eval"):  # Schedule-Free: compare x, the point it is evaluated at
        optimizer.eval()
    return [p.detach().double() for p in params], optimizer


def _relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b))


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("name", list(CASES))
def test_float64_matches_the_package_and_the_paper(name, kernel):
    case = CASES[name]
    ours, optimizer = _run(lambda p: _with(case.ours(p), KERNELS[kernel]), torch.float64)
    theirs, _ = _run(case.package, torch.float64)
    assert _relative(ours, theirs) <= 1e-9

    params = [t.numpy() for t in _initial(torch.float64)]
    states = [{slot: np.zeros_like(p) for slot in case.slots} for p in params]
    for step in range(STEPS):
        for index, p in enumerate(params):
            params[index], states[index] = case.paper(p, _gradient(torch.from_numpy(p), step).numpy(), states[index],
                                                      step + 1)
    if "x" in states[0]:  # Schedule-Free: the paper's x is what eval() shows
        params = [state["x"] for state in states]
    assert _relative(ours, [torch.from_numpy(p) for p in params]) <= 1e-9
    assert optimizer.last_step_kernels == ({"eager": 3} if KERNELS[kernel] else {"fused_cpu": 3})


def _with(optimizer, options):
    """``optimizer`` with ``options`` (a kernel's, from parity.KERNELS) set in every group."""
    for group in optimizer.param_groups:
        group.update(options)
    return optimizer


@pytest.mark.parametrize("name", list(CASES))
def test_float32_is_as_close_to_float64_as_the_package(name):
    case = CASES[name]
    exact, _ = _run(case.ours, torch.float64)
    ours, _ = _run(case.ours, torch.float32)
    theirs, _ = _run(case.package, torch.float32)
    assert _relative(ours, theirs) <= 1e-6 or _relative(ours, exact) <= _relative(theirs, exact)


@pytest.mark.parametrize("name", ["adan", "adan-no-prox"])
def test_adan_for_loop_equals_pytorch_optimizers_bit_for_bit(name):
    """pytorch-optimizer's per-parameter Adan makes the same calls in the same order."""
    ours, _ = _run(lambda p: _with(CASES[name].ours(p), {"foreach": False}), torch.float32)
    theirs, _ = _run(CASES[name].package, torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_adan_maximize_equals_the_package_on_negated_gradients():
    """Maximizing f is minimizing -f, from step 1 on (the package's own maximize is not
    that at step 1: it takes the difference to the unnegated gradient)."""
    ours = [torch.nn.Parameter(t) for t in _initial(torch.float32)]
    theirs = [torch.nn.Parameter(t) for t in _initial(torch.float32)]
    maximizing = adamkit.Adan(ours, lr=1e-2, weight_decay=0.1, maximize=True, foreach=False)
    minimizing = pytorch_optimizer.Adan(theirs, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(20):
        for p, q in zip(ours, theirs):
            p.grad, q.grad = _gradient(p.detach(), step), -_gradient(q.detach(), step)
        maximizing.step()
        minimizing.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


def test_lion_checkpoints_move_both_ways_with_lion_pytorch():
    """One state tensor, ``exp_avg``, and no step count: lion-pytorch's state dict."""
    reference, optimizer = _run(CASES["lion"].ours, torch.float32, steps=5)
    params = [torch.nn.Parameter(p.float()) for p in reference]
    theirs = CASES["lion"].package(params)
    theirs.load_state_dict(optimizer.state_dict())
    back = CASES["lion"].ours([torch.nn.Parameter(p.float()) for p in reference])
    back.load_state_dict(theirs.state_dict())
    assert all(sorted(state) == ["exp_avg"] for state in back.state_dict()["state"].values())
    assert torch.equal(back.state_dict()["state"][2]["exp_avg"], optimizer.state_dict()["state"][2]["exp_avg"])
    assert torch.equal(theirs.state[params[2]]["exp_avg"], optimizer.state_dict()["state"][2]["exp_avg"])


@pytest.mark.parametrize("direction", ["schedulefree->adamkit", "adamkit->schedulefree"])
def test_schedule_free_checkpoints_move_both_ways(direction):
    """State (z, exp_avg_sq) and the group's k, lr_max, weight_sum and train_mode: a run
    resumed in the other library continues on the same bits (for-loop kernel)."""
    def ours(params):
        return adamkit.ScheduleFreeAdamW(params, lr=1e-2, warmup_steps=3, weight_decay=0.1, foreach=False)

    def theirs(params):
        return _in_train_mode(schedulefree.AdamWScheduleFree(params, lr=1e-2, warmup_steps=3, weight_decay=0.1,
                                                             foreach=False))

    first, second = (theirs, ours) if direction == "schedulefree->adamkit" else (ours, theirs)
    params = [torch.nn.Parameter(t) for t in _initial(torch.float32)]
    resumed = [torch.nn.Parameter(t) for t in _initial(torch.float32)]
    optimizer = first(params)
    for step in range(5):
        for p in params:
            p.grad = _gradient(p.detach(), step)
        optimizer.step()
    with torch.no_grad():
        for p, q in zip(params, resumed):
            q.copy_(p)
    other = second(resumed)
    other.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # not sharing the state tensors
    for step in range(5, 10):
        for p, q in zip(params, resumed):
            p.grad, q.grad = _gradient(p.detach(), step), _gradient(q.detach(), step)
        optimizer.step()
        other.step()
    optimizer.eval()
    other.eval()
    assert all(torch.equal(p, q) for p, q in zip(params, resumed))
    assert other.param_groups[0]["k"] == optimizer.param_groups[0]["k"] == 10
