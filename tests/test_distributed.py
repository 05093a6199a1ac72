"""adamkit under DDP, FSDP2, ZeroRedundancyOptimizer and DCP: 2 ranks on gloo (127.0.0.1).

Each engine's cases run in one spawn of ``distributed_worker.py`` (a spawn costs about
10 s, most of it loading the compiled kernels); the tests read what the ranks wrote. A
hung collective fails its spawn within the worker's ``COLLECTIVE_TIMEOUT``.

Every case trains an MLP whose tensors FSDP2 shards evenly, unevenly and with an empty
shard, 20 steps of 16 examples, each rank on its half of them, and compares with the
same run in one process on all 16 (the reference).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

import adamkit
import distributed_worker as worker
from adamkit.state.formats import MIN_ELEMENTS

WORKER = Path(__file__).with_name("distributed_worker.py")
WORLD = 2
SPAWN_TIMEOUT = 400  # seconds for a whole spawn, on a busy machine; a hung collective ends it in seconds
FP32_PARAM_TOLERANCE = 2e-7  # against one process on the whole batch: gradients summed in another order
FP32_STATE_TOLERANCE = 1e-5  # of each state tensor's largest magnitude

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


class Spawn(NamedTuple):
    out: Path  # the ranks' logs, results and checkpoints
    ranks: list[dict]  # what each rank wrote
    failure: str | None


def _spawn(engine: str, out: Path) -> Spawn:
    """Run ``engine``'s cases on WORLD ranks."""
    # The ranks meet at a store served here, as torchrun's agent serves it, on a port the system picks.
    store = torch.distributed.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=worker.WARM_UP_TIMEOUT
    )
    environment = {
        **os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(WORLD),
        "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",  # one core per rank
    }
    logs = [out / f"rank{rank}.log" for rank in range(WORLD)]
    ranks = []
    for rank, log in enumerate(logs):
        with open(log, "w") as sink:
            ranks.append(subprocess.Popen(
                [sys.executable, str(WORKER), engine, str(out)], stdout=sink, stderr=subprocess.STDOUT,
                env={**environment, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            ))
    try:
        codes = [process.wait(timeout=SPAWN_TIMEOUT) for process in ranks]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for process in ranks:
            process.kill()
    if codes != [0] * WORLD:
        tails = "\n".join(f"--- rank {rank} ---\n{log.read_text()[-3000:]}" for rank, log in enumerate(logs))
        return Spawn(out, [], f"{engine} ranks ended with {codes or 'a timeout'}:\n{tails}")
    return Spawn(out, [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)], None)


@pytest.fixture(scope="module")
def spawns(tmp_path_factory):
    """``spawns(engine)``: that engine's spawn, run on first use (a failed one is not retried)."""
    done: dict[str, Spawn] = {}

    def spawn(engine: str) -> Spawn:
        if engine not in done:
            done[engine] = _spawn(engine, tmp_path_factory.mktemp(engine))
        if done[engine].failure:
            pytest.fail(done[engine].failure)
        return done[engine]

    return spawn


@pytest.fixture
def ranks(spawns, engine) -> list[dict]:
    """Each rank's results for the test's ``engine``."""
    return spawns(engine).ranks


def _cases(engines, keep=lambda name: True) -> list:
    return [
        pytest.param(engine, case.name, id=f"{engine}-{case.name}")
        for engine in engines for case in worker.cases_for(engine) if keep(case.name)
    ]


def _max_difference(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> float:
    return max(((a.double() - b.double()).abs().max().item() if a.numel() else 0.0) for a, b in zip(ours, theirs))


def _assert_bitwise(ours: dict, theirs: dict) -> None:
    for a, b in zip(ours["params"], theirs["params"], strict=True):
        assert torch.equal(a, b)
    for index, state in theirs.get("state", {}).items():
        for name, value in state.items():
            assert torch.equal(ours["state"][index][name], value), (index, name)


TRAINING = ("ddp", "fsdp2", "zero")
PRODUCT = {case.name for case in worker.product_cases()}
PARAMETERS = len(worker.make_model().state_dict())


def _agreement_flags(engine: str, case: str) -> list[int]:
    """The flags each step's all-reduce should carry: whether a GradScaler found an
    overflow, whether a gradient is non-finite, and per DTensor parameter whether its
    gradient is nonzero and whether it moved. None where no check needs the other ranks."""
    spec = next(c for c in worker.cases_for(engine) if c.name == case)
    sharded = PARAMETERS if engine == "fsdp2" and spec.kwargs.get("warn_zero_grad_update", True) else 0
    needed = spec.scaled or spec.kwargs.get("skip_nonfinite") or sharded
    return [2 + 2 * sharded] * worker.STEPS if needed else []


@pytest.mark.parametrize("engine,case", _cases(TRAINING))
def test_every_rank_ends_with_the_same_model_and_state(ranks, engine, case):
    first, *others = (results[case]["engine"] for results in ranks)
    for other in others:
        _assert_bitwise(other, first)
        assert other["skipped"] == first["skipped"] and other["warnings"] == first["warnings"]


@pytest.mark.parametrize("engine,case", _cases(TRAINING, lambda name: name in PRODUCT or name.startswith("checks-off")))
def test_at_most_one_small_collective_per_step_and_none_with_the_checks_off(ranks, engine, case):
    """DDP and ZeRO hold whole tensors: the zero-gradient check needs no one; FSDP2's
    DTensors do, in one all-reduce of 14 flags per step."""
    for results in ranks:
        assert results[case]["engine"]["agreements"] == _agreement_flags(engine, case)


@pytest.mark.parametrize("engine,case", _cases(TRAINING, lambda name: name in PRODUCT and name.endswith("fp32")))
def test_fp32_state_matches_one_process_on_the_whole_batch(ranks, engine, case):
    ours, reference = ranks[0][case]["engine"], ranks[0][case]["reference"]
    assert _max_difference(ours["params"], reference["params"]) <= FP32_PARAM_TOLERANCE
    for index, state in ours.get("state", {}).items():
        for name, value in state.items():
            expected = reference["state"][index][name]
            scale = max(expected.abs().max().item(), 1e-30) if expected.numel() else 1.0
            assert _max_difference([value], [expected]) <= FP32_STATE_TOLERANCE * scale, (index, name)


@pytest.mark.parametrize("engine,case", _cases(TRAINING, lambda name: name.startswith("clip-")))
def test_clipping_takes_the_norm_of_the_whole_gradient(ranks, engine, case):
    """As in one process on the whole batch: under FSDP2 the norm of every rank's shard
    together, under ZeRO of every rank's partition (a rank's own part would clip by
    another coefficient on each rank); DDP's replicas need no collective for it."""
    ours, reference = ranks[0][case]["engine"], ranks[0][case]["reference"]
    assert ours["grad_norm"] > 0.01  # so the last step clipped
    assert ours["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-6)
    assert _max_difference(ours["params"], reference["params"]) <= FP32_PARAM_TOLERANCE


@pytest.mark.parametrize("engine,case", _cases(TRAINING, lambda name: name in PRODUCT and not name.endswith("fp32")))
def test_low_precision_state_is_as_accurate_as_in_one_process(ranks, engine, case):
    """bf16 rounding noise is drawn per shard (FSDP2) or per optimizer (ZeRO's own), and
    int8 blocks are cut per shard, so the bits differ from one process; the error does
    not grow: no farther from the fp32-state run than twice the one-process run is."""
    fp32 = ranks[0][case.rsplit("-", 1)[0] + "-fp32"]["reference"]["params"]
    ours, reference = ranks[0][case]["engine"]["params"], ranks[0][case]["reference"]["params"]
    assert _max_difference(ours, fp32) <= 2 * _max_difference(reference, fp32)


@pytest.mark.parametrize("engine,case", _cases(TRAINING, lambda name: name.endswith("eager-fp32")
                                                and worker.OPTIMIZERS[name.rsplit("-", 2)[0]][1] is not None))
def test_foreach_false_equals_torchs_for_loop_under_the_same_engine_bitwise(ranks, engine, case):
    for results in ranks:
        _assert_bitwise(results[case]["engine"], results[case]["torch_engine"])


@pytest.mark.parametrize("engine,case", _cases(["fsdp2"], lambda name: name in PRODUCT))
def test_fsdp2_state_is_sharded_like_its_parameter(ranks, engine, case):
    """Each state tensor is a DTensor placed like its parameter, its local shard shaped like
    the parameter's, in the format's dtype (fp32 for tensors under MIN_ELEMENTS elements)."""
    low_precision = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}[case.rsplit("-", 1)[1]]
    for results in ranks:
        layouts = results[case]["engine"]["layout"]
        assert len(layouts) == PARAMETERS
        for layout, (name, param) in zip(layouts, worker.make_model().named_parameters()):
            (param_shape, placements), state = layout["param"], {k: v for k, v in layout.items() if k != "param"}
            assert placements == "(Shard(dim=0),)"
            expected = low_precision if param.numel() >= MIN_ELEMENTS else torch.float32
            assert state and all(v == (param_shape, expected, placements) for v in state.values()), (name, state)


@pytest.mark.parametrize("engine,case", _cases(["fsdp2"], lambda name: name in PRODUCT and "eager" in name))
def test_fsdp2_eager_kernel_steps_with_the_zero_grad_warning_on(ranks, engine, case):
    """The eager kernel read DTensor gradients' values and failed (``.tolist()`` is not
    supported for DTensors); it steps every parameter, the empty shard included."""
    for results in ranks:
        assert results[case]["engine"]["kernels"] == {"eager": PARAMETERS}


@pytest.mark.parametrize("engine,case", [
    pytest.param(engine, case.name, id=f"{engine}-{case.name}")
    for engine in TRAINING for case in worker.regression_cases(engine) if case.name.startswith("skip-")
])
def test_a_nonfinite_gradient_on_one_rank_skips_the_step_on_every_rank(ranks, engine, case):
    """DDP: an Inf on one replica after the all-reduce; FSDP2: a NaN in one rank's shard;
    ZeRO: a NaN in the part one rank's optimizer steps. Each rank used to decide alone."""
    reference = ranks[0][case]["reference"]
    assert reference["skipped"] == 1
    for results in ranks:
        ours = results[case]["engine"]
        assert ours["skipped"] == 1
        assert [bool(raised) for raised in ours["warnings"]] == [step == 5 for step in range(worker.STEPS)]
        assert ours["agreements"] == _agreement_flags(engine, case)
        assert _max_difference(ours["params"], reference["params"]) <= FP32_PARAM_TOLERANCE


@pytest.mark.parametrize("engine,case", _cases(["ddp"], lambda name: name.startswith("gradscaler-")))
def test_a_gradscaler_overflow_on_one_rank_skips_the_step_on_every_rank(ranks, engine, case):
    """The GradScaler of the rank holding the Inf says skip, the other's does not: every
    rank skips (the step used to be taken on one rank only)."""
    reference = ranks[0][case]["reference"]
    for results in ranks:
        ours = results[case]["engine"]
        assert ours["agreements"] == _agreement_flags(engine, case)
        assert _max_difference(ours["params"], reference["params"]) <= FP32_PARAM_TOLERANCE
    taken = worker.reference(worker.Case("no-inf", adamkit.Adam, dict(lr=0.01), scaled=True))
    assert not torch.equal(reference["params"][2], taken["params"][2])  # the skipped step would have moved it


@pytest.mark.parametrize("engine,case", _cases(["fsdp2"], lambda name: name.startswith("zero-")))
def test_fsdp2_zero_gradient_warning_looks_at_the_whole_gradient(ranks, engine, case):
    """A shard of zeros is not a zero gradient: no warning. A whole gradient of zeros
    that weight decay moves (on rank 0; rank 1's shard is empty) warns on every rank,
    once, from the next step's agreement."""
    warns = case.startswith("zero-gradient-warns")
    for results in ranks:
        raised = results[case]["engine"]["warnings"]
        assert [len(step) for step in raised] == [int(warns and step == 1) for step in range(worker.STEPS)], raised
        assert all("parameter of shape (1, 81) has an all-zero gradient" in message for step in raised for message in step)


@pytest.mark.parametrize("engine,case", _cases(["fsdp2"], lambda name: name.startswith("freeze-")))
def test_fsdp2_frozen_layer_stays_bitwise_unchanged(ranks, engine, case):
    initial = list(worker.make_model().parameters())
    for results in ranks:
        params = results[case]["engine"]["params"]
        assert torch.equal(params[2], initial[2]) and torch.equal(params[3], initial[3])
        assert not torch.equal(params[0], initial[0])
        assert _max_difference(params, results[case]["reference"]["params"]) <= FP32_PARAM_TOLERANCE


@pytest.mark.parametrize("engine,case", _cases(["dcp"]))
def test_dcp_resume_equals_the_uninterrupted_run_bitwise(ranks, engine, case):
    for results in ranks:
        _assert_bitwise(results[case]["resumed"], results[case]["uninterrupted"])
        assert results[case]["resumed"]["warnings"] == results[case]["uninterrupted"]["warnings"]


@pytest.mark.parametrize("engine,case", _cases(["dcp"], lambda name: name.startswith("adam-fused")))
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP says it reads in one process
def test_a_two_rank_dcp_checkpoint_loads_in_one_process(spawns, engine, case, tmp_path):
    """Read whole by ``dcp_to_torch_save``, and by ``dcp.load`` into a plain model and
    optimizer, which then go on as the 2 ranks did: within 2e-7 with fp32 state; with
    low-precision state, within the format's own error (twice its distance from fp32
    state in one process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    spawned = spawns(engine)
    checkpoint = spawned.out / "checkpoints" / case
    at_save, uninterrupted = spawned.ranks[0][case]["at_save"], spawned.ranks[0][case]["uninterrupted"]

    dcp_to_torch_save(checkpoint, tmp_path / "whole.pt")
    whole = torch.load(tmp_path / "whole.pt", weights_only=False)
    for saved, expected in zip(whole["model"].values(), at_save["params"], strict=True):
        assert torch.equal(saved, expected)

    spec = next(c for c in worker.cases_for(engine) if c.name == case)
    model = worker.make_model(seed=1)
    optimizer = worker.build_optimizer(spec, model.parameters())
    model_state, optimizer_state = get_state_dict(model, optimizer)
    loaded = {"model": model_state, "optim": optimizer_state}
    dcp.load(loaded, checkpoint_id=checkpoint)
    set_state_dict(model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    for param, expected in zip(model.parameters(), at_save["params"], strict=True):
        assert torch.equal(param.detach(), expected)
    state = optimizer.state_dict()["state"]
    if not case.endswith("int8"):  # one process cuts int8 blocks over whole tensors: it codes the values anew
        for index, expected in at_save["state"].items():
            for name, value in expected.items():
                assert torch.equal(state[index][name], value), (index, name)
    worker.train(model, optimizer, spec, range(worker.SAVE_AT, worker.STEPS))
    go_on = [p.detach() for p in model.parameters()]
    if case.endswith("fp32"):
        assert _max_difference(go_on, uninterrupted["params"]) <= FP32_PARAM_TOLERANCE
    else:
        format_error = _max_difference(
            spawned.ranks[0][case]["reference"]["params"], spawned.ranks[0]["adam-fused-fp32"]["reference"]["params"]
        )
        assert _max_difference(go_on, uninterrupted["params"]) <= 2 * format_error


EXAMPLE = Path(__file__).parents[1] / "docs" / "distributed_example.py"


def _run_example(*args: str) -> list[str]:
    """docs/distributed_example.py under torchrun on 2 ranks; the loss lines it printed."""
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), str(EXAMPLE), *args],
        capture_output=True, text=True, timeout=SPAWN_TIMEOUT, check=False,
        env={**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [line for line in completed.stdout.splitlines() if line.startswith("step ")]


@pytest.mark.slow
@pytest.mark.parametrize("engine,state_dtype", [("ddp", "bf16"), ("fsdp2", "int8"), ("zero", "fp32")])
def test_the_documented_example_trains_and_resumes(engine, state_dtype, tmp_path):
    common = ("--engine", engine, "--state-dtype", state_dtype, "--steps", "10")
    if engine == "zero":
        assert [line.split()[1] for line in _run_example(*common)] == ["10"]
        return
    assert [line.split()[1] for line in _run_example(*common, "--save", str(tmp_path / "10"))] == ["10"]
    resumed = _run_example(*common, "--resume", str(tmp_path / "10"))
    uninterrupted = _run_example(*common[:-1], "20")
    assert resumed == uninterrupted[1:]  # step 20: the same loss, to the digits printed
