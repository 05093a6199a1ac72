"""Trains a small model, checkpointing every few steps; used by test_checkpoints.py.

usage: python resume_worker.py CHECKPOINT TOTAL_STEPS [--resume] [--pause-after-checkpoint N]

With --pause-after-checkpoint N it prints "checkpoint N" after writing the checkpoint
at step N and then blocks on stdin, so the test can SIGKILL it at a known point.
Prints the final parameters' bytes (hex) at the end.
"""

import argparse
import sys

import torch
from torch import nn

import adamkit


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)  # data order seeded by step
    return torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("total_steps", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-after-checkpoint", type=int)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = adamkit.AdamW(adamkit.param_groups(model, weight_decay=0.05), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.7)
    start = 0
    if args.resume:
        start = adamkit.load_checkpoint(args.checkpoint, model, optimizer, scheduler)["step"]
    for step in range(start, args.total_steps):
        x, y = batch(step)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % 3 == 0:
            adamkit.save_checkpoint(args.checkpoint, model, optimizer, scheduler, extra={"step": step + 1})
            if args.pause_after_checkpoint == step + 1:
                print(f"checkpoint {step + 1}", flush=True)
                sys.stdin.readline()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    print(flat.numpy().tobytes().hex())


if __name__ == "__main__":
    main()
