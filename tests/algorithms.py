"""Every algorithm adamkit runs, in one table: the test files sweep it.

A new algorithm is one row here; each sweep (bit for bit against torch's for-loop,
default kernel against the exact eager kernel, Triton's interpreter, state formats,
checkpoints both ways, torch's OptimizerInfo) then covers it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

import adamkit


def matrix(**axes) -> list[dict]:
    """Every combination of the axes' values, as keyword dicts."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


@dataclass(frozen=True)
class Algorithm:
    cls: type
    torch_cls: type | None  # torch.optim's class, where torch has the algorithm
    flags: list[dict]  # the flag sets swept against torch and across kernels
    spot: dict  # one rich flag set: state formats, checkpoints, atomic steps
    extra_state: dict = field(default_factory=dict)  # per-tensor numbers beside ``step`` (differentiable test inputs)

    @property
    def name(self) -> str:
        return self.cls.__name__


ADAM_FLAGS = [
    dict(weight_decay=wd, amsgrad=ams, maximize=mx, decoupled_weight_decay=dec, betas=(0.8, 0.99), eps=1e-6)
    for wd, ams, mx, dec in itertools.product([0.0, 0.1], [False, True], [False, True], [False, True])
]
SGD_FLAGS = [
    f for f in matrix(momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                      weight_decay=[0.0, 0.1], maximize=[False, True])
    if not (f["nesterov"] and (f["momentum"] <= 0 or f["dampening"] != 0))
]

ALGORITHMS = [
    Algorithm(adamkit.Adam, torch.optim.Adam, ADAM_FLAGS, dict(amsgrad=True, weight_decay=0.1)),
    Algorithm(adamkit.AdamW, torch.optim.AdamW, [], {}),
    Algorithm(adamkit.Yogi, None, matrix(weight_decay=[0.0, 0.1], maximize=[False, True]), {}),
    Algorithm(adamkit.SGD, torch.optim.SGD, SGD_FLAGS, dict(momentum=0.9, nesterov=True)),
    Algorithm(adamkit.RMSprop, torch.optim.RMSprop,
              matrix(momentum=[0.0, 0.9], centered=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True],
                     alpha=[0.99, 0.5]),
              dict(centered=True, momentum=0.5)),
    Algorithm(adamkit.Adagrad, torch.optim.Adagrad,
              matrix(lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.1], maximize=[False, True],
                     initial_accumulator_value=[0.0, 0.5]),
              dict(lr_decay=0.01)),
    Algorithm(adamkit.Adamax, torch.optim.Adamax,
              matrix(weight_decay=[0.0, 0.1], maximize=[False, True], betas=[(0.9, 0.999), (0.5, 0.9)]),
              dict(weight_decay=0.1)),
    # both branches within the 12 steps run: rectified from step 6 on (beta2 0.999 and 0.9 alike)
    Algorithm(adamkit.RAdam, torch.optim.RAdam,
              matrix(weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True],
                     betas=[(0.9, 0.999), (0.8, 0.9)]),
              dict(betas=(0.8, 0.9), weight_decay=0.1, decoupled_weight_decay=True)),
    Algorithm(adamkit.NAdam, torch.optim.NAdam,
              matrix(weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True],
                     momentum_decay=[4e-3, 0.3]),
              dict(momentum_decay=0.3, weight_decay=0.1, decoupled_weight_decay=True), {"mu_product": 0.3}),
    Algorithm(adamkit.Adadelta, torch.optim.Adadelta,
              matrix(weight_decay=[0.0, 0.1], maximize=[False, True], rho=[0.9, 0.5]),
              dict(rho=0.5, weight_decay=0.1)),
    # step_sizes (1e-3, 0.02) reach both bounds within the 12 steps
    Algorithm(adamkit.Rprop, torch.optim.Rprop,
              matrix(maximize=[False, True], etas=[(0.5, 1.2), (0.3, 1.7)], step_sizes=[(1e-6, 50), (1e-3, 0.02)]),
              dict(etas=(0.3, 1.7), step_sizes=(1e-3, 0.02))),
    # t0=3 starts the average within the 12 steps; lambd=0.5 makes eta decay visibly
    Algorithm(adamkit.ASGD, torch.optim.ASGD,
              matrix(weight_decay=[0.0, 0.1], maximize=[False, True], t0=[1e6, 3.0], lambd=[1e-4, 0.5]),
              dict(t0=3.0, lambd=0.5, weight_decay=0.1), {"eta": 0.01, "mu": 0.5}),
    # torch has none of these: test_reference_packages.py checks them against their packages and papers
    Algorithm(adamkit.Lion, None,
              matrix(weight_decay=[0.0, 0.1], maximize=[False, True], betas=[(0.9, 0.99), (0.95, 0.98)]),
              dict(weight_decay=0.1)),
    Algorithm(adamkit.ADOPT, None,
              matrix(weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True],
                     clip_exponent=[0.25, None]),
              dict(weight_decay=0.1, decoupled_weight_decay=True)),
    # t_alpha_beta3=5: both warm-ups end within the runs
    Algorithm(adamkit.AdEMAMix, None,
              matrix(weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True],
                     t_alpha_beta3=[None, 5]),
              dict(t_alpha_beta3=5, weight_decay=0.1)),
    Algorithm(adamkit.Adan, None,
              matrix(weight_decay=[0.0, 0.1], no_prox=[False, True], maximize=[False, True],
                     betas=[(0.98, 0.92, 0.99), (0.8, 0.5, 0.9)]),
              dict(weight_decay=0.1, betas=(0.8, 0.5, 0.9))),
    Algorithm(adamkit.ScheduleFreeAdamW, None,
              matrix(weight_decay=[0.0, 0.1], maximize=[False, True], warmup_steps=[0, 3], r=[0.0, 0.5]),
              dict(weight_decay=0.1, warmup_steps=3)),
]
BY_NAME = {a.name: a for a in ALGORITHMS}
WITH_TORCH = [a for a in ALGORITHMS if a.torch_cls is not None]


def case_id(cls, flags: dict) -> str:
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in flags.items())
