"""Measures the peak resident memory of optimizer steps; used by test_memory.py.

usage: python memory_worker.py OPTIMIZER

OPTIMIZER names an entry of OPTIMIZERS. The model mixes a few large tensors with
many small ones. Prints one JSON line: the bytes of the model's params, grads and
the optimizer's state, and how far the peak resident set size (Linux VmHWM, reset
just before the optimizer is built) rose above the resident size at that moment.
"""

import gc
import json
import sys

import torch

import adamkit

OPTIMIZERS = {
    "adamkit.Adam": lambda params: adamkit.Adam(params, lr=1e-3),
    "adamkit.AdamW-amsgrad": lambda params: adamkit.AdamW(params, lr=1e-3, amsgrad=True),
    "adamkit.Adam-eager": lambda params: adamkit.Adam(params, lr=1e-3, foreach=False),
    "adamkit.SGD-momentum": lambda params: adamkit.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4),
    "adamkit.Adagrad": lambda params: adamkit.Adagrad(params, lr=1e-3),
    "adamkit.Yogi": lambda params: adamkit.Yogi(params, lr=1e-3),
    "adamkit.Adam-bf16-state": lambda params: adamkit.Adam(params, lr=1e-3, state_dtype="bf16"),
    "adamkit.Adam-int8-state": lambda params: adamkit.Adam(params, lr=1e-3, state_dtype="int8"),
    # Controls: torch's foreach step allocates intermediates as large as the model, its
    # for-loop intermediates as large as each parameter.
    "torch.optim.Adam-foreach": lambda params: torch.optim.Adam(params, lr=1e-3, foreach=True),
    "torch.optim.Adam-for-loop": lambda params: torch.optim.Adam(params, lr=1e-3, foreach=False),
}
STEPS = 3


def status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def make_params(tensors, elements, generator):
    params = []
    for _ in range(tensors):
        p = torch.nn.Parameter(torch.randn(elements, generator=generator))
        p.grad = torch.randn(elements, generator=generator)
        params.append(p)
    return params


def nbytes(tensors):
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def main():
    make_optimizer = OPTIMIZERS[sys.argv[1]]
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    warm_up = make_optimizer(make_params(3, 4096, generator))  # loads compiled kernels, low-precision ones too
    for _ in range(STEPS):
        warm_up.step()
    del warm_up
    # 254 tensors for 18M parameters: ten times as many tensors per parameter as GPT-2
    # has, as each state tensor also costs ~1-2 KB of bookkeeping (torch's own fused Adam
    # included), which is not memory the step allocates.
    params = make_params(4, 1 << 22, generator) + make_params(250, 4096, generator)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    before = status_kib("VmRSS")
    optimizer = make_optimizer(params)
    for _ in range(STEPS):
        optimizer.step()
    peak = status_kib("VmHWM")
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    print(json.dumps({
        "params": nbytes(params),
        "grads": nbytes([p.grad for p in params]),
        "state": nbytes(state),
        "largest_param": max(p.nbytes for p in params),
        "rise": (peak - before) * 1024,
    }))


if __name__ == "__main__":
    main()
