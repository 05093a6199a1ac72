"""The everyday tools: adamkit.trace, the 2-D problems, and adamkit explain / compare / trajectories."""

import csv
import json
import os

import numpy as np
import pytest
import torch

import adamkit
from adamkit.cli import build_parser, main
from adamkit.cli.options import ADAMKIT_OPTIMIZERS, progress_bar
from adamkit.optimizers.registry import build_optimizer
from adamkit.problems import PROBLEMS, optimize
from adamkit.tasks import TASKS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORKED_EXAMPLE_STEP_1 = {
    "grad": [1.0, -1.2],
    "exp_avg": [0.1, -0.12],
    "exp_avg_sq": [0.001, 0.00144],
    "m_hat": [1.0, -1.2],
    "v_hat": [1.0, 1.44],
    "update": [-0.1, 0.1],
    "param": [0.4, -0.2],
}


def worked_example(steps: int = 1):
    """Adam(lr=0.1) on theta1^2 + 2 theta2^2 from (0.5, -0.3), traced; returns (trace, theta, optimizer)."""
    theta = torch.nn.Parameter(torch.tensor([0.5, -0.3]))
    optimizer = adamkit.Adam([theta], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    with adamkit.trace(optimizer, {"theta": theta}) as recorded:
        for _ in range(steps):
            optimizer.zero_grad()
            (theta[0] ** 2 + 2 * theta[1] ** 2).backward()
            optimizer.step()
    return recorded, theta, optimizer


def run_cli(capsys, *args: str) -> str:
    main([*args, "--quiet"])
    return capsys.readouterr().out


def usage_error(capsys, *args: str) -> str:
    """Run a command that must fail as a usage error; return its one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert len(captured.err.splitlines()) == 1
    return captured.err


# --- adamkit.trace ---------------------------------------------------------------


def test_trace_step_one_of_the_worked_example_matches_hand_computed_values():
    recorded, _, _ = worked_example()
    (record,) = recorded.records
    assert (record.step, record.name, record.index) == (1, "theta", 0)
    for field, expected in WORKED_EXAMPLE_STEP_1.items():
        torch.testing.assert_close(getattr(record, field), torch.tensor(expected), atol=1e-6, rtol=0)


def test_trace_records_hold_copies_not_the_live_tensors():
    recorded, theta, optimizer = worked_example(steps=2)
    first, second = recorded.records
    state = optimizer.state[theta]
    live = [theta, theta.grad, state["exp_avg"], state["exp_avg_sq"]]
    for record in (first, second):
        for field in WORKED_EXAMPLE_STEP_1:
            tensor = getattr(record, field)
            assert all(tensor.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for t in live)
    # Step 1's record still shows step 1 after step 2 changed everything in place.
    torch.testing.assert_close(first.exp_avg, torch.tensor([0.1, -0.12]), atol=1e-6, rtol=0)
    torch.testing.assert_close(second.param, theta.detach())
    torch.testing.assert_close(second.update, second.param - first.param)


def test_trace_stops_recording_when_the_with_block_ends():
    recorded, theta, optimizer = worked_example()
    theta.grad = torch.ones(2)
    optimizer.step()
    assert len(recorded.records) == 1


@pytest.mark.parametrize("name", ADAMKIT_OPTIMIZERS)
def test_trace_reads_each_algorithms_own_state(name):
    theta = torch.nn.Parameter(torch.tensor([0.5, -0.3]))
    optimizer = build_optimizer(name, [theta], lr=0.1)
    with adamkit.trace(optimizer) as recorded:
        for _ in range(2):
            before = theta.detach().clone()
            theta.grad = torch.tensor([1.0, -2.0])
            optimizer.step()
    last = recorded.records[-1]
    assert [record.step for record in recorded.records] == [1, 2]
    assert last.name == "param0"
    torch.testing.assert_close(last.update, theta.detach() - before)
    state = optimizer.state.get(theta, {})
    second_moment = next((state[k] for k in ("exp_avg_sq", "square_avg", "sum", "exp_inf") if k in state), None)
    if second_moment is None:
        assert last.exp_avg_sq is None
    else:
        torch.testing.assert_close(last.exp_avg_sq, second_moment)
    if "betas" in optimizer.defaults and "exp_avg" in state and second_moment is not None:
        beta1, beta2 = (optimizer.defaults["betas"][i] for i in (0, 1 if name != "adan" else 2))  # Adan's second is its difference's
        torch.testing.assert_close(last.m_hat, state["exp_avg"] / (1 - beta1**2))
        if "exp_avg_sq" in state:
            torch.testing.assert_close(last.v_hat, state["exp_avg_sq"] / (1 - beta2**2))
        else:  # Adamax's infinity norm is not bias-corrected
            assert last.v_hat is None
    else:  # no bias-corrected pair (Lion keeps one moment)
        assert last.m_hat is None and last.v_hat is None


def test_trace_names_parameters_and_skips_those_without_gradients():
    model = torch.nn.Linear(2, 1)
    optimizer = adamkit.Adam(model.parameters(), lr=0.1)
    with adamkit.trace(optimizer, model.named_parameters()) as named, adamkit.trace(optimizer) as unnamed:
        model.weight.grad = torch.ones(1, 2)
        optimizer.step()
    assert [(r.name, r.index) for r in named.records] == [("weight", 0)]
    assert [(r.name, r.index) for r in unnamed.records] == [("param0", 0)]
    with pytest.raises(ValueError, match="param_groups"):
        adamkit.trace(optimizer, [torch.nn.Parameter(torch.zeros(1))])


def test_trace_table_is_plain_data_and_text():
    recorded, _, _ = worked_example(steps=2)
    rows = json.loads(json.dumps(recorded.table()))
    assert [row["step"] for row in rows] == [1, 2]
    np.testing.assert_allclose(rows[0]["v_hat"], [1.0, 1.44], atol=1e-6)
    lines = recorded.format_table().splitlines()
    assert lines[0].split() == ["step", "name", *WORKED_EXAMPLE_STEP_1]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["1", "theta[0]"], ["1", "theta[1]"], ["2", "theta[0]"], ["2", "theta[1]"]
    ]


# --- adamkit explain -------------------------------------------------------------


def step_one_rows(output: str) -> dict[str, list[float]]:
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == ["1"]]
    return {row[1]: [float(value) for value in row[2:]] for row in rows}


def test_explain_prints_the_worked_example(capsys):
    output = run_cli(capsys, "explain")
    rows = step_one_rows(output)
    for element, name in enumerate(("theta[0]", "theta[1]")):
        expected = [values[element] for values in WORKED_EXAMPLE_STEP_1.values()]
        np.testing.assert_allclose(rows[name], expected, atol=1e-6)
    assert "lr=0.1, betas=(0.9, 0.999), eps=1e-08" in output
    assert {line.split()[0] for line in output.splitlines() if "theta[" in line} == {"1", "2", "3"}


def test_explain_json_parses_and_holds_the_same_records(capsys):
    result = json.loads(run_cli(capsys, "explain", "--json", "--steps", "2"))
    assert result["optimizer"] == "adam" and result["problem"] == "quadratic"
    assert [record["step"] for record in result["records"]] == [1, 2]
    for field, expected in WORKED_EXAMPLE_STEP_1.items():
        np.testing.assert_allclose(result["records"][0][field], expected, atol=1e-6)
    np.testing.assert_allclose(result["losses"][:2], [0.43, 0.24], atol=1e-6)


@pytest.mark.parametrize("name", ADAMKIT_OPTIMIZERS)
def test_explain_runs_every_optimizer(capsys, name):
    output = run_cli(capsys, "explain", "--optimizer", name, "--problem", "rosenbrock", "--steps", "1")
    assert set(step_one_rows(output)) == {"theta[0]", "theta[1]"}


# --- the 2-D problems and adamkit trajectories ----------------------------------------


@pytest.mark.parametrize("problem", PROBLEMS.values(), ids=list(PROBLEMS))
def test_every_path_starts_at_the_start_point_and_stays_on_the_plot(problem):
    (x_low, x_high), (y_low, y_high) = problem.x_range, problem.y_range
    assert set(problem.learning_rates) == set(ADAMKIT_OPTIMIZERS)
    for name in ADAMKIT_OPTIMIZERS:
        path = optimize(problem, name, steps=40).path
        np.testing.assert_array_equal(path[0], np.array(problem.start, dtype=np.float32))
        assert ((x_low <= path[:, 0]) & (path[:, 0] <= x_high)).all(), name
        assert ((y_low <= path[:, 1]) & (path[:, 1] <= y_high)).all(), name


@pytest.mark.slow
def test_default_trajectories_stay_on_their_plots():
    # What `adamkit trajectories` draws by default, so the gallery's paths stay in frame.
    steps = build_parser().parse_args(["trajectories"]).steps
    for problem in PROBLEMS.values():
        (x_low, x_high), (y_low, y_high) = problem.x_range, problem.y_range
        for name in ADAMKIT_OPTIMIZERS:
            path = optimize(problem, name, steps).path
            assert ((x_low <= path[:, 0]) & (path[:, 0] <= x_high)).all(), (problem.name, name)
            assert ((y_low <= path[:, 1]) & (path[:, 1] <= y_high)).all(), (problem.name, name)


@pytest.mark.parametrize(
    "problem, optimizer",
    [("quadratic", "adam"), ("quadratic", "adagrad"), ("ill-conditioned", "sgd"), ("saddle", "rmsprop")],
)
def test_converging_optimizers_end_near_a_minimum(problem, optimizer):
    end = optimize(PROBLEMS[problem], optimizer, steps=300).path[-1]
    assert min(np.hypot(*(end - np.array(minimum))) for minimum in PROBLEMS[problem].minima) < 1e-3


def test_trajectories_writes_one_png_per_problem(capsys, tmp_path):
    output = run_cli(
        capsys, "trajectories", "--problems", "beale,saddle", "--optimizers", "adam,sgd",
        "--lr", "sgd=0.01", "--steps", "5", "--out", str(tmp_path),
    )
    for name in ("beale", "saddle"):
        picture = tmp_path / f"trajectories-{name}.png"
        assert picture.read_bytes()[:8] == PNG_SIGNATURE
        assert str(picture) in output


# --- adamkit compare ---------------------------------------------------------------


def test_compare_writes_a_png_and_a_csv_ending_at_the_printed_final_losses(capsys, tmp_path):
    output = run_cli(capsys, "compare", "--optimizers", "adam,sgd", "--lr", "adam=0.02", "--epochs", "1",
                     "--out", str(tmp_path))
    picture = tmp_path / "loss_curves.png"
    assert picture.stat().st_size > 0 and picture.read_bytes()[:8] == PNG_SIGNATURE

    table = [line.split() for line in output.splitlines()[1:3]]
    assert [(name, lr) for name, lr, *_ in table] == [("adam", "0.02"), ("sgd", "0.05")]
    with (tmp_path / "loss_curves.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["optimizer", "lr", "state_dtype", "examples", "epoch", "loss"]
    for name, lr, _, final_loss, _ in table:
        curve = [row for row in rows if row["optimizer"] == name]
        assert curve[-1]["lr"] == lr and curve[-1]["examples"] == "1500"
        assert float(curve[-1]["loss"]) == float(final_loss)
        assert [int(row["examples"]) for row in curve] == [*range(200, 1500, 200), 1500]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_has_a_learning_rate_for_every_optimizer(task):
    assert set(TASKS[task].learning_rates) == set(ADAMKIT_OPTIMIZERS)


def test_compare_state_dtypes_draws_one_curve_per_format(capsys, tmp_path):
    output = run_cli(capsys, "compare", "--task", "digits", "--optimizers", "adam", "--state-dtype", "fp32,int8",
                     "--epochs", "1", "--out", str(tmp_path))
    table = [line.split() for line in output.splitlines()[1:3]]
    assert [(name, state) for name, _, state, *_ in table] == [("adam", "fp32"), ("adam", "int8")]
    with (tmp_path / "loss_curves.csv").open() as file:
        rows = list(csv.DictReader(file))
    finals = {row["state_dtype"]: float(row["loss"]) for row in rows}  # the last row of each run wins
    assert finals == {state: float(final) for _, _, state, final, _ in table}
    assert finals["fp32"] != finals["int8"]  # every tensor's state really was stored in int8
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == PNG_SIGNATURE


# --- usage errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, unknown, valid",
    [
        (["explain", "--optimizer", "adamm"], "adamm", ADAMKIT_OPTIMIZERS),
        (["explain", "--optimizer", "torch-adam"], "torch-adam", ADAMKIT_OPTIMIZERS),
        (["explain", "--problem", "rosenbrok"], "rosenbrok", PROBLEMS),
        (["compare", "--optimizers", "adam,lamb"], "lamb", ADAMKIT_OPTIMIZERS),
        (["compare", "--lr", "lamb=0.1"], "lamb", ADAMKIT_OPTIMIZERS),
        (["compare", "--state-dtype", "fp8"], "fp8", ("fp32", "bf16", "int8")),
        (["bench", "--state-dtype", "fp8"], "fp8", ("fp32", "bf16", "int8")),
        (["trajectories", "--optimizers", "sgdd"], "sgdd", ADAMKIT_OPTIMIZERS),
        (["trajectories", "--problems", "himmelblau"], "himmelblau", PROBLEMS),
    ],
)
def test_unknown_names_are_refused_with_the_valid_ones(capsys, args, unknown, valid):
    message = usage_error(capsys, *args)
    assert repr(unknown) in message
    assert all(name in message for name in valid)


def unwritable_outs(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return {"existing file": a_file, "folder under a file": a_file / "sub"}


@pytest.mark.parametrize("command", ["compare", "trajectories"])
@pytest.mark.parametrize("case", ["existing file", "folder under a file"])
def test_unwritable_out_is_a_usage_error_naming_the_path(capsys, tmp_path, command, case):
    out = unwritable_outs(tmp_path)[case]
    message = usage_error(capsys, command, "--out", str(out))
    assert f"cannot write to --out {out}: " in message
    assert "not a directory" in message.lower()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_a_usage_error(capsys, tmp_path):
    tmp_path.chmod(0o555)
    try:
        message = usage_error(capsys, "trajectories", "--out", str(tmp_path))
    finally:
        tmp_path.chmod(0o755)
    assert f"cannot write to --out {tmp_path}: Permission denied" in message


def test_every_command_takes_quiet():
    parser = build_parser()
    for command in ("train", "explain", "compare", "trajectories"):
        assert parser.parse_args([command, "--quiet"]).quiet
    assert progress_bar(10, quiet=True, unit="step").disable


# --- adamkit bench ---------------------------------------------------------------


def test_bench_json_has_every_implementation_and_shape_with_consistent_figures(capsys):
    main(["bench", "--sizes", "3x1000", "2x5000", "--repeats", "2", "--warmup", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["stream_gb_per_s"] > 0 and "torch" in report["machine"]
    results = report["results"]
    assert {(r["shape"], r["implementation"]) for r in results} == {
        (shape, name) for shape in ("3 x 1000", "2 x 5000") for name in ("adamkit", "torch for-loop", "torch foreach", "torch fused")
    }
    for r in results:
        params = 3000 if r["shape"] == "3 x 1000" else 10000
        assert r["ms"] > 0 and r["dtype"] == "float32"
        assert r["gb_per_s"] == pytest.approx(7 * 4 * params / r["ms"] / 1e6)
        assert (r["checks_ms"] is not None) == (r["implementation"] == "adamkit")
        if r["checks_ms"] is not None:
            assert 0 < r["checks_ms"] < r["ms"] * 10  # measured apart from the steps: noisy, but of their order


@pytest.mark.parametrize("optimizer", ["nadam", "adamw"])
def test_bench_times_another_algorithm_against_torchs_own(capsys, monkeypatch, optimizer):
    from adamkit import benchmark

    built = []
    for name, make in list(benchmark.IMPLEMENTATIONS.items()):
        monkeypatch.setitem(benchmark.IMPLEMENTATIONS, name,
                            lambda *args, make=make: built.append(type(made := make(*args))) or made)
    main(["bench", "--optimizer", optimizer, "--sizes", "2x100", "--repeats", "1", "--warmup", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    names = {r["implementation"] for r in report["results"]}
    fused = {"torch fused"} if optimizer == "adamw" else set()  # torch has no fused NAdam: left out
    assert report["optimizer"] == optimizer and names == {"adamkit", "torch for-loop", "torch foreach"} | fused
    ours, theirs = benchmark.ALGORITHMS[optimizer]
    assert set(built) == {ours, theirs}


def test_bench_refuses_an_implementation_the_algorithm_lacks(capsys):
    message = usage_error(capsys, "bench", "--optimizer", "radam", "--implementations", "adamkit", "torch fused")
    assert "'torch fused' has no radam" in message


def test_bench_table_shows_speedups_against_adamkit(capsys):
    main(["bench", "--sizes", "2x100", "--repeats", "1", "--warmup", "1", "--implementations", "adamkit", "torch fused"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ") and "stream bandwidth" in lines[1]
    fused = next(line for line in lines if "torch fused" in line)
    assert fused.rstrip().endswith("x")


def test_bench_state_dtype_adds_one_row_per_format(capsys):
    main(["bench", "--sizes", "2x5000", "--repeats", "1", "--warmup", "1", "--implementations", "torch fused",
          "--state-dtype", "bf16,int8", "--json"])
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [row["implementation"] for row in rows] == ["torch fused", "adamkit bf16 state", "adamkit int8 state"]
    bytes_moved = {row["implementation"]: row["gb_per_s"] * row["ms"] for row in rows}
    assert bytes_moved["adamkit int8 state"] < bytes_moved["adamkit bf16 state"] < bytes_moved["torch fused"]


def test_bench_times_every_implementation_on_the_same_parameters():
    from adamkit import benchmark

    shape = benchmark.parse_shape("2x300")
    first, second = benchmark.make_params(shape, torch.float32), benchmark.make_params(shape, torch.float32)
    assert all(torch.equal(a, b) and torch.equal(a.grad, b.grad) and a is not b for a, b in zip(first, second))
    times = benchmark.time_steps(["adamkit", "torch for-loop"], shape, torch.float32, repeats=3, warmup=1)
    assert set(times) == {"adamkit", "adamkit checks", "torch for-loop"} and all(ms > 0 for ms in times.values())


def test_bench_refuses_a_bad_shape_naming_it(capsys):
    message = usage_error(capsys, "bench", "--sizes", "4by10")
    assert "'4by10'" in message and "TENSORSxELEMENTS" in message


@pytest.mark.parametrize("name, package", [("torchao AdamW8bit", "torchao"), ("bnb Adam8bit", "bitsandbytes")])
def test_bench_names_the_package_a_peer_optimizer_needs(capsys, monkeypatch, name, package):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == package else find_spec(module, *a))
    message = usage_error(capsys, "bench", "--implementations", "adamkit", name)
    assert f"needs {package}, not installed here; pip install {package}" in message and name in message


def test_bench_refuses_a_device_it_does_not_have(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    message = usage_error(capsys, "bench", "--device", "cuda")
    assert "'cuda' is not available here" in message
