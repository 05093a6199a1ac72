"""Cost of the agreed gradient checks per adamkit.Adam step under FSDP2 (one all-reduce each step).

Run: torchrun --standalone --nproc_per_node 2 benchmarks/distributed_checks.py [--layers 16] [--width 256]

Each rank builds an MLP of ``--layers`` Linear(width, width) layers, shards it with
FSDP2 (a unit per layer), takes one backward pass and then times optimizer steps alone
(median of 30 after 3 warm-up steps, ranks lined up by a barrier before each) with the
checks off, the zero-gradient warning (the default), ``skip_nonfinite=True`` and both.
Rank 0 prints the medians, twice, so that the spread shows.
"""

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import adamkit

VARIANTS = {
    "no checks": dict(warn_zero_grad_update=False),
    "zero-grad warning (default)": {},
    "skip_nonfinite=True": dict(warn_zero_grad_update=False, skip_nonfinite=True),
    "both": dict(skip_nonfinite=True),
}


def median_step_ms(args: argparse.Namespace, options: dict) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(args.width, args.width) for _ in range(args.layers)))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    optimizer = adamkit.Adam(model.parameters(), **options)
    model(torch.randn(8, args.width)).square().mean().backward()
    for _ in range(3):
        optimizer.step()
    times = []
    for _ in range(30):
        dist.barrier()
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    if dist.get_rank() == 0:
        parameters = 2 * args.layers
        print(f"{dist.get_world_size()} ranks, gloo, {parameters} DTensor parameters, "
              f"{args.layers * (args.width + 1) * args.width:,} elements, torch {torch.__version__}")
    for _ in range(2):
        results = {name: median_step_ms(args, options) for name, options in VARIANTS.items()}
        if dist.get_rank() == 0:
            print("  ".join(f"{name}: {ms:.2f} ms" for name, ms in results.items()))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
