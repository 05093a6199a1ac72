"""Arguments and checks that several subcommands share."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

from adamkit.cli.errors import CommandError
from adamkit.optimizers.registry import OPTIMIZER_NAMES

# torch-adam is torch.optim.Adam itself, there for parity runs of `adamkit train`; the
# tools that explain and compare algorithms show adamkit's own.
ADAMKIT_OPTIMIZERS: tuple[str, ...] = tuple(name for name in OPTIMIZER_NAMES if name != "torch-adam")


def positive_int(text: str) -> int:
    """Parse a command-line integer that must be at least 1.

    >>> positive_int("3")
    3
    """
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """Parse a command-line number that must be above 0, such as a learning rate.

    >>> positive_float("1e-3")
    0.001
    """
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def name_list(text: str) -> list[str]:
    """Parse ``a,b,c`` into names, dropping blanks and repeats.

    >>> name_list("adam, sgd,,adam")
    ['adam', 'sgd']
    """
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError("expected at least one name")
    return names


def name_equals_value(text: str) -> tuple[str, float]:
    """Parse ``name=number`` with a positive number, as in ``--lr adam=0.01``.

    >>> name_equals_value("sgd=0.05")
    ('sgd', 0.05)
    """
    name, _, value = text.partition("=")
    try:
        return name.strip(), positive_float(value)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected NAME=POSITIVE_NUMBER, got {text!r}") from None


def check_names(kind: str, names: Iterable[str], valid: Sequence[str]) -> None:
    """Refuse any of ``names`` not in ``valid``, listing the valid ones.

    >>> check_names("problem", ["rosenbrok"], ["rosenbrock", "beale"])
    Traceback (most recent call last):
    ...
    adamkit.cli.errors.CommandError: unknown problem 'rosenbrok'; valid names: rosenbrock, beale
    """
    for name in names:
        if name not in valid:
            raise CommandError(f"unknown {kind} {name!r}; valid names: {', '.join(valid)}")


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--quiet``, which turns the progress bar off."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


def add_optimizer_arguments(parser: argparse.ArgumentParser, default_learning_rates: str) -> None:
    """Add ``--optimizers a,b,c`` and the repeatable ``--lr name=value``."""
    parser.add_argument(
        "--optimizers",
        type=name_list,
        default=",".join(ADAMKIT_OPTIMIZERS),
        metavar="A,B,...",
        help="comma-separated optimizer names (default: all of %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=name_equals_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"learning rate of one optimizer; repeatable (default: {default_learning_rates})",
    )


def learning_rates(
    optimizers: Sequence[str], overrides: Sequence[tuple[str, float]], defaults: Mapping[str, float]
) -> dict[str, float]:
    """Each optimizer's learning rate: its ``--lr`` if given, else its default.

    >>> learning_rates(["adam", "sgd"], [("sgd", 0.5)], {"adam": 0.01, "sgd": 0.05})
    {'adam': 0.01, 'sgd': 0.5}
    """
    check_names("optimizer", optimizers, ADAMKIT_OPTIMIZERS)
    check_names("optimizer", (name for name, _ in overrides), ADAMKIT_OPTIMIZERS)
    chosen = dict(overrides)
    return {name: chosen.get(name, defaults[name]) for name in optimizers}


def optimizer_label(name: str, lr: float) -> str:
    """How plots and tables name an optimizer with its learning rate.

    >>> optimizer_label("adam", 0.01)
    'adam (lr=0.01)'
    """
    return f"{name} (lr={lr:g})"


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--out DIR``, the folder a command writes its files into."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("adamkit-out"),
        metavar="DIR",
        help="folder for the files written (default: %(default)s)",
    )


def writable_directory(path: Path) -> Path:
    """Create the ``--out`` folder if needed and check that files can be written in it.

    Checked before any work starts, so that a typo does not cost a whole run.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as existing_file:
    ...     writable_directory(Path(existing_file.name))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    adamkit.cli.errors.CommandError: cannot write to --out ...: it is a file, not a directory
    """
    if path.exists() and not path.is_dir():
        raise CommandError(f"cannot write to --out {path}: it is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CommandError(f"cannot write to --out {path}: {error.strerror or error}") from None
    return path


def progress_bar(total: int, *, quiet: bool, unit: str) -> tqdm:
    """A progress bar on stderr that shows up only if the work takes over half a second.

    >>> with progress_bar(3, quiet=True, unit="step") as progress:
    ...     progress.update(3)
    >>> progress.disable
    True
    """
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=quiet, leave=False, delay=0.5)


def import_plots() -> ModuleType:
    """``adamkit.plots``, imported only by commands that draw: matplotlib is optional and slow to load."""
    try:
        from adamkit import plots
    except ModuleNotFoundError as error:
        raise CommandError(f"drawing needs {error.name}: pip install 'adamkit[plot]'") from None
    return plots
