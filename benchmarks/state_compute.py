"""Compute cost per element of an Adam step by state format, on one CPU thread.

Run: .venv/bin/python benchmarks/state_compute.py [--elements 262144] [--repeats 300]

With a tensor small enough to stay in the last-level cache (262,144 elements: 4 MiB of
parameters, gradients and fp32 state), a step costs what its arithmetic costs, not what
moving its bytes costs. Each format's nanoseconds per element are the median step on
that tensor minus the median step on a 4096-element one (the per-step overhead), over
the element difference; the formats take turns, 10 steps at a time. Beside them: the bytes
each moves per parameter, and the nanoseconds per element that the machine's stream
bandwidth (all threads) needs for those bytes. Where ``compute / threads`` is above
the memory figure, the step is compute-bound on this machine at that thread count.
"""

import argparse
import statistics
import time

import numba
import torch

import adamkit
from adamkit import benchmark

FORMATS = {"fp32": None, "bf16": "bf16", "int8": "int8"}
# Bytes per parameter: read param, grad and both moments; write param and both moments.
# int8 moments carry an fp32 scale per 256 values, read and written.
BYTES = {"fp32": 28.0, "bf16": 20.0, "int8": 16.0 + 4 * 4 / 256}
SMALL = 4096


def step_ms(formats, elements, repeats, run=10):
    """Median ms of adamkit.Adam's step on one tensor of ``elements``. The formats take
    turns ``run`` steps at a time, the first of each run untimed (it brings the
    format's tensors back into the cache)."""
    g = torch.Generator().manual_seed(0)
    optimizers = {}
    for name, state_dtype in formats.items():
        p = torch.nn.Parameter(torch.randn(elements, generator=g))
        p.grad = torch.randn(elements, generator=g)
        optimizers[name] = adamkit.Adam([p], lr=1e-3, state_dtype=state_dtype, low_precision_min_elements=0)
    times = {name: [] for name in optimizers}
    for round_ in range(1 + -(-repeats // (run - 1))):
        for name, optimizer in optimizers.items():
            for step in range(run):
                start = time.perf_counter()
                optimizer.step()
                if round_ and step:
                    times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=262_144)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    bandwidth = benchmark.stream_bandwidth(16_777_216)
    print(f"machine: {benchmark.machine()}")
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    large = step_ms(FORMATS, args.elements, args.repeats)
    small = step_ms(FORMATS, SMALL, args.repeats)
    print(f"stream bandwidth with {threads} threads: {bandwidth:.1f} GB/s")
    print(f"{'state':<6} {'compute ns/element (1 thread)':>30} {'bytes/param':>12} {'memory ns/element':>18}")
    for name in FORMATS:
        compute = (large[name] - small[name]) * 1e6 / (args.elements - SMALL)
        print(f"{name:<6} {compute:30.3f} {BYTES[name]:12.2f} {BYTES[name] / bandwidth:18.3f}")


if __name__ == "__main__":
    main()
