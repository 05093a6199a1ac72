"""The airfoil loader, the d2l training loop and the `adamkit train` command."""

import os
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

import adamkit.cli
import adamkit.cli.train
import adamkit.datasets.airfoil
import adamkit.training
from adamkit.cli import main
from adamkit.datasets import load_airfoil
from adamkit.training import train


def run_cli(capsys, *args: str) -> list[str]:
    main(["train", "--quiet", *args])
    return capsys.readouterr().out.splitlines()


def loss_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "loss" in line]


def _adamkit_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "adamkit", *args]


def _environment() -> dict[str, str]:
    """Run the same adamkit that this test imported, installed or not."""
    source_root = Path(adamkit.training.__file__).resolve().parents[1]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(source_root), os.environ.get("PYTHONPATH", "")]))


def test_airfoil_has_d2l_shape_and_is_standardized():
    features, target = load_airfoil()
    assert features.shape == (1500, 5) and target.shape == (1500, 1)
    assert features.dtype == target.dtype == torch.float32
    # Standardized over all 1503 rows, so exactly on the full file and nearly on 1500.
    full = torch.cat(load_airfoil(n_rows=1503, dtype=torch.float64), dim=1)
    torch.testing.assert_close(full.mean(0), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(full.std(0, correction=0), torch.ones(6, dtype=torch.float64))
    first_rows = torch.cat((features, target), dim=1)
    assert first_rows.mean(0).abs().max() < 0.01
    assert (first_rows.std(0) - 1).abs().max() < 0.01


def test_airfoil_rejects_more_rows_than_the_file_has():
    with pytest.raises(ValueError, match="1503"):
        load_airfoil(n_rows=1504)


def test_airfoil_attribution_ships_with_the_data():
    attribution = resources.files("adamkit.datasets").joinpath("README.md").read_text()
    for credit in ("Brooks", "Pope", "Marcolini", "NASA", "UCI", "CC BY 4.0"):
        assert credit in attribution


def test_training_records_loss_every_200_examples_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next_draw = torch.rand(1)
    torch.manual_seed(123)
    recorded = []
    result = train(
        lambda params: torch.optim.SGD(params, lr=0.01),
        epochs=1,
        on_loss=lambda examples, epoch, loss: recorded.append(examples),
    )
    assert recorded == list(range(200, 1500, 200))
    assert [epoch for epoch, _ in result.curve] == [n / 1500 for n in recorded]
    assert torch.rand(1) == expected_next_draw


def test_train_with_defaults_reaches_d2l_loss(capsys):
    lines = run_cli(capsys)
    assert lines[0].startswith("epoch 0.13  examples 200  loss ")
    assert len(loss_lines(lines)) == 3000 // 200 + 1
    assert lines[-1].startswith("final loss: ")
    assert float(lines[-1].removeprefix("final loss: ")) < 0.26


@pytest.mark.parametrize("name", ["adam", "yogi"])
def test_adam_and_yogi_reach_d2l_loss_in_two_epochs_at_lr_001(capsys, name):
    lines = run_cli(capsys, "--optimizer", name, "--lr", "0.01", "--epochs", "2")
    assert float(lines[-1].removeprefix("final loss: ")) < 0.26


@pytest.mark.parametrize("name", ["adamw", "amsgrad", "sgd", "rmsprop", "adagrad"])
def test_every_family_member_trains_from_the_command_line(capsys, name):
    lines = run_cli(capsys, "--optimizer", name, "--epochs", "1")
    first, last = float(loss_lines(lines)[0].split()[-1]), float(lines[-1].removeprefix("final loss: "))
    assert last < first


def test_same_seed_prints_identical_lines_and_other_seed_does_not(capsys):
    first = run_cli(capsys, "--epochs", "1", "--seed", "3")
    assert run_cli(capsys, "--epochs", "1", "--seed", "3") == first
    assert run_cli(capsys, "--epochs", "1", "--seed", "4") != first


def test_adam_matches_torch_adam_line_for_line(capsys):
    """The same examples, in the same order, the same losses up to the last printed
    digits: the default kernel's sqrt is correctly rounded, torch's is not."""
    adam = loss_lines(run_cli(capsys, "--optimizer", "adam", "--seed", "1"))
    torch_adam = loss_lines(run_cli(capsys, "--optimizer", "torch-adam", "--seed", "1"))
    assert [line.rsplit(" ", 1)[0] for line in adam] == [line.rsplit(" ", 1)[0] for line in torch_adam]
    ours, theirs = [float(line.rsplit(" ", 1)[1]) for line in adam], [float(line.rsplit(" ", 1)[1]) for line in torch_adam]
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_max_grad_norm_clips_inside_the_step(capsys):
    """A bound far under the airfoil gradients' norm slows SGD (not Adam, whose steps do
    not depend on the gradients' scale); one far above it changes nothing. torch-adam
    takes none of adamkit's options: a usage error says so."""
    free = run_cli(capsys, "--epochs", "1", "--optimizer", "sgd")
    assert run_cli(capsys, "--epochs", "1", "--optimizer", "sgd", "--max-grad-norm", "1e9") == free
    clipped = run_cli(capsys, "--epochs", "1", "--optimizer", "sgd", "--max-grad-norm", "0.001")
    clipped = float(clipped[-1].removeprefix("final loss: "))
    assert clipped > 1.5 * float(free[-1].removeprefix("final loss: "))  # 0.49 against 0.28
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--optimizer", "torch-adam", "--max-grad-norm", "1"])
    assert exit_info.value.code == 2
    assert "torch-adam takes none of adamkit's options" in capsys.readouterr().err


def test_unknown_optimizer_is_a_one_line_usage_error(capsys):
    from adamkit.optimizers.registry import OPTIMIZER_NAMES

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--optimizer", "sgdd"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert "sgdd" in captured.err and "Traceback" not in captured.err
    assert all(name in captured.err for name in OPTIMIZER_NAMES)


def test_python_dash_m_adamkit_trains():
    completed = subprocess.run(
        _adamkit_command("train", "--quiet", "--epochs", "1"),
        capture_output=True, text=True, env=_environment(), timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1].startswith("final loss: ")
    assert "example/s" not in completed.stderr  # --quiet hides the progress bar


@pytest.mark.parametrize("lr", ["-1", "nan", "0"])
def test_invalid_learning_rate_is_a_one_line_usage_error(capsys, lr):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--lr", lr])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"must be a positive number, got {lr}" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


@pytest.mark.parametrize("processes", [[], ["--nproc", "2"]], ids=["one process", "nproc 2"])
def test_ctrl_c_ends_training_with_one_line_and_status_130(processes):
    """With --nproc the signal goes to the command alone (a terminal signals every
    process): the training processes it started must not train on, nor keep it waiting."""
    process = subprocess.Popen(
        _adamkit_command("train", "--quiet", "--epochs", "100000", *processes),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(),
        # As a shell starts a command: a child inherits an ignored SIGINT, and something in
        # the test process (torch's compile workers' setup) may have left it ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert "loss" in process.stdout.readline()  # training is under way
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err.strip() == "adamkit train: interrupted"


def test_nproc_2_trains_data_parallel_and_prints_the_loss_over_all_the_data():
    """Two processes of 750 examples each: a line every 200 examples of each, 400 of both."""
    completed = subprocess.run(
        _adamkit_command("train", "--quiet", "--epochs", "1", "--nproc", "2"),
        capture_output=True, text=True, env=_environment(), timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert [line.split()[3] for line in loss_lines(lines)[:-1]] == ["400", "800", "1200"]
    assert [line.split()[1] for line in loss_lines(lines)[:-1]] == ["0.27", "0.53", "0.80"]
    first, last = float(loss_lines(lines)[0].split()[-1]), float(lines[-1].removeprefix("final loss: "))
    assert last < first and last < 0.26
    assert completed.stderr == "", completed.stderr  # --quiet: no progress bar, no timing, and no process said anything
