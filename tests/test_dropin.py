"""adamkit.Adam / AdamW honour the whole torch.optim contract, not only the update math.

Every check runs the same thing through torch.optim and adamkit and compares: the
exceptions (type and message), checkpoints in both directions, schedulers, hooks,
closures, differentiable mode and the step counter's dtype.
"""

from __future__ import annotations

import copy
import functools
import io
import warnings

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.optim import lr_scheduler
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import adamkit
from parity import KERNELS, assert_bitwise_equal, assert_losses_match, assert_matches, assert_matches_torch, grads_for, make_params

PAIRS = [
    pytest.param(torch.optim.Adam, adamkit.Adam, id="Adam"),
    pytest.param(torch.optim.AdamW, adamkit.AdamW, id="AdamW"),
]

# Group keys an old checkpoint may lack, with the values torch fills in (Adam).
FLAG_DEFAULTS = {
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": None,
    "decoupled_weight_decay": False,
}


def outcome(fn):
    """("ok", None) or (exception type, message) of calling ``fn``."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(exc), str(exc)
    return "ok", None


def assert_same_outcome(torch_fn, adamkit_fn, *, expect_error=True):
    theirs, ours = outcome(torch_fn), outcome(adamkit_fn)
    if expect_error:
        assert theirs[0] != "ok", "torch accepted this; the test case is wrong"
    assert ours == theirs


def same_params(a, b, kernel="for-loop"):
    """Equal for the for-loop kernel, within parity.ULP_BOUND for the default one."""
    a, b = list(a), list(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert_matches(y, x, kernel)


# --------------------------------------------------------------------------------------
# 1. Constructor validation: same exception type and message as torch
# --------------------------------------------------------------------------------------


def _p():
    return [nn.Parameter(torch.randn(3))]


def _shared_param_groups():
    p = nn.Parameter(torch.randn(3))
    return [{"params": [p]}, {"params": [p]}]


def _non_leaf():
    p = nn.Parameter(torch.randn(3))
    return [p * 2]


BAD_CONSTRUCTIONS = {
    "negative lr": lambda: (_p(), dict(lr=-0.1)),
    "nan lr": lambda: (_p(), dict(lr=float("nan"))),
    "negative tensor lr": lambda: (_p(), dict(lr=torch.tensor(-0.1))),
    "negative eps": lambda: (_p(), dict(eps=-1e-8)),
    "beta0 = 1.0": lambda: (_p(), dict(betas=(1.0, 0.999))),
    "beta0 = -0.1": lambda: (_p(), dict(betas=(-0.1, 0.999))),
    "beta1 = 1.0": lambda: (_p(), dict(betas=(0.9, 1.0))),
    "both betas bad": lambda: (_p(), dict(betas=(1.5, 1.5))),
    "negative weight_decay": lambda: (_p(), dict(weight_decay=-0.01)),
    "tensor lr with foreach": lambda: (_p(), dict(lr=torch.tensor(0.01), foreach=True)),
    "2-element tensor lr": lambda: (_p(), dict(lr=torch.tensor([0.01, 0.02]))),
    "betas float, tensor": lambda: (_p(), dict(betas=(0.9, torch.tensor(0.999)))),
    "betas tensor, float": lambda: (_p(), dict(betas=(torch.tensor(0.9), 0.999))),
    "betas int, float": lambda: (_p(), dict(betas=(0, 0.999))),
    "tensor betas with foreach": lambda: (_p(), dict(betas=(torch.tensor(0.9), torch.tensor(0.999)), foreach=True)),
    "2-element tensor beta1": lambda: (_p(), dict(betas=(torch.tensor(0.9), torch.tensor([0.9, 0.9])))),
    "fused and differentiable": lambda: (_p(), dict(fused=True, differentiable=True)),
    "fused and foreach": lambda: (_p(), dict(fused=True, foreach=True)),
    "empty parameter list": lambda: ([], {}),
    "parameter in two groups": lambda: (_shared_param_groups(), {}),
    "non-leaf tensor": lambda: (_non_leaf(), {}),
    # torch raises TypeError for a set as a group's "params" (a set at the top level is
    # turned into a list without complaint, by torch and adamkit alike).
    "set of parameters": lambda: ([{"params": set(_p())}], {}),
    "a bare tensor": lambda: (nn.Parameter(torch.randn(3)), {}),
}


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
@pytest.mark.parametrize("case", list(BAD_CONSTRUCTIONS))
def test_constructor_rejects_like_torch(torch_cls, adamkit_cls, case):
    params, kwargs = BAD_CONSTRUCTIONS[case]()
    assert_same_outcome(
        lambda: torch_cls(params, **kwargs),
        lambda: adamkit_cls(params, **kwargs),
    )


@pytest.mark.parametrize("cls", [adamkit.AdEMAMix, adamkit.Adan])
def test_three_beta_algorithms_name_betas_of_another_length(cls):
    with pytest.raises(ValueError, match=rf"^Invalid betas: \(0.9, 0.999\); {cls.__name__} takes three"):
        cls(_p(), betas=(0.9, 0.999))


def test_constructor_error_examples_have_torchs_wording():
    """Spot-check the messages themselves, so a change in torch cannot hide a mismatch."""
    p = _p()
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -0.1$"):
        adamkit.Adam(p, lr=-0.1)
    with pytest.raises(ValueError, match=r"^Invalid beta parameter at index 1: 1.0$"):
        adamkit.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        adamkit.Adam(_shared_param_groups())
    with pytest.raises(TypeError, match="ordering of tensors in sets will change between runs"):
        adamkit.AdamW([{"params": set(p)}])
    with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
        adamkit.AdamW(p, fused=True, differentiable=True)


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_duplicate_parameter_warns_like_torch(torch_cls, adamkit_cls):
    def warnings_of(cls):
        p = nn.Parameter(torch.randn(3))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls([p, p])
        return [(w.category, str(w.message)) for w in caught]

    theirs, ours = warnings_of(torch_cls), warnings_of(adamkit_cls)
    assert any(
        cat is UserWarning and "optimizer contains a parameter group with duplicate parameters" in msg
        for cat, msg in theirs
    )
    assert ours == theirs


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_constructor_accepts_what_torch_accepts(torch_cls, adamkit_cls):
    """Tensor hyperparameters that torch allows are allowed, and stored the same way."""
    cases = [
        dict(lr=torch.tensor(0.01), capturable=True, foreach=True),
        dict(lr=torch.tensor([0.01])),
        dict(betas=(torch.tensor([0.9]), torch.tensor(0.99))),
        dict(lr=0.0, eps=0.0, weight_decay=0.0, betas=(0.0, 0.0)),
        dict(fused=True),
    ]
    for kwargs in cases:
        p = _p()
        opt_t, opt_a = torch_cls(p, **kwargs), adamkit_cls(p, **kwargs)
        assert opt_a.defaults.keys() == opt_t.defaults.keys()
        for key, value in opt_t.defaults.items():
            ours = opt_a.defaults[key]
            if key == "betas":
                assert len(ours) == len(value)
                for a, b in zip(ours, value):
                    assert type(a) is type(b)
                    assert (a.shape == b.shape and torch.equal(a, b)) if torch.is_tensor(b) else a == b
            elif torch.is_tensor(value):
                assert ours.shape == value.shape and torch.equal(ours, value)
            else:
                assert ours == value, key


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_tensor_betas_match_torch(kernel):
    params = make_params(torch.float32)

    def run(cls, **kernel_kwargs):
        ps = [nn.Parameter(p.detach().clone()) for p in params]
        opt = cls(ps, lr=0.01, betas=(torch.tensor(0.8), torch.tensor([0.99])), amsgrad=True, **kernel_kwargs)
        for step in range(5):
            for p, g in zip(ps, grads_for(ps, step)):
                p.grad = g
            opt.step()
        return ps, opt

    pt, ot = run(torch.optim.Adam)
    pa, oa = run(adamkit.Adam, **KERNELS[kernel])
    assert_matches_torch(pt, pa, ot, oa, kernel)


# --------------------------------------------------------------------------------------
# 2. state_dict interchange between torch.optim and adamkit
# --------------------------------------------------------------------------------------


def make_mlp(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=dtype))
    return model


def batch(step, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 4, generator=g, dtype=dtype), torch.randn(16, 3, generator=g, dtype=dtype)


def train(model, opt, steps):
    dtype = next(model.parameters()).dtype
    for step in steps:
        x, y = batch(step, dtype)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def set_foreach(opt, foreach):
    """Pick the kernel of a loaded optimizer, or put torch's group value back to compare."""
    for group in opt.param_groups:
        group["foreach"] = foreach


def roundtrip_bytes(state_dict):
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_state_dicts_equal(sd_t, sd_a, kernel="for-loop"):
    """Same structure (keys, order, dtypes, shapes) and the same values (within
    parity.ULP_BOUND for the default kernel; step counts always exactly)."""
    assert list(sd_a) == list(sd_t)
    assert len(sd_a["param_groups"]) == len(sd_t["param_groups"])
    for gt, ga in zip(sd_t["param_groups"], sd_a["param_groups"]):
        assert list(ga) == list(gt)
        assert ga == gt
    assert list(sd_a["state"]) == list(sd_t["state"])
    for key, st in sd_t["state"].items():
        sa = sd_a["state"][key]
        assert list(sa) == list(st)
        for name in st:
            assert sa[name].dtype == st[name].dtype, name
            assert sa[name].shape == st[name].shape, name
            assert sa[name].device == st[name].device, name
            assert_matches(st[name], sa[name], "for-loop" if name == "step" else kernel, name)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("via_bytes", [False, True], ids=["in-memory", "torch.save"])
@pytest.mark.parametrize("direction", ["torch->adamkit", "adamkit->torch"])
@pytest.mark.parametrize("amsgrad,weight_decay", [(False, 0.0), (True, 0.0), (False, 0.1), (True, 0.1)])
def test_state_dict_interchange(direction, via_bytes, amsgrad, weight_decay, kernel):
    kwargs = dict(lr=0.01, amsgrad=amsgrad, weight_decay=weight_decay)
    ours = functools.partial(adamkit.Adam, **KERNELS[kernel])
    first, second = (torch.optim.Adam, ours) if direction == "torch->adamkit" else (ours, torch.optim.Adam)

    reference = make_mlp()
    reference_opt = torch.optim.Adam(reference.parameters(), **kwargs)
    train(reference, reference_opt, range(10))

    model = make_mlp()
    opt = first(model.parameters(), **kwargs)
    train(model, opt, range(5))
    checkpoint = opt.state_dict()
    if via_bytes:
        checkpoint = roundtrip_bytes(checkpoint)
    else:
        checkpoint = copy.deepcopy(checkpoint)

    resumed = copy.deepcopy(model)
    # Constructed with other hyperparameters: loading must bring back the saved ones.
    resumed_opt = second(resumed.parameters(), lr=0.5)
    resumed_opt.load_state_dict(checkpoint)
    assert resumed_opt.param_groups[0]["lr"] == 0.01
    assert resumed_opt.param_groups[0]["amsgrad"] is amsgrad
    set_foreach(resumed_opt, KERNELS[kernel].get("foreach"))  # the checkpoint brought its own

    train(model, opt, range(5, 10))
    train(resumed, resumed_opt, range(5, 10))

    same_params(model.parameters(), reference.parameters(), kernel)
    same_params(resumed.parameters(), reference.parameters(), kernel)
    set_foreach(resumed_opt, None)
    assert_state_dicts_equal(reference_opt.state_dict(), resumed_opt.state_dict(), kernel)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_default_kernel_resumes_bit_for_bit_from_its_checkpoint(amsgrad):
    """Machine-independent: a run resumed from a saved (torch-format) checkpoint equals the
    uninterrupted run exactly."""
    reference = make_mlp()
    reference_opt = adamkit.Adam(reference.parameters(), lr=0.01, amsgrad=amsgrad, weight_decay=0.1)
    train(reference, reference_opt, range(10))
    model = make_mlp()
    opt = adamkit.Adam(model.parameters(), lr=0.01, amsgrad=amsgrad, weight_decay=0.1)
    train(model, opt, range(5))
    resumed = copy.deepcopy(model)
    resumed_opt = adamkit.Adam(resumed.parameters(), lr=0.5)
    resumed_opt.load_state_dict(roundtrip_bytes(opt.state_dict()))
    train(resumed, resumed_opt, range(5, 10))
    assert resumed_opt.last_step_kernels == {"fused_cpu": 4}
    same_params(resumed.parameters(), reference.parameters())
    assert_state_dicts_equal(reference_opt.state_dict(), resumed_opt.state_dict())


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dict_structure_matches_torch(torch_cls, adamkit_cls, amsgrad, kernel):
    model_t, model_a = make_mlp(), make_mlp()
    # The last bias never gets a gradient: it must have no state in either.
    model_t[2].bias.requires_grad_(False)
    model_a[2].bias.requires_grad_(False)
    groups_t = [
        {"params": list(model_t[0].parameters())},
        {"params": list(model_t[2].parameters()), "lr": 0.02},
    ]
    groups_a = [
        {"params": list(model_a[0].parameters())},
        {"params": list(model_a[2].parameters()), "lr": 0.02},
    ]
    opt_t = torch_cls(groups_t, lr=0.01, amsgrad=amsgrad)
    opt_a = adamkit_cls(groups_a, lr=0.01, amsgrad=amsgrad, **KERNELS[kernel])
    train(model_t, opt_t, range(4))
    train(model_a, opt_a, range(4))
    sd_t, sd_a = opt_t.state_dict(), opt_a.state_dict()
    assert sorted(sd_t["state"]) == [0, 1, 2]
    for group in sd_a["param_groups"]:
        group["foreach"] = None  # the one key the kernel choice sets
    assert_state_dicts_equal(sd_t, sd_a, kernel)
    assert_state_dicts_equal(roundtrip_bytes(sd_t), roundtrip_bytes(sd_a), kernel)


# --------------------------------------------------------------------------------------
# 3. Old checkpoints
# --------------------------------------------------------------------------------------


def old_style(state_dict):
    """A checkpoint as an old torch wrote it: no flag keys, a Python float step."""
    old = copy.deepcopy(state_dict)
    for group in old["param_groups"]:
        for key in FLAG_DEFAULTS:
            del group[key]
    for state in old["state"].values():
        state["step"] = float(state["step"].item())
    return old


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])
def test_old_checkpoint_loads_with_torch_defaults(default_dtype, kernel):
    torch.set_default_dtype(default_dtype)
    source = make_mlp()
    source_opt = torch.optim.Adam(source.parameters(), lr=0.01, weight_decay=0.1)
    train(source, source_opt, range(3))
    old = old_style(source_opt.state_dict())
    assert isinstance(old["state"][0]["step"], float)
    assert "amsgrad" not in old["param_groups"][0]

    model_t, model_a = copy.deepcopy(source), copy.deepcopy(source)
    opt_t = torch.optim.Adam(model_t.parameters(), lr=0.5, amsgrad=True, maximize=True)
    opt_a = adamkit.Adam(model_a.parameters(), lr=0.5, amsgrad=True, maximize=True)
    opt_t.load_state_dict(copy.deepcopy(old))
    opt_a.load_state_dict(copy.deepcopy(old))

    for gt, ga in zip(opt_t.param_groups, opt_a.param_groups):
        assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gt.items() if k != "params"}
        for key, value in FLAG_DEFAULTS.items():
            assert ga[key] is value, key
        assert ga["lr"] == 0.01 and ga["weight_decay"] == 0.1
    for p in model_a.parameters():
        step = opt_a.state[p]["step"]
        assert torch.is_tensor(step) and step.dim() == 0
        assert step.dtype == default_dtype  # float32 unless the default dtype is float64
        assert step.item() == 3.0
        assert step.dtype == opt_t.state[next(iter(opt_t.state))]["step"].dtype

    set_foreach(opt_a, KERNELS[kernel].get("foreach"))
    train(model_t, opt_t, range(3, 8))
    train(model_a, opt_a, range(3, 8))
    same_params(model_a.parameters(), model_t.parameters(), kernel)
    set_foreach(opt_a, None)
    assert_state_dicts_equal(opt_t.state_dict(), opt_a.state_dict(), kernel)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_adamw_forces_decoupled_weight_decay_on_load(kernel):
    source = make_mlp()
    source_opt = torch.optim.Adam(source.parameters(), lr=0.01, weight_decay=0.1)  # L2, not decoupled
    train(source, source_opt, range(3))
    checkpoint = source_opt.state_dict()
    assert checkpoint["param_groups"][0]["decoupled_weight_decay"] is False

    for checkpoint_variant in (checkpoint, old_style(checkpoint)):
        model_t, model_a = copy.deepcopy(source), copy.deepcopy(source)
        opt_t = torch.optim.AdamW(model_t.parameters())
        opt_a = adamkit.AdamW(model_a.parameters())
        opt_t.load_state_dict(copy.deepcopy(checkpoint_variant))
        opt_a.load_state_dict(copy.deepcopy(checkpoint_variant))
        assert opt_t.param_groups[0]["decoupled_weight_decay"] is True
        assert opt_a.param_groups[0]["decoupled_weight_decay"] is True
        set_foreach(opt_a, KERNELS[kernel].get("foreach"))
        train(model_t, opt_t, range(3, 7))
        train(model_a, opt_a, range(3, 7))
        same_params(model_a.parameters(), model_t.parameters(), kernel)

    # Decoupled decay really is in effect: an L2 run from the same checkpoint differs.
    model_l2 = copy.deepcopy(source)
    opt_l2 = torch.optim.Adam(model_l2.parameters())
    opt_l2.load_state_dict(copy.deepcopy(checkpoint))
    train(model_l2, opt_l2, range(3, 7))
    assert not torch.equal(model_l2[0].weight, model_a[0].weight)


# --------------------------------------------------------------------------------------
# 4. deepcopy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_deepcopy_steps_independently(torch_cls, adamkit_cls):
    params = [nn.Parameter(p.detach().clone()) for p in make_params(torch.float32)]
    opt = adamkit_cls(params, lr=0.01, amsgrad=True)
    for step in range(3):
        for p, g in zip(params, grads_for(params, step)):
            p.grad = g
        opt.step()

    clone = copy.deepcopy(opt)
    cloned_params = clone.param_groups[0]["params"]
    assert all(c is not p for c, p in zip(cloned_params, params))
    same_params(cloned_params, params)
    for c, p in zip(cloned_params, params):
        assert clone.state[c]["exp_avg"] is not opt.state[p]["exp_avg"]

    # Step only the copy: the original must not move.
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict())
    for c, g in zip(cloned_params, grads_for(params, 3)):
        c.grad = g
    clone.step()
    same_params(params, before)
    assert_state_dicts_equal(state_before, opt.state_dict())
    assert not torch.equal(cloned_params[0], params[0])

    # Now the original takes the same step on the same grads: bitwise equal again.
    for p, g in zip(params, grads_for(params, 3)):
        p.grad = g
    opt.step()
    assert_bitwise_equal(params, cloned_params, opt, clone)

    # And both agree with torch on the same problem.
    reference = [nn.Parameter(p.detach().clone()) for p in make_params(torch.float32)]
    ref_opt = torch_cls(reference, lr=0.01, amsgrad=True)
    for step in range(4):
        for p, g in zip(reference, grads_for(reference, step)):
            p.grad = g
        ref_opt.step()
    assert_matches_torch(reference, params, ref_opt, opt, "default")


# --------------------------------------------------------------------------------------
# 5. Schedulers, manual lr edits, add_param_group
# --------------------------------------------------------------------------------------

SCHEDULERS = {
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=4, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[3, 7, 11], gamma=0.3),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-4),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=15, cycle_momentum=True),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1),
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda epoch: 1.0 / (1.0 + epoch)),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o,
        [lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=3), lr_scheduler.ExponentialLR(o, gamma=0.9)],
        milestones=[5],
    ),
}

# A loss that improves, then plateaus: ReduceLROnPlateau must cut the lr more than once.
PLATEAU_LOSSES = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]


def two_groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]


def hyper(opt):
    return [(g["lr"], tuple(g["betas"])) for g in opt.param_groups]


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_matches_torch(name, kernel):
    params = make_params(torch.float32)
    theirs = [nn.Parameter(p.detach().clone()) for p in params]
    ours = [nn.Parameter(p.detach().clone()) for p in params]
    opt_t = torch.optim.Adam(two_groups(theirs), lr=0.01)
    opt_a = adamkit.Adam(two_groups(ours), lr=0.01, **KERNELS[kernel])
    sched_t, sched_a = SCHEDULERS[name](opt_t), SCHEDULERS[name](opt_a)
    assert hyper(opt_a) == hyper(opt_t)

    history = []
    for step in range(15):
        for pt, pa, g in zip(theirs, ours, grads_for(params, step)):
            pt.grad, pa.grad = g.clone(), g.clone()
        opt_t.step()
        opt_a.step()
        if name == "ReduceLROnPlateau":
            sched_t.step(PLATEAU_LOSSES[step])
            sched_a.step(PLATEAU_LOSSES[step])
        else:
            sched_t.step()
            sched_a.step()
        assert hyper(opt_a) == hyper(opt_t), step
        assert sched_a.get_last_lr() == sched_t.get_last_lr()
        history.append(hyper(opt_a))
        assert_matches_torch(theirs, ours, opt_t, opt_a, kernel)

    assert len({h[0][0] for h in history}) > 2, "the schedule never moved the lr"
    if name == "OneCycleLR":
        assert len({h[0][1][0] for h in history}) > 2, "OneCycleLR never moved betas[0]"


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_manual_lr_edits_match_torch(kernel):
    params = make_params(torch.float32)

    def schedule(opt, step):
        if step % 3 == 2:
            for group in opt.param_groups:
                group["lr"] *= 0.9

    theirs = [nn.Parameter(p.detach().clone()) for p in params]
    ours = [nn.Parameter(p.detach().clone()) for p in params]
    opt_t = torch.optim.Adam(two_groups(theirs), lr=0.01, amsgrad=True)
    opt_a = adamkit.Adam(two_groups(ours), lr=0.01, amsgrad=True, **KERNELS[kernel])
    for step in range(12):
        for pt, pa, g in zip(theirs, ours, grads_for(params, step)):
            pt.grad, pa.grad = g.clone(), g.clone()
        opt_t.step()
        opt_a.step()
        schedule(opt_t, step)
        schedule(opt_a, step)
        assert hyper(opt_a) == hyper(opt_t)
    assert opt_a.param_groups[0]["lr"] == 0.01 * 0.9 * 0.9 * 0.9 * 0.9
    assert_matches_torch(theirs, ours, opt_t, opt_a, kernel)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_add_param_group_mid_training_matches_torch(torch_cls, adamkit_cls, kernel):
    params = make_params(torch.float32)
    theirs = [nn.Parameter(p.detach().clone()) for p in params]
    ours = [nn.Parameter(p.detach().clone()) for p in params]
    opt_t = torch_cls(theirs[:2], lr=0.01)
    opt_a = adamkit_cls(ours[:2], lr=0.01, **KERNELS[kernel])
    for step in range(10):
        if step == 4:
            opt_t.add_param_group({"params": theirs[2:], "lr": 0.05, "betas": (0.8, 0.95)})
            opt_a.add_param_group({"params": ours[2:], "lr": 0.05, "betas": (0.8, 0.95)})
            assert opt_a.param_groups[1].keys() == opt_t.param_groups[1].keys()
            assert opt_a.param_groups[1]["lr"] == 0.05
        for pt, pa, g in zip(theirs, ours, grads_for(params, step)):
            pt.grad, pa.grad = g.clone(), g.clone()
        opt_t.step()
        opt_a.step()
    assert opt_a.state[ours[2]]["step"].item() == 6.0
    assert opt_a.state[ours[0]]["step"].item() == 10.0
    assert_matches_torch(theirs, ours, opt_t, opt_a, kernel)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt_a.add_param_group({"params": ours[:1]})


# --------------------------------------------------------------------------------------
# 6. Hooks
# --------------------------------------------------------------------------------------


def test_step_hooks_fire_once_per_step():
    p = nn.Parameter(torch.ones(3))
    opt = adamkit.Adam([p], lr=0.1)
    calls = []
    seen = []

    def pre(o, args, kwargs):  # returns None: leave the step's arguments alone
        calls.append(("pre", o))
        seen.append(p.detach().clone())

    def post(o, args, kwargs):
        calls.append(("post", o))
        seen.append(p.detach().clone())

    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    assert calls == [("pre", opt), ("post", opt)] * 3
    # The pre hook sees the parameter before the update, the post hook after it.
    for before, after in zip(seen[0::2], seen[1::2]):
        assert torch.all(after < before)


def test_global_step_hooks_fire_for_adamkit():
    calls = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append("pre")),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("post")),
    ]
    try:
        p = nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        adamkit.Adam([p]).step()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ["pre", "post"]


def test_state_dict_hooks_fire_once():
    p = nn.Parameter(torch.ones(3))
    opt = adamkit.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))

    sd = opt.state_dict()
    assert calls == ["sd_pre", "sd_post"]
    opt.load_state_dict(sd)
    assert calls == ["sd_pre", "sd_post", "load_pre", "load_post"]


def test_state_dict_hooks_can_rewrite():
    p = nn.Parameter(torch.ones(3))
    opt = adamkit.Adam([p], lr=0.1)

    def post(o, sd):
        sd["extra"] = 7
        return sd

    def load_pre(o, sd):
        sd = copy.deepcopy(sd)
        sd["param_groups"][0]["lr"] = 0.123
        return sd

    opt.register_state_dict_post_hook(post)
    opt.register_load_state_dict_pre_hook(load_pre)
    sd = opt.state_dict()
    assert sd["extra"] == 7
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.123


# --------------------------------------------------------------------------------------
# 7. step(closure), zero_grad
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_closure_runs_with_grad_under_no_grad(torch_cls, adamkit_cls, kernel):
    x, y = batch(0)

    def run(cls, **kernel_kwargs):
        model = make_mlp()
        opt = cls(model.parameters(), lr=0.01, **kernel_kwargs)
        grad_modes = []
        returned = []

        def closure():
            grad_modes.append(torch.is_grad_enabled())
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            returned.append(loss)
            return loss

        with torch.no_grad():
            for _ in range(3):
                loss = opt.step(closure)
                assert loss is returned[-1]
                assert not torch.is_grad_enabled()
        assert grad_modes == [True, True, True]
        return model, [r.item() for r in returned]

    model_t, losses_t = run(torch_cls)
    model_a, losses_a = run(adamkit_cls, **KERNELS[kernel])
    assert_losses_match(losses_t, losses_a, kernel)
    assert losses_a[2] < losses_a[0]
    same_params(model_a.parameters(), model_t.parameters(), kernel)


def test_step_without_closure_returns_none():
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    assert adamkit.Adam([p]).step() is None


@pytest.mark.parametrize("set_to_none", [True, None])
def test_zero_grad_then_step_changes_nothing(set_to_none):
    model = make_mlp()
    opt = adamkit.Adam(model.parameters(), lr=0.01, amsgrad=True)
    train(model, opt, range(2))
    if set_to_none is None:
        opt.zero_grad()  # the default is set_to_none=True, as in torch
    else:
        opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())

    params_before = [p.detach().clone() for p in model.parameters()]
    state_before = copy.deepcopy(opt.state_dict())
    opt.step()
    same_params(model.parameters(), params_before)
    assert_state_dicts_equal(state_before, opt.state_dict())
    assert all(opt.state[p]["step"].item() == 2.0 for p in model.parameters())


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_zero_grad_set_to_none_false_zeroes_in_place(kernel):
    model_t, model_a = make_mlp(), make_mlp()
    opt_t = torch.optim.Adam(model_t.parameters(), lr=0.01)
    opt_a = adamkit.Adam(model_a.parameters(), lr=0.01, **KERNELS[kernel])
    train(model_t, opt_t, range(2))
    train(model_a, opt_a, range(2))
    opt_t.zero_grad(set_to_none=False)
    opt_a.zero_grad(set_to_none=False)
    for p in model_a.parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0
    # Zero gradients are gradients: both take a (momentum-only) step.
    opt_t.step()
    opt_a.step()
    assert all(opt_a.state[p]["step"].item() == 3.0 for p in model_a.parameters())
    same_params(model_a.parameters(), model_t.parameters(), kernel)


# --------------------------------------------------------------------------------------
# 8. Sparse gradients
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_sparse_gradient_raises_like_torch(torch_cls, adamkit_cls):
    def make(cls):
        def go():
            p = nn.Parameter(torch.zeros(4))
            p.grad = torch.tensor([0.0, 1.0, 0.0, 2.0]).to_sparse()
            cls([p]).step()

        return go

    theirs = outcome(make(torch_cls))
    assert theirs[0] is RuntimeError and "does not support sparse gradients" in theirs[1]
    assert outcome(make(adamkit_cls)) == theirs


# --------------------------------------------------------------------------------------
# 9. differentiable=True: gradcheck through one step
# --------------------------------------------------------------------------------------


def _one_step(cls, kwargs, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
    """One differentiable step, as torch's TestDifferentiableOptimizer._diff_fn does it."""
    param = param.clone()  # a non-leaf, so the optimizer may update it in place
    param.grad = grad
    opt = cls([param], **kwargs)
    opt.state[param].update(
        {
            # `step` is not a continuous variable and must not require grad.
            "step": torch.tensor(10.0, dtype=torch.float64),
            "exp_avg": exp_avg.clone(),
            "exp_avg_sq": exp_avg_sq.clone(),
            "max_exp_avg_sq": max_exp_avg_sq.clone(),
        }
    )
    opt.step()
    state = opt.state[param]
    assert state["step"].item() == 11.0
    return param, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"]


def _differentiable_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(5)]


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
def test_differentiable_gradcheck(torch_cls, adamkit_cls, amsgrad, maximize):
    kwargs = dict(lr=0.9, weight_decay=0.1, amsgrad=amsgrad, maximize=maximize, differentiable=True)
    inputs = _differentiable_inputs()
    # torch itself passes: the test is sound.
    assert gradcheck(lambda *a: _one_step(torch_cls, kwargs, *a), inputs)
    assert gradcheck(lambda *a: _one_step(adamkit_cls, kwargs, *a), inputs)
    # The differentiable step computes what torch's computes, bit for bit.
    for ours, theirs in zip(_one_step(adamkit_cls, kwargs, *inputs), _one_step(torch_cls, kwargs, *inputs)):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_differentiable_gradcheck_wrt_tensor_lr(torch_cls, adamkit_cls):
    lr = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    inputs = _differentiable_inputs(1) + [lr]

    def fn(cls):
        def f(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr):
            kwargs = dict(lr=lr, weight_decay=0.1, differentiable=True)
            return _one_step(cls, kwargs, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)

        return f

    assert gradcheck(fn(torch_cls), inputs)
    assert gradcheck(fn(adamkit_cls), inputs)
    # d(param)/d(lr) is not zero: the gradient really flows into lr.
    (d_lr,) = torch.autograd.grad(fn(adamkit_cls)(*inputs)[0].sum(), lr)
    (d_lr_t,) = torch.autograd.grad(fn(torch_cls)(*inputs)[0].sum(), lr)
    assert d_lr.item() != 0.0
    torch.testing.assert_close(d_lr, d_lr_t, rtol=1e-12, atol=0)


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_differentiable_gradcheck_wrt_tensor_betas(torch_cls, adamkit_cls):
    """Beyond lr: torch also differentiates through tensor betas (its test_adam_differentiable_betas)."""
    beta1 = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    beta2 = torch.tensor(0.99, dtype=torch.float64, requires_grad=True)
    inputs = _differentiable_inputs(2) + [beta1, beta2]

    def fn(cls):
        def f(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, beta2):
            kwargs = dict(lr=0.1, betas=(beta1, beta2), differentiable=True)
            return _one_step(cls, kwargs, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)

        return f

    assert gradcheck(fn(torch_cls), inputs)
    assert gradcheck(fn(adamkit_cls), inputs)


# --------------------------------------------------------------------------------------
# 10-12. capturable on CPU, fused on integers, the step counter's dtype
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_capturable_on_cpu_fails_at_step_like_torch(torch_cls, adamkit_cls):
    def make(cls):
        def go():
            p = nn.Parameter(torch.ones(3))
            opt = cls([p], capturable=True)  # constructing is fine
            p.grad = torch.ones(3)
            opt.step()

        return go

    theirs = outcome(make(torch_cls))
    assert theirs[0] is AssertionError and "capturable=True" in theirs[1]
    assert outcome(make(adamkit_cls)) == theirs


@pytest.mark.parametrize("torch_cls,adamkit_cls", PAIRS)
def test_fused_integer_param_fails_at_step_like_torch(torch_cls, adamkit_cls):
    def make(cls):
        def go():
            p = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)
            opt = cls([p], fused=True)  # constructing is fine
            p.grad = torch.ones(3, dtype=torch.long)
            opt.step()

        return go

    theirs = outcome(make(torch_cls))
    assert theirs[0] is RuntimeError and "`fused=True` requires all the params to be floating point" in theirs[1]
    assert outcome(make(adamkit_cls)) == theirs


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fused", [None, True])
def test_step_counter_dtype_follows_torch(default_dtype, param_dtype, fused):
    torch.set_default_dtype(default_dtype)
    dtypes = []
    for cls in (torch.optim.Adam, adamkit.Adam):
        p = nn.Parameter(torch.ones(3, dtype=param_dtype))
        p.grad = torch.ones(3, dtype=param_dtype)
        opt = cls([p], fused=fused)
        opt.step()
        step = opt.state[p]["step"]
        dtypes.append((step.dtype, step.device, step.shape))
    assert dtypes[1] == dtypes[0]
    expected = torch.float32 if fused else default_dtype
    assert dtypes[1][0] == expected


# --------------------------------------------------------------------------------------
# 9. GradScaler
# --------------------------------------------------------------------------------------


def _train_scaled(optimizer_cls, steps=16, **kwargs):
    """A model trained under torch.amp.GradScaler; the scale starts so high that the
    first steps overflow and are skipped."""
    model = make_mlp()
    optimizer = optimizer_cls(model.parameters(), lr=0.01, **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=2)
    scales = []
    for step in range(steps):
        x, y = batch(step)
        optimizer.zero_grad()
        scaler.scale(1024 * nn.functional.mse_loss(model(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    return model, optimizer, scales


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_grad_scaler_unscales_and_skips_like_torch_fused(kernel):
    """adamkit takes the loss scale and the overflow flag from GradScaler as torch's fused
    Adam does: overflowing steps change nothing, the others see unscaled gradients."""
    theirs, torch_opt, torch_scales = _train_scaled(torch.optim.Adam, fused=True)
    ours, opt, scales = _train_scaled(adamkit.Adam, **KERNELS[kernel])
    assert scales == torch_scales and scales[0] < 2.0**127  # some steps overflowed
    steps = [opt.state[p]["step"].item() for p in ours.parameters()]
    assert steps == [torch_opt.state[p]["step"].item() for p in theirs.parameters()] and 0 < steps[0] < 16
    same_params(ours.parameters(), theirs.parameters(), "default")
    # Unscaled in place, as torch's fused step leaves them (or left alone, when the last
    # step overflowed: then NaN and Inf where torch has them).
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p.grad.isfinite(), q.grad.isfinite())
        assert_matches(q.grad.nan_to_num(), p.grad.nan_to_num(), "default")


def test_grad_scaler_gives_the_bits_of_unscaling_first():
    """Scales are powers of two: dividing inside the step equals GradScaler's own unscale_."""
    ours, opt, _ = _train_scaled(adamkit.Adam)

    class Plain(adamkit.Adam):
        _step_supports_amp_scaling = False

    plain, plain_opt, _ = _train_scaled(Plain)
    same_params(ours.parameters(), plain.parameters())
