"""``adamkit compare``: train the same model on the same data with several optimizers.

Every optimizer starts from the same weights and sees the same batches (d2l's airfoil
protocol, one seed), so the curves differ only by the algorithm and its learning rate.
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
    import_plots,
    optimizer_label,
    learning_rates,
    positive_int,
    progress_bar,
    writable_directory,
)
from adamkit.datasets import load_airfoil
from adamkit.optimizers.registry import build_optimizer
from adamkit.training import Progress, TrainingResult, train

# Rates at which each optimizer trains well on the airfoil data in two epochs (d2l's
# choices where it has one: sgd 0.05, adagrad 0.1, adam 0.01).
DEFAULT_LEARNING_RATES = {
    "adam": 0.01,
    "adamw": 0.01,
    "amsgrad": 0.01,
    "yogi": 0.01,
    "sgd": 0.05,
    "rmsprop": 0.01,
    "adagrad": 0.1,
}
CURVES_CSV = "loss_curves.csv"
CURVES_PNG = "loss_curves.png"


@dataclass(frozen=True)
class OptimizerRun:
    """One optimizer's training run; ``points`` are ``(examples, epoch, loss)``, ending at the final loss."""

    optimizer: str
    lr: float
    points: list[tuple[int, float, float]]
    result: TrainingResult

    @property
    def label(self) -> str:
        return optimizer_label(self.optimizer, self.lr)


def train_with(
    optimizer: str,
    lr: float,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor],
    progress: Progress | None = None,
) -> OptimizerRun:
    """Train with one optimizer; the run's points end with the loss after the last step.

    ``train`` records the loss every 200 examples, which need not fall on the last
    step (1500 examples make an epoch), so the final loss is added when it does not.

    >>> trained = train_with("adam", 0.01, epochs=1, batch_size=10, seed=0, data=load_airfoil())
    >>> trained.points[-1] == (1500, 1.0, trained.result.final_loss)
    True
    """
    points: list[tuple[int, float, float]] = []
    result = train(
        functools.partial(build_optimizer, optimizer, lr=lr),
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
    return OptimizerRun(optimizer, lr, points, result)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand to the ``adamkit`` parser."""
    parser = subparsers.add_parser(
        "compare",
        help="train the airfoil model with several optimizers and plot their loss curves",
        description="Train nn.Linear(5, 1) on the airfoil data (d2l's protocol) once per "
        f"optimizer, from the same weights and batches; print a summary and write {CURVES_PNG} "
        f"and {CURVES_CSV} into --out.",
    )
    add_optimizer_arguments(
        parser, ", ".join(f"{name}={lr:g}" for name, lr in DEFAULT_LEARNING_RATES.items())
    )
    parser.add_argument("--epochs", type=positive_int, default=2, help="passes over the data (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=10, help="examples per step (default: %(default)s)")
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
    """Write every run's points, one row each: optimizer, lr, examples, epoch, loss."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["optimizer", "lr", "examples", "epoch", "loss"])
        for trained in runs:
            for examples, epoch, loss in trained.points:
                writer.writerow(
                    [trained.optimizer, f"{trained.lr:g}", examples, f"{epoch:.6g}", format_loss(loss)]
                )


def summary_table(runs: list[OptimizerRun]) -> str:
    """One line per run: optimizer, learning rate, final loss and training seconds per epoch.

    >>> result = TrainingResult(curve=[], final_loss=0.25, seconds_per_epoch=0.1)
    >>> print(summary_table([OptimizerRun("sgd", 0.05, [(1500, 1.0, 0.25)], result)]))
    optimizer  lr    final loss  s/epoch
    sgd        0.05  0.25        0.1
    """
    lines = [("optimizer", "lr", "final loss", "s/epoch")] + [
        (
            trained.optimizer,
            f"{trained.lr:g}",
            format_loss(trained.result.final_loss),
            f"{trained.result.seconds_per_epoch:.3g}",
        )
        for trained in runs
    ]
    widths = [max(len(line[column]) for line in lines) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines
    )


def run(args: argparse.Namespace) -> None:
    """Train once per optimizer, print the summary and write the plot and the CSV."""
    rates = learning_rates(args.optimizers, args.lr, DEFAULT_LEARNING_RATES)
    out = writable_directory(args.out)
    plots = import_plots()
    data = load_airfoil()
    runs = []
    total_examples = len(rates) * args.epochs * len(data[0])
    with progress_bar(total_examples, quiet=args.quiet, unit="example") as progress:
        for optimizer, lr in rates.items():
            progress.set_description(optimizer)
            runs.append(
                train_with(
                    optimizer,
                    lr,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    data=data,
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
        title=f"Airfoil linear regression, batch size {args.batch_size}, seed {args.seed}: "
        + ", ".join(trained.label for trained in runs),
        ylabel="loss on the whole data set (MSE / 2)",
    )
    print(summary_table(runs))
    print(f"wrote {out / CURVES_PNG} and {out / CURVES_CSV}")
