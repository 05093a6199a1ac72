"""``adamkit compare``: train the same model on the same data with several optimizers.

Every optimizer starts from the same weights and sees the same batches (d2l's
protocol, one seed), so the curves differ only by the algorithm, its learning rate
and, with ``--state-dtype``, the format its state is stored in.
"""

import argparse
import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from adamkit.cli.options import (
    add_optimizer_arguments,
    add_out_argument,
    add_quiet_argument,
    check_names,
    import_plots,
    name_list,
    optimizer_label,
    learning_rates,
    positive_int,
    progress_bar,
    writable_directory,
)
from adamkit.optimizers.registry import build_optimizer
from adamkit.state.formats import STATE_DTYPES
from adamkit.tasks import TASKS, Task
from adamkit.training import Progress, TrainingResult, train

NAMED_STATE_DTYPES = tuple(name for name in STATE_DTYPES if name is not None)
CURVES_CSV = "loss_curves.csv"
CURVES_PNG = "loss_curves.png"


@dataclass(frozen=True)
class OptimizerRun:
    """One optimizer's training run; ``points`` are ``(examples, epoch, loss)``, ending at the final loss.

    ``state_dtype`` is None for the optimizer's default state (the parameters' dtype).
    """

    optimizer: str
    lr: float
    state_dtype: str | None
    points: list[tuple[int, float, float]]
    result: TrainingResult

    @property
    def label(self) -> str:
        label = optimizer_label(self.optimizer, self.lr)
        return label if self.state_dtype is None else f"{label}, {self.state_dtype} state"


def build_with_state_dtype(optimizer: str, params, lr: float, state_dtype: str | None) -> torch.optim.Optimizer:
    """The optimizer, with every tensor's state in ``state_dtype``: small tensors too, so that
    a comparison shows the format's effect on every parameter of a small model."""
    if state_dtype is None:
        return build_optimizer(optimizer, params, lr)
    return build_optimizer(optimizer, params, lr, state_dtype=state_dtype, low_precision_min_elements=0)


def train_with(
    optimizer: str,
    lr: float,
    *,
    task: Task,
    epochs: int,
    batch_size: int,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor],
    state_dtype: str | None = None,
    progress: Progress | None = None,
) -> OptimizerRun:
    """Train with one optimizer; the run's points end with the loss after the last step.

    ``train`` records the loss every ``task.evaluate_every`` examples, which need not
    fall on the last step (1500 examples make an airfoil epoch), so the final loss is
    added when it does not.

    >>> airfoil = TASKS["airfoil"]
    >>> trained = train_with("adam", 0.01, task=airfoil, epochs=1, batch_size=10, seed=0, data=airfoil.load_data())
    >>> trained.points[-1] == (1500, 1.0, trained.result.final_loss)
    True
    """
    points: list[tuple[int, float, float]] = []
    result = train(
        functools.partial(build_with_state_dtype, optimizer, lr=lr, state_dtype=state_dtype),
        task=task,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        data=data,
        on_loss=lambda examples, epoch, loss: points.append((examples, epoch, loss)),
        progress=progress,
    )
    total_examples = epochs * len(data[0])
    if not points or points[-1][0] != total_examples:
        points.append((total_examples, float(epochs), result.final_loss))
    return OptimizerRun(optimizer, lr, state_dtype, points, result)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to the ``adamkit`` parser."""
    parser = subparsers.add_parser(
        "compare",
        help="train a task's model with several optimizers and plot their loss curves",
        description="Train a task's model (default: nn.Linear(5, 1) on the airfoil data, "
        "d2l's protocol) once per optimizer and state format, from the same weights and "
        f"batches; print a summary and write {CURVES_PNG} and {CURVES_CSV} into --out.",
    )
    parser.add_argument(
        "--task", choices=list(TASKS), default="airfoil",
        help="; ".join(f"{task.name}: {task.description}" for task in TASKS.values()) + " (default: %(default)s)",
    )
    add_optimizer_arguments(
        parser, "the task's; airfoil: " + ", ".join(f"{name}={lr:g}" for name, lr in TASKS["airfoil"].learning_rates.items())
    )
    parser.add_argument(
        "--state-dtype", type=name_list, default=[None], metavar="A,B,...",
        help=f"run each optimizer once per state format, any of {','.join(NAMED_STATE_DTYPES)}; every tensor's "
        "state is stored so, small ones too (default: the optimizer's default state)",
    )
    parser.add_argument("--epochs", type=positive_int, default=None, help="passes over the data (default: the task's)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="examples per step (default: the task's)")
    parser.add_argument("--seed", type=int, default=0, help="seeds initial weights and shuffling (default: %(default)s)")
    add_out_argument(parser)
    add_quiet_argument(parser)
    parser.set_defaults(run=run)


def format_loss(loss: float) -> str:
    """A loss as the table and the CSV both print it.

    Nine significant digits tell any two float32 values apart, so the CSV's last loss
    of a run and the table's final loss are the same number.

    >>> format_loss(0.24629159271717072)
    '0.246291593'
    """
    return f"{loss:.9g}"


def write_csv(runs: list[OptimizerRun], path: Path) -> None:
    """Write every run's points, one row each: optimizer, lr, state_dtype (empty for the
    default), examples, epoch, loss."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["optimizer", "lr", "state_dtype", "examples", "epoch", "loss"])
        for trained in runs:
            for examples, epoch, loss in trained.points:
                writer.writerow([
                    trained.optimizer, f"{trained.lr:g}", trained.state_dtype or "",
                    examples, f"{epoch:.6g}", format_loss(loss),
                ])


def summary_table(runs: list[OptimizerRun]) -> str:
    """One line per run: optimizer, learning rate, state format, final loss and training seconds per epoch.

    >>> result = TrainingResult(curve=[], final_loss=0.25, seconds_per_epoch=0.1)
    >>> print(summary_table([OptimizerRun("sgd", 0.05, "bf16", [(1500, 1.0, 0.25)], result)]))
    optimizer  lr    state  final loss  s/epoch
    sgd        0.05  bf16   0.25        0.1
    """
    lines = [("optimizer", "lr", "state", "final loss", "s/epoch")] + [
        (
            trained.optimizer,
            f"{trained.lr:g}",
            trained.state_dtype or "default",
            format_loss(trained.result.final_loss),
            f"{trained.result.seconds_per_epoch:.3g}",
        )
        for trained in runs
    ]
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines
    )


def run(args: argparse.Namespace) -> None:
    """Train once per optimizer and state format, print the summary and write the plot and the CSV."""
    task = TASKS[args.task]
    rates = learning_rates(args.optimizers, args.lr, task.learning_rates)
    if args.state_dtype != [None]:
        check_names("state dtype", args.state_dtype, NAMED_STATE_DTYPES)
    epochs = args.epochs or task.epochs
    batch_size = args.batch_size or task.batch_size
    out = writable_directory(args.out)
    plots = import_plots()
    data = task.load_data()
    runs = []
    total_examples = len(rates) * len(args.state_dtype) * epochs * len(data[0])
    with progress_bar(total_examples, quiet=args.quiet, unit="example") as progress:
        for optimizer, lr in rates.items():
            for state_dtype in args.state_dtype:
                progress.set_description(optimizer if state_dtype is None else f"{optimizer} {state_dtype}")
                runs.append(
                    train_with(
                        optimizer,
                        lr,
                        task=task,
                        epochs=epochs,
                        batch_size=batch_size,
                        seed=args.seed,
                        data=data,
                        state_dtype=state_dtype,
                        progress=progress,
                    )
                )

    write_csv(runs, out / CURVES_CSV)
    plots.plot_loss_curves(
        {
            trained.label: (
                [epoch for _, epoch, _ in trained.points],
                [loss for _, _, loss in trained.points],
            )
            for trained in runs
        },
        out / CURVES_PNG,
        title=f"{task.description}, batch size {batch_size}, seed {args.seed}",
        ylabel=task.loss_label,
    )
    print(summary_table(runs))
    print(f"wrote {out / CURVES_PNG} and {out / CURVES_CSV}")
