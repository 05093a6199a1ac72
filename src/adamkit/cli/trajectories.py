"""``adamkit trajectories``: draw optimizers' paths over 2-D test functions, one PNG per function."""

import argparse

from adamkit.cli.options import (
    add_optimizer_arguments,
    add_out_argument,
    add_quiet_argument,
    check_names,
    import_plots,
    learning_rates,
    name_list,
    optimizer_label,
    positive_int,
    progress_bar,
    writable_directory,
)
from adamkit.problems import PROBLEMS, optimize
from adamkit.trace import format_number


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``trajectories`` subcommand to the ``adamkit`` parser."""
    parser = subparsers.add_parser(
        "trajectories",
        help="draw optimizers' paths over 2-D test functions",
        description="Run each optimizer from each problem's start point and draw the paths "
        "over the function's contour lines, into --out/trajectories-<problem>.png.",
    )
    add_optimizer_arguments(parser, "each problem's own, see adamkit.problems")
    parser.add_argument(
        "--problems",
        type=name_list,
        default=",".join(PROBLEMS),
        metavar="A,B,...",
        help="comma-separated test functions (default: all of %(default)s)",
    )
    parser.add_argument("--steps", type=positive_int, default=300, help="steps of each optimizer (default: %(default)s)")
    add_out_argument(parser)
    add_quiet_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Run every optimizer on every problem ``args`` names and write one picture per problem."""
    check_names("problem", args.problems, list(PROBLEMS))
    rates_by_problem = {
        name: learning_rates(args.optimizers, args.lr, PROBLEMS[name].learning_rates)
        for name in args.problems
    }
    out = writable_directory(args.out)
    plots = import_plots()
    written = []
    total_steps = len(args.problems) * len(args.optimizers) * args.steps
    with progress_bar(total_steps, quiet=args.quiet, unit="step") as progress:
        for name, rates in rates_by_problem.items():
            problem = PROBLEMS[name]
            progress.set_description(name)
            paths = {
                optimizer_label(optimizer, lr): optimize(problem, optimizer, args.steps, lr, progress).path
                for optimizer, lr in rates.items()
            }
            start = ", ".join(map(format_number, problem.start))
            path = out / f"trajectories-{name}.png"
            plots.plot_trajectories(
                problem,
                paths,
                path,
                title=f"{name}: f(x, y) = {problem.formula}\n"
                f"{args.steps} steps of each optimizer from ({start})",
            )
            written.append(path)
    for path in written:
        print(f"wrote {path}")
