"""Training safety: freezing, zero-grad warnings, non-finite gradients, param-group builders."""

import copy
import warnings

import pytest
import torch
from torch import nn

import adamkit

ALL_OPTIMIZERS = [
    (adamkit.Adam, dict(lr=0.1, weight_decay=0.1)),
    (adamkit.Adam, dict(lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)),
    (adamkit.AdamW, dict(lr=0.1)),
    (adamkit.Adam, dict(lr=0.1, amsgrad=True, weight_decay=0.1)),
    (adamkit.Yogi, dict(lr=0.1, weight_decay=0.1)),
    (adamkit.Yogi, dict(lr=0.1, weight_decay=0.1, decoupled_weight_decay=True)),
    (adamkit.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    (adamkit.RMSprop, dict(lr=0.1, momentum=0.9, centered=True, weight_decay=0.1)),
    (adamkit.Adagrad, dict(lr=0.1, weight_decay=0.1)),
]
IDS = [f"{cls.__name__}-{'-'.join(kwargs)}" for cls, kwargs in ALL_OPTIMIZERS]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))


def _train_step(model, optimizer, seed):
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()


def _snapshot(optimizer, params):
    return [(p.detach().clone(), copy.deepcopy(dict(optimizer.state.get(p, {})))) for p in params]


def _assert_unchanged(optimizer, params, snapshot):
    for p, (value, state) in zip(params, snapshot):
        assert torch.equal(p.detach(), value)
        now = optimizer.state.get(p, {})
        assert list(now) == list(state)
        for key in state:
            assert torch.equal(now[key], state[key]), key


@pytest.mark.parametrize("cls,kwargs", ALL_OPTIMIZERS, ids=IDS)
@pytest.mark.parametrize("grad_kind", ["none", "zero", "nonzero"])
def test_frozen_parameters_and_state_stay_bitwise_unchanged(cls, kwargs, grad_kind):
    model = _model()
    optimizer = cls(model.parameters(), warn_zero_grad_update=False, **kwargs)
    for seed in range(3):  # build up moments first: a zero gradient would still move them
        _train_step(model, optimizer, seed)
    frozen = list(model[0].parameters())
    adamkit.freeze(optimizer, model[0])
    snapshot = _snapshot(optimizer, frozen)
    other_before = model[2].weight.detach().clone()
    for seed in range(3, 6):
        x = torch.randn(8, 3, generator=torch.Generator().manual_seed(seed))
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        for p in frozen:
            p.grad = {"none": None, "zero": torch.zeros_like(p), "nonzero": torch.ones_like(p)}[grad_kind]
        optimizer.step()
    _assert_unchanged(optimizer, frozen, snapshot)
    assert not torch.equal(model[2].weight, other_before)  # the rest trained


def test_zero_gradient_is_not_a_freeze_without_adamkit_freeze():
    """The pitfall from the reference article: zero grads + weight decay still move parameters."""
    model = _model()
    optimizer = adamkit.AdamW(model.parameters(), lr=0.1, warn_zero_grad_update=False)
    _train_step(model, optimizer, 0)
    before = model[0].weight.detach().clone()
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    optimizer.step()
    assert not torch.equal(model[0].weight, before)


def test_unfreeze_resumes_with_kept_state_or_fresh_state():
    model = _model()
    optimizer = adamkit.Adam(model.parameters(), lr=0.1)
    _train_step(model, optimizer, 0)
    w = model[0].weight
    kept = optimizer.state[w]["exp_avg"].clone()
    adamkit.freeze(optimizer, [w])
    _train_step(model, optimizer, 1)
    assert torch.equal(optimizer.state[w]["exp_avg"], kept)
    assert optimizer.state[w]["step"].item() == 1
    adamkit.unfreeze(optimizer, [w])
    _train_step(model, optimizer, 2)
    assert optimizer.state[w]["step"].item() == 2
    adamkit.freeze(optimizer, w)
    adamkit.unfreeze(optimizer, w, reset=True)
    assert len(optimizer.state[w]) == 0
    _train_step(model, optimizer, 3)
    assert optimizer.state[w]["step"].item() == 1


def test_reset_state_clears_chosen_params_or_all():
    model = _model()
    optimizer = adamkit.Adam(model.parameters(), lr=0.1)
    _train_step(model, optimizer, 0)
    optimizer.reset_state([model[0].bias])
    assert len(optimizer.state[model[0].bias]) == 0
    assert optimizer.state[model[0].weight]["step"].item() == 1
    optimizer.reset_state()
    assert all(len(optimizer.state[p]) == 0 for p in model.parameters())
    adagrad = adamkit.Adagrad(model.parameters(), initial_accumulator_value=0.5)
    _train_step(model, adagrad, 0)
    adagrad.reset_state()
    for p in model.parameters():  # Adagrad's state exists from construction on, as in torch
        assert adagrad.state[p]["step"].item() == 0
        assert torch.equal(adagrad.state[p]["sum"], torch.full_like(p, 0.5))


def test_freeze_errors_name_the_problem():
    model = _model()
    with pytest.raises(TypeError, match="torch.optim.adam.Adam.*adamkit class"):
        adamkit.freeze(torch.optim.Adam(model.parameters()), model[0])
    optimizer = adamkit.Adam(model[0].parameters())
    with pytest.raises(ValueError, match=r"shape \(1, 4\) is not in this optimizer"):
        adamkit.freeze(optimizer, model[2].weight)


def test_zero_grad_update_warns_once_per_parameter_and_can_be_turned_off():
    model = _model()
    optimizer = adamkit.AdamW(model.parameters(), lr=0.1)
    _train_step(model, optimizer, 0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.warns(UserWarning, match=r"all-zero gradient.*adamkit.freeze") as record:
        optimizer.step()
        optimizer.step()
    assert len(record) == 4  # one per parameter, not one per step
    quiet = adamkit.AdamW(model.parameters(), lr=0.1, warn_zero_grad_update=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.step()
    # a zero gradient that moves nothing (no decay, no momentum yet) does not warn
    plain = adamkit.Adam(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.step()


@pytest.mark.parametrize("cls,kwargs", ALL_OPTIMIZERS, ids=IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_skip_nonfinite_leaves_everything_untouched(cls, kwargs, bad):
    model = _model()
    optimizer = cls(model.parameters(), skip_nonfinite=True, warn_zero_grad_update=False, **kwargs)
    _train_step(model, optimizer, 0)
    params = list(model.parameters())
    snapshot = _snapshot(optimizer, params)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    model[2].bias.grad[0] = bad  # one bad element in one tensor skips the whole step
    with pytest.warns(UserWarning, match="NaN or Inf"):
        optimizer.step()
    _assert_unchanged(optimizer, params, snapshot)
    assert optimizer.skipped_steps == 1
    _train_step(model, optimizer, 2)  # a finite step goes through again
    assert optimizer.skipped_steps == 1
    assert not torch.equal(model[2].weight, snapshot[2][0])


def test_default_has_no_nonfinite_check_like_torch():
    w = nn.Parameter(torch.ones(2))
    w.grad = torch.tensor([float("nan"), 1.0])
    optimizer = adamkit.Adam([w])
    optimizer.step()
    assert torch.isnan(w[0]) and optimizer.skipped_steps == 0


def test_skipped_steps_survive_deepcopy():
    w = nn.Parameter(torch.ones(2))
    optimizer = adamkit.Adam([w], skip_nonfinite=True)
    w.grad = torch.tensor([float("inf"), 1.0])
    with pytest.warns(UserWarning):
        optimizer.step()
    clone = copy.deepcopy(optimizer)
    assert clone.skipped_steps == 1 and clone.skip_nonfinite


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.ln_f = nn.LayerNorm(4)  # a norm whose name says nothing about "norm"
        self.bn = nn.BatchNorm1d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.rms = nn.RMSNorm(4)
        self.head = nn.Linear(4, 2, bias=False)


def _names(groups):
    return {name: (g["weight_decay"], g.get("lr")) for g in groups for name in g["param_names"]}


def test_param_groups_find_norms_by_type_and_biases():
    model = _Block()
    names = _names(adamkit.param_groups(model, weight_decay=0.1))
    decayed = {n for n, (wd, _) in names.items() if wd == 0.1}
    assert decayed == {"embed.weight", "proj.weight", "head.weight"}
    assert set(names) == {n for n, _ in model.named_parameters()}
    with_embeddings = _names(adamkit.param_groups(model, weight_decay=0.1, no_decay=("bias", "norm", "embedding")))
    assert with_embeddings["embed.weight"][0] == 0.0


def test_param_groups_lr_by_prefix_and_every_parameter_once():
    model = _Block()
    model.head.weight = model.proj.weight  # tied: must appear once
    groups = adamkit.param_groups(model, lr={"proj": 0.1, "ln_f": 0.2})
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = _names(groups)
    assert names["proj.weight"][1] == 0.1 and names["proj.bias"][1] == 0.1
    assert names["ln_f.weight"][1] == 0.2 and names["embed.weight"][1] is None
    optimizer = adamkit.AdamW(groups, lr=1e-3)
    assert [g["param_names"] for g in optimizer.param_groups] == [g["param_names"] for g in groups]
    with pytest.raises(ValueError, match="'decoder' matches no parameter"):
        adamkit.param_groups(model, lr={"decoder": 0.1})


def test_param_groups_for_an_actor_and_a_critic():
    actor, critic = nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    groups = adamkit.param_groups({"actor": actor, "critic": critic}, lr={"critic": 1e-3})
    names = _names(groups)
    assert set(names) == {"actor.weight", "actor.bias", "critic.0.weight", "critic.0.bias",
                          "critic.1.weight", "critic.1.bias", "critic.2.weight", "critic.2.bias"}
    assert names["critic.1.weight"] == (0.0, 1e-3)
    positional = _names(adamkit.param_groups(actor, critic))
    assert "0.weight" in positional and "1.0.weight" in positional
    named = _names(adamkit.param_groups(actor.named_parameters(), ("critic", critic)))
    assert named["0.bias"][0] == 0.0 and "critic.2.weight" in named  # unnamed sources get their index


def test_param_groups_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown no_decay categories"):
        adamkit.param_groups(nn.Linear(2, 2), no_decay=("biases",))
    with pytest.raises(ValueError, match="at least one model"):
        adamkit.param_groups()


def test_parameter_in_two_groups_is_refused():
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        adamkit.Adam([{"params": [w]}, {"params": [w]}])
