"""int8 state's accuracy on bitsandbytes' own 8-bit optimizer test, against fp32 state.

Run: .venv/bin/python benchmarks/int8_accuracy.py [--steps 50] [--peers]

bitsandbytes checks its 8-bit Adam on matrices of 1024 x 32, 1024 x 1024 and 1024 x
4097, with parameters 0.1 * randn and fresh gradients 0.01 * randn each step, against
torch.optim's fp32 Adam. Here each run goes on for ``--steps`` steps without
resynchronising, and reports, per shape, the mean |p_int8 - p_fp32| and that error over
the mean distance the fp32 run moved (|p_fp32 - p_0|): the share of the update lost to
the 8-bit state. ``--peers`` adds bitsandbytes' Adam8bit and torchao's AdamW8bit, where
installed, on the same inputs.
"""

import argparse

import torch

import adamkit
from adamkit import benchmark

SHAPES = [(1024, 32), (1024, 1024), (1024, 4097)]


def peers() -> dict:
    found = {}
    try:
        import bitsandbytes

        found["bitsandbytes Adam8bit"] = lambda params: bitsandbytes.optim.Adam8bit(params)
    except ImportError:
        pass
    try:
        from torchao.optim import AdamW8bit

        found["torchao AdamW8bit"] = lambda params: AdamW8bit(params, weight_decay=0.0)
    except ImportError:
        pass
    return found


def error(factory, shape, steps: int, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(shape, generator=g) * 0.1
    reference, tested = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    torch_adam, optimizer = torch.optim.Adam([reference]), factory([tested])
    for _ in range(steps):
        grad = torch.randn(shape, generator=g) * 0.01
        reference.grad, tested.grad = grad.clone(), grad.clone()
        torch_adam.step()
        optimizer.step()
    err = (tested - reference).abs().mean().item()
    return err, err / (reference - start).abs().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--peers", action="store_true")
    args = parser.parse_args()
    print(f"machine: {benchmark.machine()}; {args.steps} steps; mean |error|, and its share of the distance moved")
    candidates = {
        "adamkit int8": lambda params: adamkit.Adam(params, state_dtype="int8"),
        "adamkit bf16": lambda params: adamkit.Adam(params, state_dtype="bf16"),
    }
    if args.peers:
        candidates.update(peers())
    for name, factory in candidates.items():
        results = [error(factory, shape, args.steps) for shape in SHAPES]
        cells = "  ".join(f"{shape[0]}x{shape[1]}: {err:.2e} ({share:.2%})" for shape, (err, share) in zip(SHAPES, results))
        print(f"{name:24s} {cells}", flush=True)


if __name__ == "__main__":
    main()
