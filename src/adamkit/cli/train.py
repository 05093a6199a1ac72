"""``adamkit train``: train a linear model on the airfoil data and print its loss curve.

Loss lines go to stdout and are identical for identical arguments; the progress bar
and the timing go to stderr.
"""

import argparse
import sys

from tqdm import tqdm

from adamkit.cli.options import check_names, positive_float, positive_int
from adamkit.datasets import load_airfoil
from adamkit.optimizers.registry import OPTIMIZER_NAMES, build_optimizer
from adamkit.training import train


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to the ``adamkit`` parser."""
    parser = subparsers.add_parser(
        "train",
        help="train a linear model on the airfoil data",
        description="Train nn.Linear(5, 1) on the airfoil self-noise data (d2l.ai's "
        "protocol) and print the loss over the whole data set every 200 examples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--optimizer", default="adam", metavar="NAME", help=f"one of: {', '.join(OPTIMIZER_NAMES)}"
    )
    parser.add_argument("--lr", type=positive_float, default=0.01, help="learning rate")
    parser.add_argument("--epochs", type=positive_int, default=2, help="passes over the data")
    parser.add_argument("--batch-size", type=positive_int, default=10, help="examples per step")
    parser.add_argument("--seed", type=int, default=0, help="seeds initial weights and shuffling")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or timing on stderr")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Train as ``args`` asks, printing a loss line every 200 examples and the final loss."""
    check_names("optimizer", [args.optimizer], OPTIMIZER_NAMES)

    def print_loss(examples: int, epoch: float, loss: float) -> None:
        # tqdm.write keeps the line from tearing through the progress bar.
        tqdm.write(f"epoch {epoch:.2f}  examples {examples}  loss {loss:.9g}", file=sys.stdout)

    data = load_airfoil()
    total_examples = args.epochs * len(data[0])
    with tqdm(
        total=total_examples, unit="example", file=sys.stderr, disable=args.quiet, leave=False
    ) as progress:
        result = train(
            lambda params: build_optimizer(args.optimizer, params, args.lr),
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            data=data,
            on_loss=print_loss,
            progress=progress,
        )
    print(f"final loss: {result.final_loss:.9g}")
    if not args.quiet:
        print(f"{result.seconds_per_epoch:.3f} s/epoch", file=sys.stderr)
