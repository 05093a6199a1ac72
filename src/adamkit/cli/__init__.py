"""The ``adamkit`` command.

Each subcommand is one module in this package with ``register(subparsers)``, which
adds its parser and sets ``run=<function taking the parsed args>``; adding a
subcommand means writing that module and listing it in ``SUBCOMMANDS``.
"""

import argparse
import sys
from collections.abc import Sequence

from adamkit.cli import bench, compare, explain, train, trajectories
from adamkit.cli.errors import CommandError

SUBCOMMANDS = (train, explain, compare, trajectories, bench)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``adamkit`` argument parser with every subcommand registered.

    >>> build_parser().parse_args(["train", "--epochs", "1"]).epochs
    1
    """
    parser = argparse.ArgumentParser(
        prog="adamkit", description="Adam-family optimizers for PyTorch."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subcommand in SUBCOMMANDS:
        subcommand.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``adamkit`` command with ``argv`` (default: ``sys.argv[1:]``); return 0 on success.

    Usage errors exit with status 2 and a one-line message on stderr, no traceback;
    Ctrl-C ends the command with one line and status 130, as shells expect.

    >>> main(["train", "--epochs", "1", "--quiet"])  # doctest: +ELLIPSIS
    epoch 0.13  examples 200  loss ...
    final loss: ...
    0
    """
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CommandError as error:
        print(f"adamkit {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"adamkit {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    return 0
