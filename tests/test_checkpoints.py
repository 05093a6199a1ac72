"""save_checkpoint / load_checkpoint: atomic, validated, exact resume after SIGKILL."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import adamkit
from adamkit.safety import checkpoints

WORKER = Path(__file__).with_name("resume_worker.py")


def _setup(seed=0, hidden=8):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    optimizer = adamkit.Adam(model.parameters(), lr=0.01)
    return model, optimizer


def _train(model, optimizer, steps=3):
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        optimizer.zero_grad()
        model(torch.randn(5, 4, generator=g)).pow(2).mean().backward()
        optimizer.step()


def _fingerprint(model, optimizer):
    return (
        [p.detach().clone() for p in model.parameters()],
        {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()},
    )


def _assert_same(a, b):
    for x, y in zip(a[0], b[0]):
        assert torch.equal(x, y)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        for n in a[1][k]:
            assert torch.equal(a[1][k][n], b[1][k][n])


@pytest.fixture
def saved(tmp_path):
    model, optimizer = _setup()
    _train(model, optimizer)
    path = tmp_path / "ckpt.pt"
    adamkit.save_checkpoint(path, model, optimizer, extra={"step": 3})
    return path, model, optimizer


def test_round_trip_restores_model_and_optimizer(saved):
    path, model, optimizer = saved
    model2, optimizer2 = _setup(seed=1)
    assert adamkit.load_checkpoint(path, model2, optimizer2) == {"step": 3}
    _assert_same(_fingerprint(model, optimizer), _fingerprint(model2, optimizer2))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left


def _assert_refused(path, model, optimizer, match):
    before = _fingerprint(model, optimizer)
    with pytest.raises(adamkit.CheckpointError, match=match):
        adamkit.load_checkpoint(path, model, optimizer)
    _assert_same(before, _fingerprint(model, optimizer))  # nothing changed


def test_wrong_model_shape_is_named(saved):
    path = saved[0]
    model, optimizer = _setup(hidden=6)
    _train(model, optimizer)
    _assert_refused(path, model, optimizer, r"'0.weight' has shape \(8, 4\) in the checkpoint but \(6, 4\)")


def test_wrong_group_count_and_sizes(saved):
    path = saved[0]
    model, _ = _setup(seed=1)
    two_groups = adamkit.Adam([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    _assert_refused(path, model, two_groups, "2 parameter groups|has 1 parameter groups, the optimizer 2")
    partial = adamkit.Adam(list(model[0].parameters()) + [model[2].weight])
    _assert_refused(path, model, partial, "group 0 has 4 parameters in the checkpoint but 3")


def test_parameter_order_mismatch_is_named(saved):
    path = saved[0]
    model, _ = _setup(seed=1)
    p = list(model.parameters())
    reordered = adamkit.Adam([p[2], p[3], p[0], p[1]])
    _assert_refused(path, model, reordered, r"'0.weight' in the checkpoint but '2.weight'")


def test_state_tensor_shape_checked_against_its_parameter(saved, tmp_path):
    bad = _tamper(saved, tmp_path, lambda p: p["optimizer"]["state"][1].__setitem__("exp_avg", torch.zeros(3)), reseal=True)
    _assert_refused(*bad, r"state 'exp_avg' of 0.bias has shape \(3,\) but the parameter has shape \(8,\)")


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "garbage"])
def test_truncated_or_corrupted_file_gives_clear_error_and_changes_nothing(saved, tmp_path, damage):
    path, model, optimizer = saved
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "corrupt":
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]
    else:
        data = b"not a checkpoint at all"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data)
    _assert_refused(broken, model, optimizer, "cannot read checkpoint .*broken.pt.*nothing was loaded")


def test_not_an_adamkit_checkpoint(saved, tmp_path):
    path, model, optimizer = saved
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    _assert_refused(other, model, optimizer, "not an adamkit checkpoint")


def test_missing_file_raises_file_not_found(tmp_path):
    model, optimizer = _setup()
    with pytest.raises(FileNotFoundError):
        adamkit.load_checkpoint(tmp_path / "nope.pt", model, optimizer)


def test_failed_save_keeps_the_old_checkpoint(saved):
    path, model, optimizer = saved
    old = path.read_bytes()
    with pytest.raises(Exception):
        adamkit.save_checkpoint(path, model, optimizer, extra={"unpicklable": lambda: None})
    assert path.read_bytes() == old
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def _run_worker(*args, **kwargs):
    return subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, check=True, **kwargs)


def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
    total = 10
    uninterrupted = _run_worker(str(tmp_path / "straight.pt"), str(total)).stdout.split()[-1]

    ckpt = tmp_path / "killed.pt"
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), str(ckpt), str(total), "--pause-after-checkpoint", "6"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert worker.stdout.readline().strip() == "checkpoint 6"
        os.kill(worker.pid, signal.SIGKILL)
        assert worker.wait() == -signal.SIGKILL
    finally:
        worker.kill()
        worker.stdout.close()
        worker.stdin.close()

    resumed = _run_worker(str(ckpt), str(total), "--resume").stdout.split()[-1]
    assert resumed == uninterrupted


def test_scientific_extra_round_trips(saved):
    import argparse

    import numpy as np

    path, model, optimizer = saved
    extra = {
        "best": np.float64(0.5), "count": np.int64(3), "flag": np.bool_(True), "curve": np.linspace(0, 1, 5),
        "numpy_rng": np.random.RandomState(0).get_state(), "generator": np.random.default_rng(0).bit_generator.state,
        "args": argparse.Namespace(lr=0.1, name="run"), "torch_rng": torch.get_rng_state(),
    }
    adamkit.save_checkpoint(path, model, optimizer, extra=extra)
    loaded = adamkit.load_checkpoint(path, *_setup(seed=1))
    assert loaded["best"] == 0.5 and type(loaded["best"]) is np.float64
    assert loaded["count"] == 3 and loaded["flag"] and np.array_equal(loaded["curve"], extra["curve"])
    assert all(np.array_equal(a, b) for a, b in zip(loaded["numpy_rng"], extra["numpy_rng"]))
    assert loaded["generator"] == extra["generator"] and loaded["args"] == extra["args"]
    assert torch.equal(loaded["torch_rng"], extra["torch_rng"])


class _Custom:
    pass


def test_extra_that_would_not_load_back_is_refused_at_save(saved):
    path, model, optimizer = saved
    old = path.read_bytes()
    with pytest.raises(adamkit.CheckpointError, match=r"extra\['mine'\] \(_Custom\) could not be read back") as error:
        adamkit.save_checkpoint(path, model, optimizer, extra={"fine": 1, "mine": _Custom()})
    assert "\x1b" not in str(error.value)
    assert path.read_bytes() == old


def test_a_killed_save_leaves_nothing_behind_after_the_next_save(saved):
    path, model, optimizer = saved
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    stale = path.parent / f".{path.name}.{dead_pid}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    alive = path.parent / f".{path.name}.{os.getpid()}.def456.tmp"  # a save in progress elsewhere
    alive.write_bytes(b"being written")
    adamkit.save_checkpoint(path, model, optimizer)
    assert not stale.exists() and alive.exists()


def _tamper(saved, tmp_path, change, reseal=False):
    """``saved``'s checkpoint changed by ``change``; with ``reseal``, as if written that
    way (its checksum made anew)."""
    path, model, optimizer = saved
    payload = torch.load(path, weights_only=True)
    change(payload)
    if reseal:
        payload["checksum"] = checkpoints._checksum(payload["model"], payload["optimizer"])
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    return bad, model, optimizer


TAMPERING = {
    "no optimizer state": (lambda p: p["optimizer"].pop("state"), "lacks 'state' or 'param_groups'"),
    "no param_names": (lambda p: p.pop("param_names"), "'param_names' entry is missing"),
    "state of an unknown parameter": (lambda p: p["optimizer"]["state"].__setitem__(99, {}), "parameter 99, which no group lists"),
    "a future version": (lambda p: p.__setitem__("version", 99), "version 99 is not one this adamkit reads"),
    "a changed tensor value": (lambda p: p["model"]["0.weight"].view(-1)[3].add_(1e-6), "checksum does not match"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_malformed_checkpoints_are_refused_by_name(saved, tmp_path, case):
    change, message = TAMPERING[case]
    _assert_refused(*_tamper(saved, tmp_path, change), message)


def test_flipped_byte_in_tensor_data_is_detected(saved, tmp_path):
    path, model, optimizer = saved
    data = bytearray(path.read_bytes())
    weights = model[0].weight.detach().numpy().tobytes()
    offset = bytes(data).find(weights)
    assert offset > 0
    data[offset + 5] ^= 0x10
    flipped = tmp_path / "flipped.pt"
    flipped.write_bytes(bytes(data))
    _assert_refused(flipped, model, optimizer, "checksum does not match")


def test_load_state_dict_refuses_state_shaped_unlike_its_parameter():
    model, optimizer = _setup()
    _train(model, optimizer)
    state_dict = optimizer.state_dict()
    state_dict["state"][0]["exp_avg"] = torch.tensor(0.0)
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 0 has shape \(\), but the parameter has shape \(8, 4\)"):
        optimizer.load_state_dict(state_dict)
