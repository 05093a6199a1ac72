"""Optimizer state per rank of adamkit.Adam under FSDP2 and ZeroRedundancyOptimizer, by state format.

Run: .venv/bin/python benchmarks/distributed_state.py [--world-sizes 1,2,4] [--width 1024] [--layers 4]

For each world size, spawns that many ranks (gloo, 127.0.0.1). Each builds an MLP of
``--layers`` Linear(width, width) layers, wraps it (FSDP2: ``fully_shard`` per layer
and on the root; ZeRO: DDP with ZeroRedundancyOptimizer), takes one step with
``state_dtype`` fp32, bf16 and int8, and counts the bytes of the state its optimizer
holds: every storage its state tensors use (shards, int8 block scales and step counters
included), each once. Prints a markdown table of the largest rank's bytes and the
parameters' bytes per rank.
"""

import argparse
import datetime
import os
import platform
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import adamkit

FORMATS = ("fp32", "bf16", "int8")
ENGINES = ("fsdp2", "zero")


def state_bytes(states) -> int:
    """Bytes of the storages the state tensors of ``states`` (param -> dict) use, each counted once."""
    storages = {}
    for state in states:
        for value in state.values():
            if torch.is_tensor(value):
                local = value.to_local() if hasattr(value, "to_local") else value
                storage = local.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def params_bytes(model: nn.Module) -> int:
    return sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in model.parameters())


def one_step(engine: str, state_dtype: str, width: int, layers: int) -> tuple[int, int]:
    """(state bytes, parameter bytes) on this rank after one step."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))
    if engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
        fully_shard(model)
        optimizer = adamkit.Adam(model.parameters(), lr=1e-3, state_dtype=state_dtype)
        states = lambda: optimizer.state.values()  # noqa: E731
    else:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
        optimizer = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=adamkit.Adam, lr=1e-3, state_dtype=state_dtype
        )
        states = lambda: optimizer.optim.state.values()  # noqa: E731
    model(torch.randn(8, width)).square().mean().backward()
    optimizer.step()
    return state_bytes(states()), params_bytes(model)


def rank_main(rank: int, world: int, port: int, args: argparse.Namespace, out: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    torch.set_num_threads(1)
    try:
        rows = []
        for engine in ENGINES:
            for state_dtype in FORMATS:
                measured = one_step(engine, state_dtype, args.width, args.layers)
                gathered = [None] * world
                dist.all_gather_object(gathered, measured)
                rows.append((engine, state_dtype, max(s for s, _ in gathered), max(p for _, p in gathered)))
        if rank == 0:
            torch.save(rows, out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", default="1,2,4", help="comma-separated numbers of ranks")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    world_sizes = [int(size) for size in args.world_sizes.split(",")]
    table = {}
    with tempfile.TemporaryDirectory() as scratch:
        for world in world_sizes:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            out = Path(scratch) / f"{world}.pt"
            torch.multiprocessing.spawn(rank_main, args=(world, port, args, out), nprocs=world)
            for engine, state_dtype, state, params in torch.load(out):
                table[engine, state_dtype, world] = (state, params)
    count = args.layers * (args.width * args.width + args.width)
    print(f"adamkit.Adam, {args.layers} x Linear({args.width}, {args.width}) = {count:,} fp32 parameters; "
          f"torch {torch.__version__}, {platform.machine()}, gloo")
    print()
    print("| engine | state | " + " | ".join(f"{world} rank{'s' if world > 1 else ''}" for world in world_sizes) + " |")
    print("|---|---|" + "---|" * len(world_sizes))
    for engine in ENGINES:
        for state_dtype in FORMATS:
            cells = [f"{table[engine, state_dtype, world][0] / 2**20:.2f} MiB" for world in world_sizes]
            print(f"| {engine} | {state_dtype} | " + " | ".join(cells) + " |")
    cells = [f"{table['fsdp2', 'fp32', world][1] / 2**20:.2f} MiB" for world in world_sizes]
    print("| fsdp2 | parameters | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
