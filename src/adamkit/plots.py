"""Pictures of loss curves and optimizer paths, written as PNG files.

Only drawing happens here; the numbers come from ``adamkit.training`` and
``adamkit.problems``, where they can be tested without looking at a picture.
Figures are made with ``matplotlib.figure.Figure``, not pyplot, and ``savefig``
renders PNGs with Agg: no display is ever needed, and neither matplotlib's global
backend nor its figure registry is touched (a notebook importing this keeps its own).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from adamkit.problems import Problem

TITLE_WIDTH = 80
CONTOUR_LEVELS = 25
# Optimizers with the same learning rate often draw the same line; alternating dashes
# let each one show through the others.
LINE_STYLES = ("-", "--", ":", "-.")


def _set_title(axes: Axes, title: str) -> None:
    # Long titles (many optimizers, Beale's formula) wrap instead of running off the figure.
    axes.set_title("\n".join(textwrap.fill(line, TITLE_WIDTH) for line in title.splitlines()), fontsize=10)


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=110, bbox_inches="tight")


def plot_loss_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str,
    xlabel: str = "epoch",
    ylabel: str = "loss",
) -> None:
    """Draw each ``label: (x, loss)`` curve on a log loss axis and save a PNG at ``path``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     plot_loss_curves({"sgd (lr=0.1)": ([1, 2], [1.0, 0.5])}, Path(folder, "c.png"), title="t")
    ...     Path(folder, "c.png").read_bytes()[:4]
    b'\\x89PNG'
    """
    many = len(curves) > 8  # the legend would hide the curves: it goes beside the plot
    figure = Figure(figsize=(10.5 if many else 8, 5))
    axes = figure.subplots()
    for number, (label, (x, losses)) in enumerate(curves.items()):
        axes.plot(x, losses, label=label, linewidth=1.8, linestyle=LINE_STYLES[number % len(LINE_STYLES)])
    axes.set_yscale("log")
    # Losses often span less than a decade, where only minor ticks get labels:
    # plain numbers read better there than 3.8x10^-1.
    for axis_formatter in (axes.yaxis.set_major_formatter, axes.yaxis.set_minor_formatter):
        axis_formatter(FormatStrFormatter("%.3g"))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    if many:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        axes.legend()
    _set_title(axes, title)
    _save(figure, path)


def contour_levels(values: np.ndarray) -> np.ndarray:
    """Contour heights spaced evenly on a log scale above the lowest value.

    Test functions are steep far from their minima and flat near them; log spacing
    draws both the walls and the valley floor.

    >>> contour_levels(np.array([-1.0, 999.0])).round(3)[[0, -1]].tolist()
    [-0.99, 999.0]
    """
    lowest, highest = float(values.min()), float(values.max())
    span = highest - lowest
    return lowest + np.geomspace(span * 1e-5, span, CONTOUR_LEVELS)


def plot_trajectories(
    problem: Problem, paths: Mapping[str, np.ndarray], path: Path, *, title: str
) -> None:
    """Draw each ``label: points`` path over ``problem``'s contour lines; save a PNG at ``path``.

    >>> import tempfile
    >>> from adamkit.problems import PROBLEMS, optimize
    >>> quadratic = PROBLEMS["quadratic"]
    >>> paths = {"adam": optimize(quadratic, "adam", steps=5).path}
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     plot_trajectories(quadratic, paths, Path(folder, "q.png"), title="quadratic")
    ...     Path(folder, "q.png").stat().st_size > 0
    True
    """
    figure = Figure(figsize=(8, 6))
    axes = figure.subplots()
    x, y, z = problem.contour_grid()
    contours = axes.contour(
        x, y, z, levels=contour_levels(z), colors="0.6", linewidths=0.7, negative_linestyles="solid"
    )
    contours.set_zorder(0)
    for number, (label, points) in enumerate(paths.items()):
        (line,) = axes.plot(
            points[:, 0],
            points[:, 1],
            label=label,
            linewidth=1.6,
            linestyle=LINE_STYLES[number % len(LINE_STYLES)],
            marker=".",
            markersize=3,
        )
        axes.plot(*points[-1], marker="X", markersize=8, color=line.get_color(), markeredgecolor="black")
    axes.plot(*problem.start, "o", color="black", markersize=7, label="start")
    if problem.minima:
        minima = np.array(problem.minima)
        axes.plot(
            minima[:, 0], minima[:, 1], "*", color="gold", markeredgecolor="black", markersize=15, label="minimum"
        )
    axes.set_xlim(problem.x_range)
    axes.set_ylim(problem.y_range)
    axes.set_xlabel("x = theta[0]")
    axes.set_ylabel("y = theta[1]")
    # Outside the axes, the legend never hides a path.
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="X marks the end", fontsize=9)
    _set_title(axes, title)
    _save(figure, path)
