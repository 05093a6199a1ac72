"""Where torch's ``fused=True`` gives the same bits as adamkit's default kernel (CPU).

For every flag combination of the algorithms torch has a fused CPU kernel for, both
optimizers run 20 steps on the same parameters and gradients (fp32, five tensors of
1 to 40,000 elements); the script prints, per algorithm, in how many combinations the
parameters and state end bit for bit equal, and the largest difference otherwise.

    python benchmarks/fused_agreement.py
"""

from __future__ import annotations

import itertools
import platform
import warnings

import torch

import adamkit

SHAPES = [(40000,), (33, 17), (7,), (), (5, 3, 4)]


def combinations(**axes):
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


ALGORITHMS = {
    "Adam": (torch.optim.Adam, adamkit.Adam, combinations(
        weight_decay=[0.0, 0.1], amsgrad=[False, True], maximize=[False, True], decoupled_weight_decay=[False, True])),
    "SGD": (torch.optim.SGD, adamkit.SGD, [f for f in combinations(
        momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True])
        if not (f["nesterov"] and (f["momentum"] == 0 or f["dampening"] != 0))]),
    "Adagrad": (torch.optim.Adagrad, adamkit.Adagrad, combinations(
        lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.1], maximize=[False, True], initial_accumulator_value=[0.0, 0.5])),
}


def run(cls, flags, **kernel):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in SHAPES]
    optimizer = cls(params, lr=0.01, **flags, **kernel)
    for step in range(20):
        grads = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads)
        optimizer.step()
    return [t.detach() for p in params for t in (p, *optimizer.state[p].values())]


def main() -> None:
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, CPU fused kernels, fp32, 20 steps")
    warnings.simplefilter("ignore")
    for name, (torch_cls, adamkit_cls, flag_sets) in ALGORITHMS.items():
        equal, worst, differing = 0, 0.0, []
        for flags in flag_sets:
            theirs = run(torch_cls, flags, fused=True)
            ours = run(adamkit_cls, flags)
            difference = max((a.double() - b.double()).abs().max().item() for a, b in zip(theirs, ours))
            equal += difference == 0
            worst = max(worst, difference)
            if difference:
                differing.append(",".join(f"{k}={v}" for k, v in flags.items() if v))
        print(f"{name:8s} bit-equal in {equal:2d} of {len(flag_sets):2d} flag combinations; largest difference {worst:.3g}")
        if differing and len(differing) < len(flag_sets):
            print("         differ with: " + "; ".join(flag or "defaults" for flag in differing))


if __name__ == "__main__":
    main()
