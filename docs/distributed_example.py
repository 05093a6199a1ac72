"""adamkit under torch.distributed: DDP, FSDP2 or ZeroRedundancyOptimizer, with DCP checkpoints.

CPU, 2 processes (gloo):
    torchrun --standalone --nproc_per_node 2 docs/distributed_example.py --engine fsdp2
GPUs, one process per GPU (NCCL):
    torchrun --standalone --nproc_per_node 2 docs/distributed_example.py --engine fsdp2 --device cuda

Checkpoints (ddp and fsdp2; DCP does not read ZeroRedundancyOptimizer's state dict):
--save DIR writes one at the end, --resume DIR starts from one, e.g.
    torchrun --standalone --nproc_per_node 2 docs/distributed_example.py --save ckpt/30
    torchrun --standalone --nproc_per_node 2 docs/distributed_example.py --resume ckpt/30 --save ckpt/60
Each process trains on its own part of each batch; rank 0 prints the loss.
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import adamkit


def wrap(model: nn.Module, args: argparse.Namespace, device: torch.device):
    """The model as ``args.engine`` trains it, and the optimizer for it."""
    options = dict(lr=1e-3, weight_decay=0.01, state_dtype=args.state_dtype, skip_nonfinite=True)
    if args.engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        return model, adamkit.AdamW(model.parameters(), **options)  # state is sharded like each parameter
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.engine == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        # Each rank's adamkit.AdamW holds the state of its part of the parameters.
        return model, ZeroRedundancyOptimizer(model.parameters(), optimizer_class=adamkit.AdamW, **options)
    return model, adamkit.AdamW(model.parameters(), **options)


def main(args: argparse.Namespace) -> None:
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    device = torch.device(args.device, local_rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 1)).to(device)
    model, optimizer = wrap(model, args, device)
    start = 0
    if args.resume:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optimizer_state, "step": torch.tensor(0)}
        dcp.load(state, checkpoint_id=args.resume)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        start = int(state["step"])

    for step in range(start, start + args.steps):
        generator = torch.Generator().manual_seed(step * world + rank)  # each rank its own examples
        inputs = torch.randn(64, 32, generator=generator).to(device)
        targets = inputs[:, :1].sin()
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and (step + 1) % 10 == 0:
            print(f"step {step + 1}  loss {loss.item():.6f}", flush=True)

    if args.save:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optimizer_state, "step": torch.tensor(start + args.steps)}
        dcp.save(state, checkpoint_id=args.save)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("ddp", "fsdp2", "zero"), default="fsdp2")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--state-dtype", choices=("fp32", "bf16", "int8"), default="fp32")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--resume", metavar="DIR", help="a DCP checkpoint to start from")
    parser.add_argument("--save", metavar="DIR", help="where to write a DCP checkpoint at the end")
    args = parser.parse_args()
    if args.engine == "zero" and (args.resume or args.save):
        parser.error("DCP does not read ZeroRedundancyOptimizer's state dict: checkpoint with --engine ddp or fsdp2")
    main(args)
