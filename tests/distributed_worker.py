"""The ranks of test_distributed.py: one engine's cases in one 2-rank process group.

usage: torchrun --standalone --nproc_per_node 2 distributed_worker.py ENGINE OUT

ENGINE is one of ENGINES (ddp, fsdp2, zero, dcp). test_distributed.py starts the ranks
itself, with torchrun's environment variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), and serves the rendezvous store as torchrun does. Before the process
group starts each rank runs every case in one process on the whole batch: that is the
reference, and it loads the compiled kernels, which takes seconds. The ranks wait for
each other at the rendezvous store, for as long as that takes (WARM_UP_TIMEOUT); in the
process group any collective that hangs fails within COLLECTIVE_TIMEOUT. Then every
case runs under the engine, each rank on its half of each batch. Rank r writes
OUT/rank{r}.pt: per case, what the engine's run ended with and what the reference
ended with (see ``outcome``).
"""

from __future__ import annotations

import datetime
import itertools
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional

import adamkit
from adamkit.optimizers import gradient_checks

STEPS = 20
SAVE_AT = 10  # dcp: the checkpoint is written after this many steps
BATCH = 16  # examples per step, over all ranks
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=20)  # a hung collective fails the test in seconds
WARM_UP_TIMEOUT = datetime.timedelta(seconds=300)  # every rank's references, on a machine that may be busy


def make_model(seed: int = 0) -> nn.Sequential:
    """An MLP whose tensors FSDP2 shards over 2 ranks evenly (64 rows), unevenly (81 rows:
    41 and 40) and with an empty shard (1 row: rank 1 holds a (0, 81) shard). The 81x64
    weight (5184 elements) gets low-precision state; the smaller tensors keep fp32."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 81), nn.Tanh(), nn.Linear(81, 1))


def batch(step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s examples for ``rank`` of ``world`` (all of them for world 1)."""
    generator = torch.Generator().manual_seed(step)
    inputs, targets = torch.randn(BATCH, 16, generator=generator), torch.randn(BATCH, 1, generator=generator)
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    return inputs[part], targets[part]


OPTIMIZERS = {  # name: (adamkit's class, torch's class or None, keyword arguments)
    "adam": (adamkit.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.01)),
    "adamw-amsgrad": (adamkit.AdamW, torch.optim.AdamW, dict(lr=0.01, amsgrad=True)),
    "sgd": (adamkit.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "rmsprop": (adamkit.RMSprop, torch.optim.RMSprop, dict(lr=0.001, momentum=0.5, centered=True)),
    "adagrad": (adamkit.Adagrad, torch.optim.Adagrad, dict(lr=0.01)),
    "yogi": (adamkit.Yogi, None, dict(lr=0.01)),
}
KERNELS = {"fused": {}, "eager": {"foreach": False}}
STATES = {"fp32": None, "bf16": "bf16", "int8": "int8"}

GradHook = Callable[[int, nn.Module, int, int], None]  # (step, model, rank, world): changes gradients after backward


@dataclass(frozen=True)
class Case:
    """An optimizer, its settings, and what to do to the gradients after each backward."""

    name: str
    optimizer: type[torch.optim.Optimizer]
    kwargs: dict = field(default_factory=dict)
    torch_optimizer: type[torch.optim.Optimizer] | None = None  # also run torch's, for a bitwise comparison
    on_grads: GradHook | None = None
    frozen_layer: int | None = None  # adamkit.freeze the model's layer of this index
    scaled: bool = False  # train with torch.amp.GradScaler


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """A parameter's or state tensor's whole value (a collective for a DTensor)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def layer_of(model: nn.Module, index: int) -> nn.Module:
    """The model's layer ``index`` (under DDP, of the wrapped model)."""
    return (model.module if hasattr(model, "module") else model)[index]


def product_cases() -> list[Case]:
    """Every optimizer with every kernel and state format; foreach=False fp32 ones also run torch's for-loop."""
    cases = []
    for (name, (ours, theirs, kwargs)), (kernel, flags), (state, state_dtype) in itertools.product(
        OPTIMIZERS.items(), KERNELS.items(), STATES.items()
    ):
        compared = theirs if kernel == "eager" and state_dtype is None else None
        cases.append(Case(f"{name}-{kernel}-{state}", ours, {**kwargs, **flags, "state_dtype": state_dtype}, compared))
    return cases


def nan_in_rank0_shard(step: int, model: nn.Module, rank: int, world: int) -> None:
    """Step 5's gradient of the 81x64 weight gets a NaN in rank 0's shard (FSDP2) only."""
    if step == 5 and rank == 0:
        local(layer_of(model, 2).weight.grad)[0, 0] = float("nan")


def inf_on_last_rank(step: int, model: nn.Module, rank: int, world: int) -> None:
    """After DDP's all-reduce, the last rank's replica of a gradient gets an Inf, the others' stay finite."""
    if step == 5 and rank == world - 1:
        layer_of(model, 2).weight.grad[0, 0] = float("inf")


def inf_on_last_rank_in_the_last_step(step: int, model: nn.Module, rank: int, world: int) -> None:
    """After DDP's all-reduce, the last rank's replica of a gradient gets an Inf in the last
    step: a GradScaler finds an overflow on that rank only (and sets its scale alone, which
    the last step leaves unused)."""
    if step == STEPS - 1 and rank == world - 1:
        layer_of(model, 2).weight.grad[0, 0] = float("inf")


def nan_in_last_bias(step: int, model: nn.Module, rank: int, world: int) -> None:
    """A NaN in the last bias's gradient, on every rank: under ZeroRedundancyOptimizer one
    rank's optimizer holds that bias, the other's sees only finite gradients."""
    if step == 5:
        layer_of(model, 4).bias.grad[0] = float("nan")


def zero_rank0_shard(step: int, model: nn.Module, rank: int, world: int) -> None:
    """Rank 0's shard of the 81x64 weight's gradient is zeros, rank 1's is not (FSDP2)."""
    if rank == 0 and world > 1:
        local(layer_of(model, 2).weight.grad).zero_()


def zero_last_weight(step: int, model: nn.Module, rank: int, world: int) -> None:
    """The (1, 81) weight's whole gradient is zeros (under FSDP2 rank 1 holds an empty shard of it)."""
    layer_of(model, 4).weight.grad.zero_()


def regression_cases(engine: str) -> list[Case]:
    """What went wrong before ranks agreed: skips decided on one rank, warnings from a shard;
    and gradient clipping, whose norm is over every rank's part of a sharded gradient."""
    skipping = dict(lr=0.01, skip_nonfinite=True)
    clipping = [Case(f"clip-{kernel}", adamkit.SGD, dict(lr=0.05, momentum=0.9, max_grad_norm=0.01, **flags))
                for kernel, flags in KERNELS.items()]
    if engine == "ddp":
        return clipping + [
            case for kernel, flags in KERNELS.items() for case in (
                Case(f"skip-inf-on-one-rank-{kernel}", adamkit.Adam, {**skipping, **flags}, on_grads=inf_on_last_rank),
                Case(f"gradscaler-inf-on-one-rank-{kernel}", adamkit.Adam, dict(lr=0.01, **flags),
                     on_grads=inf_on_last_rank_in_the_last_step, scaled=True),
            )
        ]
    if engine == "zero":
        return clipping + [Case(f"skip-nan-in-one-partition-{k}", adamkit.Adam, {**skipping, **f}, on_grads=nan_in_last_bias)
                           for k, f in KERNELS.items()]
    if engine == "fsdp2":
        cases = list(clipping)
        for kernel, flags in KERNELS.items():
            decaying = dict(lr=0.01, weight_decay=0.1, **flags)
            cases += [
                Case(f"skip-nan-in-one-shard-{kernel}", adamkit.Adam, {**skipping, **flags}, on_grads=nan_in_rank0_shard),
                Case(f"zero-shard-nonzero-gradient-{kernel}", adamkit.AdamW, decaying, on_grads=zero_rank0_shard),
                Case(f"zero-gradient-warns-every-rank-{kernel}", adamkit.AdamW, decaying, on_grads=zero_last_weight),
                Case(f"freeze-{kernel}", adamkit.AdamW, decaying, frozen_layer=2),
                Case(f"checks-off-{kernel}", adamkit.Adam, dict(lr=0.01, warn_zero_grad_update=False, **flags)),
            ]
        return cases
    return []


# Adam with every kernel and state format; each other optimizer once, with low-precision
# state (SGD's rounding is keyed by the optimizer's step count, which the checkpoint keeps).
DCP_CASES = (
    *(f"adam-{kernel}-{state}" for kernel in KERNELS for state in STATES),
    "adamw-amsgrad-eager-int8", "sgd-fused-bf16", "sgd-eager-bf16", "rmsprop-fused-int8", "adagrad-eager-bf16",
    "yogi-fused-int8",
)


def cases_for(engine: str) -> list[Case]:
    if engine == "dcp":
        return [case for case in product_cases() if case.name in DCP_CASES]
    return product_cases() + regression_cases(engine)


AGREEMENTS: list[int] = []  # how many flags each of the optimizer's all-reduces carried, since train() began


def _counted(flags, group):
    AGREEMENTS.append(len(flags))
    return _on_any_rank(flags, group)


_on_any_rank, gradient_checks.on_any_rank = gradient_checks.on_any_rank, _counted


def train(model: nn.Module, optimizer, case: Case, steps: range, rank: int = 0, world: int = 1) -> list[list[str]]:
    """Run ``steps``; return the warnings each step raised."""
    AGREEMENTS.clear()
    scaler = torch.amp.GradScaler("cpu", enabled=case.scaled)  # disabled: passes everything through
    raised = []
    for step in steps:
        inputs, targets = batch(step, rank, world)
        optimizer.zero_grad()
        scaler.scale(functional.mse_loss(model(inputs), targets)).backward()
        if case.on_grads is not None:
            case.on_grads(step, model, rank, world)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scaler.step(optimizer)
            scaler.update()
        raised.append([str(w.message) for w in caught])
    return raised


def adamkit_optimizer(optimizer) -> adamkit.optimizers.RuleOptimizer | None:
    """The adamkit optimizer that steps this rank's parameters (ZeroRedundancyOptimizer's inner one)."""
    inner = getattr(optimizer, "optim", optimizer)
    return inner if isinstance(inner, adamkit.optimizers.RuleOptimizer) else None


def outcome(model: nn.Module, optimizer, raised: list[list[str]], with_state: bool = True) -> dict:
    """Full parameters, the optimizer's state (torch's format, full tensors; absent where
    each rank holds a different part, as under ZeroRedundancyOptimizer), skipped steps,
    the warnings per step, and the storage of each parameter's state on this rank."""
    inner = adamkit_optimizer(optimizer)
    result = {
        "params": [full(p) for p in model.parameters()],
        "skipped": inner.skipped_steps if inner is not None else 0,
        "kernels": inner.last_step_kernels if inner is not None else {},
        "grad_norm": None if inner is None or inner.last_grad_norm is None else inner.last_grad_norm.item(),
        "warnings": raised,
        "agreements": list(AGREEMENTS),
    }
    if with_state:
        state = optimizer.state_dict()["state"]
        result["state"] = {i: {k: full(v) for k, v in s.items() if torch.is_tensor(v)} for i, s in sorted(state.items())}
        result["layout"] = [
            {"param": (tuple(local(p).shape), _placements(p)),
             **{k: (tuple(local(v).shape), local(v).dtype, _placements(v)) for k, v in optimizer.state[p].items()
                if k != "step" and not k.endswith(".scale")}}
            for p in model.parameters() if p in optimizer.state
        ]
    return result


def _placements(t: torch.Tensor) -> str:
    return str(getattr(t, "placements", None))


def build_optimizer(case: Case, params, torch_class: bool = False):
    cls = case.torch_optimizer if torch_class else case.optimizer
    kwargs = dict(case.kwargs)
    if torch_class:
        kwargs.pop("state_dtype", None)
    return cls(params, **kwargs)


def reference(case: Case, torch_class: bool = False) -> dict:
    """The case in one process, on whole batches."""
    model = make_model()
    optimizer = build_optimizer(case, model.parameters(), torch_class)
    if case.frozen_layer is not None:
        adamkit.freeze(optimizer, model[case.frozen_layer])
    raised = train(model, optimizer, case, range(STEPS))
    return outcome(model, optimizer, raised)


# --- the engines ---------------------------------------------------------------------------

def ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def fsdp2(model: nn.Module) -> nn.Module:
    """``model`` as one FSDP2 unit: each parameter sharded on its first dimension, one
    all-gather and one reduce-scatter per step (a unit per layer took twice as long here)."""
    from torch.distributed.fsdp import fully_shard

    return fully_shard(model)


def run_engine(engine: str, case: Case, rank: int, world: int, torch_class: bool = False) -> dict:
    """``case`` under ``engine`` (ddp, fsdp2 or zero), each rank on its part of each batch."""
    model = fsdp2(make_model()) if engine == "fsdp2" else ddp(make_model())
    if engine == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        cls = case.torch_optimizer if torch_class else case.optimizer
        kwargs = {k: v for k, v in case.kwargs.items() if not (torch_class and k == "state_dtype")}
        optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **kwargs)
    else:
        optimizer = build_optimizer(case, model.parameters(), torch_class)
    if case.frozen_layer is not None:
        adamkit.freeze(optimizer, layer_of(model, case.frozen_layer))
    raised = train(model, optimizer, case, range(STEPS), rank, world)
    return outcome(model, optimizer, raised, with_state=engine != "zero")


def run_dcp(case: Case, rank: int, world: int, checkpoint: Path) -> dict:
    """FSDP2 with a DCP checkpoint after SAVE_AT steps: the uninterrupted run, and a fresh
    model and optimizer (initialized from another seed) resumed from the checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = fsdp2(make_model())
    optimizer = build_optimizer(case, model.parameters())
    raised = train(model, optimizer, case, range(SAVE_AT), rank, world)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optimizer_state}, checkpoint_id=checkpoint)
    at_save = outcome(model, optimizer, raised)
    raised = train(model, optimizer, case, range(SAVE_AT, STEPS), rank, world)
    uninterrupted = outcome(model, optimizer, raised)

    model = fsdp2(make_model(seed=1))
    optimizer = build_optimizer(case, model.parameters())
    model_state, optimizer_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optim": optimizer_state}
    dcp.load(loaded, checkpoint_id=checkpoint)
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    raised = train(model, optimizer, case, range(SAVE_AT, STEPS), rank, world)
    return {"at_save": at_save, "uninterrupted": uninterrupted, "resumed": outcome(model, optimizer, raised)}


ENGINES = ("ddp", "fsdp2", "zero", "dcp")


def main() -> None:
    engine, out = sys.argv[1], Path(sys.argv[2])
    if engine not in ENGINES:
        raise SystemExit(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)  # one core per rank
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout=WARM_UP_TIMEOUT)
    cases = cases_for(engine)
    results = {case.name: {"reference": reference(case)} for case in cases}
    for case in cases:
        if case.torch_optimizer is not None:
            results[case.name]["torch_reference"] = reference(case, torch_class=True)
    store.set(f"warmed-up-{rank}", "yes")
    store.wait([f"warmed-up-{other}" for other in range(world)])

    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)
    try:
        for case in cases:
            print(f"{engine}: {case.name}", flush=True)  # the log's last such line names a failing case
            if engine == "dcp":
                results[case.name].update(run_dcp(case, rank, world, out / "checkpoints" / case.name))
                continue
            results[case.name]["engine"] = run_engine(engine, case, rank, world)
            if case.torch_optimizer is not None:
                results[case.name]["torch_engine"] = run_engine(engine, case, rank, world, torch_class=True)
    finally:
        dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
