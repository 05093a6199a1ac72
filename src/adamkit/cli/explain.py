"""``adamkit explain``: run an optimizer on a 2-D problem and show every quantity of every step.

The default is the worked example: Adam (lr 0.1) on f(x, y) = x^2 + 2 y^2 from
theta = (x, y) = (0.5, -0.3). The numbers are read from the optimizer's state by ``adamkit.trace``.
"""

import argparse
import json
from numbers import Real
from typing import Any

from torch.optim import Optimizer

from adamkit.cli.options import (
    ADAMKIT_OPTIMIZERS,
    add_quiet_argument,
    check_names,
    positive_float,
    positive_int,
    progress_bar,
)
from adamkit.optimizers.registry import build_optimizer
from adamkit.problems import PROBLEMS, descend
from adamkit.trace import format_number, trace

COLUMN_MEANINGS = {
    "grad": "g_t, the gradient at theta_(t-1)",
    "exp_avg": "m_t, the first moment in the optimizer's state",
    "exp_avg_sq": "v_t, the second moment in the optimizer's state (RMSprop: square_avg, Adagrad: sum, Adamax: exp_inf, the infinity norm u_t)",
    "m_hat": "m_t / (1 - beta1^t), the bias-corrected first moment",
    "v_hat": "v_t / (1 - beta2^t), the bias-corrected second moment",
    "update": "theta_t - theta_(t-1)",
    "param": "theta_t, after step t",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` subcommand to the ``adamkit`` parser."""
    parser = subparsers.add_parser(
        "explain",
        help="show an optimizer's state step by step on a 2-D problem",
        description="Run an optimizer for a few steps on a 2-D test function and print, "
        "for every step, the gradient, the moments, their bias-corrected values, the "
        "update and the new parameters, as read from the optimizer's state.",
    )
    parser.add_argument("--steps", type=positive_int, default=3, help="optimizer steps to take (default: %(default)s)")
    parser.add_argument(
        "--optimizer", default="adam", metavar="NAME", help=f"one of: {', '.join(ADAMKIT_OPTIMIZERS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--lr", type=positive_float, default=None, help="learning rate (default: the problem's own for the optimizer)"
    )
    parser.add_argument(
        "--problem",
        default="quadratic",
        metavar="NAME",
        help=f"one of: {', '.join(PROBLEMS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead: optimizer, hyperparameters, problem, formula, start, "
        "losses (f at the start and after each step) and records (adamkit.trace's table())",
    )
    add_quiet_argument(parser)
    parser.set_defaults(run=run)


def hyperparameters(optimizer: Optimizer) -> dict[str, Any]:
    """The numeric settings of the optimizer's first param group (lr, betas, eps, ...).

    >>> import torch, adamkit
    >>> hyperparameters(adamkit.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    {'lr': 0.1, 'momentum': 0, 'dampening': 0, 'weight_decay': 0}
    """

    def is_number(value: object) -> bool:
        # Flags such as maximize are bools, which are Reals too but not settings to show.
        return isinstance(value, Real) and not isinstance(value, bool)

    return {
        key: value
        for key, value in optimizer.param_groups[0].items()
        if is_number(value) or (isinstance(value, tuple) and all(map(is_number, value)))
    }


def describe(settings: dict[str, Any]) -> str:
    """``key=value`` pairs, numbers shortened.

    >>> describe({"lr": 0.1, "betas": (0.9, 0.999)})
    'lr=0.1, betas=(0.9, 0.999)'
    """

    def shorten(value: Any) -> str:
        if isinstance(value, tuple):
            return f"({', '.join(map(shorten, value))})"
        return format_number(value)

    return ", ".join(f"{key}={shorten(value)}" for key, value in settings.items())


def run(args: argparse.Namespace) -> None:
    """Run the steps ``args`` asks for and print the table (or JSON) of what happened."""
    check_names("optimizer", [args.optimizer], ADAMKIT_OPTIMIZERS)
    check_names("problem", [args.problem], list(PROBLEMS))
    problem = PROBLEMS[args.problem]
    lr = problem.learning_rates[args.optimizer] if args.lr is None else args.lr
    theta = problem.start_parameter()
    optimizer = build_optimizer(args.optimizer, [theta], lr)
    with (
        progress_bar(args.steps, quiet=args.quiet, unit="step") as progress,
        trace(optimizer, {"theta": theta}) as recorded,
    ):
        descent = descend(problem, theta, optimizer, args.steps, progress)

    settings = hyperparameters(optimizer)
    if args.json:
        print(
            json.dumps(
                {
                    "optimizer": args.optimizer,
                    "hyperparameters": settings,
                    "problem": problem.name,
                    "formula": problem.formula,
                    "start": list(problem.start),
                    "losses": descent.losses.tolist(),
                    "records": recorded.table(),
                },
                indent=2,
            )
        )
        return

    start = ", ".join(map(format_number, problem.start))
    print(f"{args.optimizer} ({describe(settings)})")
    print(
        f"on {problem.name}: f(x, y) = {problem.formula}, from theta = (x, y) = ({start}),"
        f" f = {format_number(descent.losses[0])}"
    )
    print()
    for column in recorded.columns():
        print(f"  {column:<10}  {COLUMN_MEANINGS[column]}")
    print()
    print(recorded.format_table())
    print()
    losses = ", ".join(
        f"{format_number(loss)} (step {step})" for step, loss in enumerate(descent.losses) if step
    )
    print(f"f(theta_t): {losses}")
