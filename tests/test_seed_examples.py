"""The reference articles' Adam examples, each run through adamkit.Adam and torch.optim.Adam.

Both optimizers see identically seeded models and identical inputs. adamkit's for-loop
kernel (foreach=False) must agree with torch bit for bit, its default kernel within
parity.ULP_BOUND (its square roots are correctly rounded, torch's CPU ones are not).
Where an article gives numbers, they are checked as given; the worked example at the
end is also checked against hand-computed values.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import adamkit
from parity import KERNELS, assert_losses_match, assert_matches

TORCH_GROUP_KEYS = {
    "params", "lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
    "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay",
}  # fmt: skip


class Net(nn.Module):
    """The articles' model: Linear(2, 3) -> ReLU -> Linear(3, 6) -> ReLU."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)  # the same weights for the torch run and the adamkit run
        self.nn1 = nn.Linear(2, 3)
        self.act1 = nn.ReLU()
        self.nn2 = nn.Linear(3, 6)
        self.act2 = nn.ReLU()

    def forward(self, x):
        return self.act2(self.nn2(self.act1(self.nn1(x))))


def data(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    # Positive targets, so the final ReLU has something to fit.
    y = torch.rand(n, 6, generator=g) + 0.5
    return x, y


def fit(model, opt, epochs, *, after_step=None):
    x, y = data()
    losses = []
    for epoch in range(epochs):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(opt, epoch)
    return losses


def assert_same_model(theirs, ours, kernel="for-loop"):
    names_t = [n for n, _ in theirs.named_parameters()]
    names_a = [n for n, _ in ours.named_parameters()]
    assert names_a == names_t
    for (name, pt), (_, pa) in zip(theirs.named_parameters(), ours.named_parameters()):
        assert_matches(pt, pa, kernel, name)


def assert_same_state(opt_t, opt_a, model_t, model_a, kernel="for-loop"):
    for pt, pa in zip(model_t.parameters(), model_a.parameters()):
        st, sa = opt_t.state.get(pt, {}), opt_a.state.get(pa, {})
        assert list(sa) == list(st)
        for key in st:
            assert_matches(st[key], sa[key], "for-loop" if key == "step" else kernel, key)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------------------
# 1. The model, one group, lr 0.1
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_single_group_lr_0_1(kernel):
    model_t, model_a = Net(), Net()
    assert [n for n, _ in model_a.named_parameters()] == ["nn1.weight", "nn1.bias", "nn2.weight", "nn2.bias"]
    assert_same_model(model_t, model_a)  # identically seeded
    start = snapshot(model_a)

    opt_t = torch.optim.Adam(model_t.parameters(), lr=0.1)
    opt_a = adamkit.Adam(model_a.parameters(), lr=0.1, **KERNELS[kernel])
    assert set(opt_a.param_groups[0]) == TORCH_GROUP_KEYS == set(opt_t.param_groups[0])
    assert len(opt_a.param_groups) == 1 and len(opt_a.param_groups[0]["params"]) == 4

    losses_t = fit(model_t, opt_t, 20)
    losses_a = fit(model_a, opt_a, 20)

    assert_losses_match(losses_t, losses_a, kernel)
    assert losses_a[-1] < losses_a[0]
    assert_same_model(model_t, model_a, kernel)
    assert_same_state(opt_t, opt_a, model_t, model_a, kernel)
    assert all(not torch.equal(start[n], p) for n, p in model_a.named_parameters())
    assert all(opt_a.state[p]["step"].item() == 20.0 for p in model_a.parameters())


# --------------------------------------------------------------------------------------
# 2. Biases left out of the optimizer, weight decay on the rest
# --------------------------------------------------------------------------------------


def no_decay_groups(model):
    no_decay = ["nn1.bias", "nn2.bias"]
    return [
        {"params": [p for n, p in model.named_parameters() if n not in no_decay], "weight_decay": 0.01},
    ]


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_biases_left_out_stay_unchanged(kernel):
    model_t, model_a = Net(), Net()
    start = snapshot(model_a)
    opt_t = torch.optim.Adam(no_decay_groups(model_t), lr=0.1)
    opt_a = adamkit.Adam(no_decay_groups(model_a), lr=0.1, **KERNELS[kernel])
    assert opt_a.param_groups[0]["weight_decay"] == 0.01
    assert [p.shape for p in opt_a.param_groups[0]["params"]] == [(3, 2), (6, 3)]

    losses_t = fit(model_t, opt_t, 20)
    losses_a = fit(model_a, opt_a, 20)
    assert_losses_match(losses_t, losses_a, kernel)
    assert_same_model(model_t, model_a, kernel)
    assert_same_state(opt_t, opt_a, model_t, model_a, kernel)

    for name in ("nn1.bias", "nn2.bias"):
        bias = dict(model_a.named_parameters())[name]
        # The biases do get gradients (they are in the graph) ...
        assert bias.grad is not None and torch.count_nonzero(bias.grad) > 0
        # ... but nobody optimizes them: exactly their initial values, and no state.
        assert torch.equal(bias, start[name])
        assert bias not in opt_a.state
    for name in ("nn1.weight", "nn2.weight"):
        assert not torch.equal(dict(model_a.named_parameters())[name], start[name])


# --------------------------------------------------------------------------------------
# 3. Two groups, lr 0.1 and 0.2
# --------------------------------------------------------------------------------------


def per_layer_groups(model):
    return [
        {"params": model.nn1.parameters(), "lr": 0.1},
        {"params": model.nn2.parameters(), "lr": 0.2},
    ]


def test_two_groups_with_their_own_lr():
    model_t, model_a = Net(), Net()
    opt_t = torch.optim.Adam(per_layer_groups(model_t))
    opt_a = adamkit.Adam(per_layer_groups(model_a), foreach=False)  # the for-loop kernel: bitwise
    assert [g["lr"] for g in opt_a.param_groups] == [0.1, 0.2]
    assert [len(g["params"]) for g in opt_a.param_groups] == [2, 2]
    for group in opt_a.param_groups:
        assert set(group) == TORCH_GROUP_KEYS

    losses_t = fit(model_t, opt_t, 20)
    losses_a = fit(model_a, opt_a, 20)
    assert losses_a == losses_t
    assert_same_model(model_t, model_a)
    assert_same_state(opt_t, opt_a, model_t, model_a)
    assert [g["lr"] for g in opt_a.param_groups] == [0.1, 0.2]

    # The second group's lr matters: a run with both at 0.1 ends elsewhere.
    model_same = Net()
    fit(model_same, adamkit.Adam(model_same.parameters(), lr=0.1), 20)
    assert not torch.equal(model_same.nn2.weight, model_a.nn2.weight)


# --------------------------------------------------------------------------------------
# 4. A manual schedule: lr *= 0.9 every 5 epochs
# --------------------------------------------------------------------------------------


def decay_every_5(opt, epoch):
    if epoch % 5 == 0:
        for group in opt.param_groups:
            group["lr"] *= 0.9


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_manual_schedule(kernel):
    model_t, model_a = Net(), Net()
    opt_t = torch.optim.Adam(model_t.parameters(), lr=0.1)
    opt_a = adamkit.Adam(model_a.parameters(), lr=0.1, **KERNELS[kernel])
    losses_t = fit(model_t, opt_t, 30, after_step=decay_every_5)
    losses_a = fit(model_a, opt_a, 30, after_step=decay_every_5)
    assert_losses_match(losses_t, losses_a, kernel)
    assert_same_model(model_t, model_a, kernel)
    assert_same_state(opt_t, opt_a, model_t, model_a, kernel)

    expected = 0.1
    for _ in range(6):  # epochs 0, 5, 10, 15, 20, 25
        expected *= 0.9
    assert opt_a.param_groups[0]["lr"] == expected == opt_t.param_groups[0]["lr"]
    assert expected == pytest.approx(0.1 * 0.9**6, rel=1e-15)


# --------------------------------------------------------------------------------------
# 5. StepLR(step_size=5, gamma=0.5)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_step_lr_schedule(kernel):
    model_t, model_a = Net(), Net()
    opt_t = torch.optim.Adam(model_t.parameters(), lr=0.1)
    opt_a = adamkit.Adam(model_a.parameters(), lr=0.1, **KERNELS[kernel])
    sched_t = torch.optim.lr_scheduler.StepLR(opt_t, step_size=5, gamma=0.5)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=5, gamma=0.5)

    lrs_t, lrs_a = [], []
    fit(model_t, opt_t, 20, after_step=lambda o, e: (sched_t.step(), lrs_t.append(o.param_groups[0]["lr"])))
    fit(model_a, opt_a, 20, after_step=lambda o, e: (sched_a.step(), lrs_a.append(o.param_groups[0]["lr"])))

    assert lrs_a == lrs_t
    assert lrs_a[:5] == [0.1] * 4 + [0.05]
    assert lrs_a[-1] == 0.1 * 0.5**4  # halving is exact in binary
    assert_same_model(model_t, model_a, kernel)
    assert_same_state(opt_t, opt_a, model_t, model_a, kernel)


# --------------------------------------------------------------------------------------
# 6. Actor and critic optimized together (PPO-style clipped objective)
# --------------------------------------------------------------------------------------

OBS, ACTIONS = 4, 3


def actor_critic(seed=0):
    torch.manual_seed(seed)
    actor = nn.Sequential(nn.Linear(OBS, 16), nn.Tanh(), nn.Linear(16, ACTIONS))
    critic = nn.Sequential(nn.Linear(OBS, 16), nn.Tanh(), nn.Linear(16, 1))
    return actor, critic


def ppo_batch(actor):
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(64, OBS, generator=g)
    actions = torch.randint(0, ACTIONS, (64,), generator=g)
    advantages = torch.randn(64, generator=g)
    returns = torch.randn(64, generator=g)
    with torch.no_grad():
        logp = torch.log_softmax(actor(obs), dim=-1).gather(1, actions[:, None]).squeeze(1)
    # An "old" policy a fair way from the current one, so the clip is active.
    logp_old = logp + 0.4 * torch.randn(64, generator=g)
    return obs, actions, advantages, returns, logp_old


def ppo_loss(actor, critic, obs, actions, advantages, returns, logp_old, clip=0.2):
    logp_new = torch.log_softmax(actor(obs), dim=-1).gather(1, actions[:, None]).squeeze(1)
    ratios = torch.exp(logp_new - logp_old)
    clipped = torch.clamp(ratios, 1 - clip, 1 + clip)
    actor_loss = -torch.min(ratios * advantages, clipped * advantages).mean()
    critic_values = critic(obs).squeeze(1)
    critic_loss = nn.functional.mse_loss(critic_values, returns)
    return actor_loss + critic_loss, ratios


def run_ppo(cls, steps=8, **kernel_kwargs):
    actor, critic = actor_critic()
    batch = ppo_batch(actor)
    opt = cls(list(actor.parameters()) + list(critic.parameters()), lr=3e-4, **kernel_kwargs)
    losses, clipped_fraction = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss, ratios = ppo_loss(actor, critic, *batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        clipped_fraction.append(((ratios < 0.8) | (ratios > 1.2)).float().mean().item())
    return actor, critic, opt, losses, clipped_fraction


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_actor_critic_one_optimizer(kernel):
    actor_t, critic_t, opt_t, losses_t, clipped_t = run_ppo(torch.optim.Adam)
    actor_a, critic_a, opt_a, losses_a, clipped_a = run_ppo(adamkit.Adam, **KERNELS[kernel])

    assert len(opt_a.param_groups) == 1 and len(opt_a.param_groups[0]["params"]) == 8
    assert opt_a.param_groups[0]["lr"] == 3e-4
    assert_losses_match(losses_t, losses_a, kernel)
    assert clipped_a == clipped_t
    assert 0.0 < clipped_a[0] < 1.0  # the clip is really exercised
    assert losses_a[-1] < losses_a[0]
    assert_same_model(actor_t, actor_a, kernel)
    assert_same_model(critic_t, critic_a, kernel)
    for model_t, model_a in ((actor_t, actor_a), (critic_t, critic_a)):
        assert_same_state(opt_t, opt_a, model_t, model_a, kernel)
        assert all(opt_a.state[p]["step"].item() == 8.0 for p in model_a.parameters())


def test_actor_critic_article_numbers():
    ratios = torch.tensor([1.2, 0.8], dtype=torch.float64)
    # The article's clipped ratios, taken as given (clamping 1.2 to [0.8, 1.2] would keep 1.2).
    clipped = torch.tensor([1.0, 0.8], dtype=torch.float64)
    advantages = torch.tensor([2.0, 1.5], dtype=torch.float64)
    actor_loss = -torch.min(ratios * advantages, clipped * advantages).mean()

    # By hand: ratios * adv = [2.4, 1.2], clipped * adv = [2.0, 1.2]; the minima are
    # [2.0, 1.2], their mean 1.6, so the loss is -1.6. The article printed -1.35,
    # which is wrong; this asserts the correct value.
    by_hand = -(min(1.2 * 2.0, 1.0 * 2.0) + min(0.8 * 1.5, 0.8 * 1.5)) / 2
    assert by_hand == pytest.approx(-1.6, abs=1e-15)
    assert actor_loss.item() == pytest.approx(-1.6, abs=1e-15)
    assert actor_loss.item() != pytest.approx(-1.35, abs=1e-3)

    critic_values = torch.tensor([1.0, 2.0])
    returns = torch.tensor([1.5, 2.5])
    assert nn.functional.mse_loss(critic_values, returns).item() == 0.25


# --------------------------------------------------------------------------------------
# 7. The worked example: two scalars, loss = theta1^2 + 2 theta2^2
# --------------------------------------------------------------------------------------

LR, BETA1, BETA2, EPS = 0.1, 0.9, 0.999, 1e-8


def adam_by_hand(theta, steps):
    """Adam from its formulas, in Python floats; returns (theta, m, v) after each step."""
    theta = list(theta)
    m = [0.0, 0.0]
    v = [0.0, 0.0]
    history = []
    for t in range(1, steps + 1):
        g = [2.0 * theta[0], 4.0 * theta[1]]  # d/dtheta of theta1^2 + 2 theta2^2
        for i in range(2):
            m[i] = BETA1 * m[i] + (1.0 - BETA1) * g[i]
            v[i] = BETA2 * v[i] + (1.0 - BETA2) * g[i] * g[i]
            m_hat = m[i] / (1.0 - BETA1**t)
            v_hat = v[i] / (1.0 - BETA2**t)
            theta[i] = theta[i] - LR * m_hat / (math.sqrt(v_hat) + EPS)
        history.append((list(theta), list(m), list(v)))
    return history


def run_worked_example(cls, dtype, steps=3, **kernel_kwargs):
    theta1 = nn.Parameter(torch.tensor(0.5, dtype=dtype))
    theta2 = nn.Parameter(torch.tensor(-0.3, dtype=dtype))
    opt = cls([theta1, theta2], lr=LR, betas=(BETA1, BETA2), eps=EPS, **kernel_kwargs)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss = theta1**2 + 2 * theta2**2
        loss.backward()
        opt.step()
        history.append(
            (
                [theta1.item(), theta2.item()],
                [opt.state[p]["exp_avg"].item() for p in (theta1, theta2)],
                [opt.state[p]["exp_avg_sq"].item() for p in (theta1, theta2)],
                [theta1.detach().clone(), theta2.detach().clone()],
            )
        )
    assert theta1.dim() == 0 and theta1.dtype == dtype
    return history


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_worked_example_step_one(dtype, rel):
    theta, m, v, _ = run_worked_example(adamkit.Adam, dtype, steps=1)[0]
    assert m == pytest.approx([0.1, -0.12], rel=rel)
    assert v == pytest.approx([0.001, 0.00144], rel=rel)
    # The article's (0.4, -0.2) leaves out eps, which moves theta by ~1e-9: within 1e-6
    # in either dtype. With eps, theta = theta0 - lr * g / (|g| + eps) exactly (m_hat = g,
    # v_hat = g^2 at step 1), which float64 must hit to 1e-12.
    assert theta == pytest.approx([0.4, -0.2], rel=1e-6)
    exact = [0.5 - LR * 1.0 / (1.0 + EPS), -0.3 - LR * -1.2 / (1.2 + EPS)]
    assert theta == pytest.approx(exact, rel=rel)


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_worked_example_steps_two_and_three_by_hand(dtype, rel):
    expected = adam_by_hand([0.5, -0.3], steps=3)
    got = run_worked_example(adamkit.Adam, dtype, steps=3)
    # Step 1 by hand is the article's (0.4, -0.2), up to eps.
    assert expected[0][0] == pytest.approx([0.4, -0.2], rel=1e-7)
    for step in (1, 2):  # steps 2 and 3
        theta, m, v = expected[step]
        got_theta, got_m, got_v, _ = got[step]
        assert got_m == pytest.approx(m, rel=rel), step + 1
        assert got_v == pytest.approx(v, rel=rel), step + 1
        assert got_theta == pytest.approx(theta, rel=rel), step + 1
    # The by-hand values move: step 3 is not step 2 (the test would notice a stuck optimizer).
    assert expected[2][0][0] < expected[1][0][0] < expected[0][0][0]


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_worked_example_matches_torch(dtype, kernel):
    theirs = run_worked_example(torch.optim.Adam, dtype, steps=5)
    ours = run_worked_example(adamkit.Adam, dtype, steps=5, **KERNELS[kernel])
    for (_, m_t, v_t, params_t), (_, m_a, v_a, params_a) in zip(theirs, ours):
        assert m_a == m_t and v_a == v_t  # the moments see the same gradients: exact either way
        for pt, pa in zip(params_t, params_a):
            assert_matches(pt, pa, kernel)
