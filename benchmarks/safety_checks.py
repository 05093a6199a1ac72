"""Cost of adamkit's optional safety checks per Adam step (skip_nonfinite, zero-grad warning).

Run: .venv/bin/python benchmarks/safety_checks.py [--params 4000000] [--tensors 4] [--repeats 30]
Prints the median ms per step of adamkit.Adam with each check on and off, and torch.optim.Adam's
(for-loop) in the same run, as ratios.
"""

import argparse
import platform
import statistics
import time

import torch

import adamkit


def median_step_ms(make_optimizer, params, repeats, warmup=3):
    optimizer = make_optimizer(params)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        optimizer.step()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=4_000_000)
    parser.add_argument("--tensors", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(args.params // args.tensors, generator=g)) for _ in range(args.tensors)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    variants = {
        "torch.optim.Adam (for-loop)": lambda ps: torch.optim.Adam(ps, foreach=False),
        "adamkit.Adam, no checks": lambda ps: adamkit.Adam(ps, warn_zero_grad_update=False),
        "adamkit.Adam, zero-grad warning (default)": lambda ps: adamkit.Adam(ps),
        "adamkit.Adam, skip_nonfinite=True": lambda ps: adamkit.Adam(ps, skip_nonfinite=True, warn_zero_grad_update=False),
    }
    results = {name: median_step_ms(make, params, args.repeats) for name, make in variants.items()}
    base = results["adamkit.Adam, no checks"]
    print(f"{args.params:,} fp32 params in {args.tensors} tensors, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    for name, ms in results.items():
        print(f"{name:45s} {ms:8.2f} ms  {ms / base:5.2f}x of no checks")


if __name__ == "__main__":
    main()
