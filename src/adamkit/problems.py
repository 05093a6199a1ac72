"""Two-dimensional test functions, and optimizers run on them step by step.

Each ``Problem`` knows its formula, a start point, its minima and the region worth
plotting, and a learning rate per optimizer that makes an informative path from that
start. ``adamkit explain`` and ``adamkit trajectories`` both run on these problems.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from adamkit.optimizers.registry import build_optimizer
from adamkit.training import Progress

Point = tuple[float, float]
Interval = tuple[float, float]  # (low, high)
# The functions are written with + - * ** only, so one definition serves torch
# tensors (for gradients) and NumPy arrays (for contour grids).
Function2D = Callable[[object, object], object]


@dataclass(frozen=True)
class Problem:
    """A function ``f(x, y)`` of ``theta = (x, y)`` to minimize, with what a picture of it needs.

    ``minima`` is empty for functions without one. ``learning_rates`` maps each
    optimizer name to a learning rate whose path from ``start`` stays on the plotting
    range and shows the optimizer's character.

    >>> PROBLEMS["quadratic"].loss(torch.tensor([0.5, -0.3]))
    tensor(0.4300)
    """

    name: str
    formula: str
    function: Function2D
    start: Point
    minima: tuple[Point, ...]
    x_range: Interval
    y_range: Interval
    learning_rates: Mapping[str, float]

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The function's value at ``theta`` (a tensor of two elements)."""
        return self.function(theta[0], theta[1])

    def start_parameter(self) -> torch.nn.Parameter:
        """A fresh parameter ``theta`` holding the start point, in torch's default dtype."""
        return torch.nn.Parameter(torch.tensor(self.start))

    def contour_grid(self, resolution: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, y, z)`` meshes of the function's values over the plotting range.

        >>> x, y, z = PROBLEMS["saddle"].contour_grid(resolution=5)
        >>> z.shape, float(z[2, 2])
        ((5, 5), 0.0)
        """
        x, y = np.meshgrid(
            np.linspace(*self.x_range, resolution), np.linspace(*self.y_range, resolution)
        )
        return x, y, self.function(x, y)


PROBLEMS: dict[str, Problem] = {
    problem.name: problem
    for problem in (
        Problem(
            name="quadratic",
            formula="x^2 + 2 y^2",
            function=lambda x, y: x**2 + 2 * y**2,
            start=(0.5, -0.3),
            minima=((0.0, 0.0),),
            x_range=(-0.6, 0.6),
            y_range=(-0.4, 0.4),
            learning_rates={
                "adam": 0.1, "adamw": 0.1, "amsgrad": 0.1, "yogi": 0.1, "adamax": 0.1, "radam": 0.1, "nadam": 0.1,
                "sgd": 0.1, "rmsprop": 0.02,
                "adadelta": 1.0, "rprop": 0.1, "asgd": 0.1, "lion": 0.1, "adopt": 0.1, "ademamix": 0.1, "adan": 0.1, "schedulefree": 0.1, "adagrad": 0.3,
            },
        ),
        Problem(
            name="ill-conditioned",
            formula="0.1 x^2 + 2 y^2",
            function=lambda x, y: 0.1 * x**2 + 2 * y**2,
            start=(-5.0, -2.0),
            minima=((0.0, 0.0),),
            x_range=(-5.5, 1.5),
            y_range=(-3.0, 2.0),
            learning_rates={
                "adam": 0.3, "adamw": 0.3, "amsgrad": 0.3, "yogi": 0.3, "adamax": 0.3, "radam": 0.3, "nadam": 0.3,
                "sgd": 0.4, "rmsprop": 0.1,
                "adadelta": 1.0, "rprop": 0.3, "asgd": 0.4, "lion": 0.02, "adopt": 0.3, "ademamix": 0.3, "adan": 0.1, "schedulefree": 0.3, "adagrad": 1.5,
            },
        ),
        Problem(
            name="rosenbrock",
            formula="(1 - x)^2 + 100 (y - x^2)^2",
            function=lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
            start=(-1.2, 1.0),
            minima=((1.0, 1.0),),
            x_range=(-1.6, 1.6),
            y_range=(-0.6, 1.8),
            learning_rates={
                "adam": 0.1, "adamw": 0.1, "amsgrad": 0.1, "yogi": 0.1, "adamax": 0.1, "radam": 0.002, "nadam": 0.1,
                "sgd": 0.002, "rmsprop": 0.02,
                "adadelta": 1.0, "rprop": 0.1, "asgd": 0.002, "lion": 0.1, "adopt": 0.1, "ademamix": 0.1, "adan": 0.1, "schedulefree": 0.1, "adagrad": 0.5,
            },
        ),
        Problem(
            name="beale",
            formula="(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2",
            function=lambda x, y: (
                (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2
            ),
            start=(1.0, 1.5),
            minima=((3.0, 0.5),),
            x_range=(-1.0, 4.5),
            y_range=(-1.5, 2.0),
            learning_rates={
                "adam": 0.05, "adamw": 0.05, "amsgrad": 0.05, "yogi": 0.05, "adamax": 0.05, "radam": 0.005, "nadam": 0.05,
                "sgd": 0.001, "rmsprop": 0.01,
                "adadelta": 1.0, "rprop": 0.05, "asgd": 0.001, "lion": 0.05, "adopt": 0.05, "ademamix": 0.05, "adan": 0.05, "schedulefree": 0.05, "adagrad": 0.5,
            },
        ),
        Problem(
            name="saddle",
            formula="x^2 + y^4/4 - y^2/2",
            function=lambda x, y: x**2 + y**4 / 4 - y**2 / 2,
            start=(-1.5, 0.01),
            minima=((0.0, -1.0), (0.0, 1.0)),
            x_range=(-2.0, 2.0),
            y_range=(-1.5, 1.5),
            learning_rates={
                "adam": 0.05, "adamw": 0.05, "amsgrad": 0.05, "yogi": 0.05, "adamax": 0.05, "radam": 0.05, "nadam": 0.05,
                "sgd": 0.1, "rmsprop": 0.01,
                "adadelta": 1.0, "rprop": 0.05, "asgd": 0.1, "lion": 0.05, "adopt": 0.05, "ademamix": 0.05, "adan": 0.05, "schedulefree": 0.05, "adagrad": 0.5,
            },
        ),
    )
}


@dataclass(frozen=True)
class Descent:
    """The points an optimizer visited, ``path[0]`` being the start, and the loss at each.

    Both are float64 arrays, ``path`` of shape ``(steps + 1, 2)``, ``losses`` of ``steps + 1``.
    """

    path: np.ndarray
    losses: np.ndarray


def descend(
    problem: Problem,
    theta: torch.nn.Parameter,
    optimizer: torch.optim.Optimizer,
    steps: int,
    progress: Progress | None = None,
) -> Descent:
    """Take ``steps`` steps of ``optimizer`` (which updates ``theta``) on ``problem``.

    >>> problem = PROBLEMS["quadratic"]
    >>> theta = problem.start_parameter()
    >>> descent = descend(problem, theta, torch.optim.SGD([theta], lr=0.25), steps=1)
    >>> descent.path.round(4).tolist(), descent.losses.round(4).tolist()
    ([[0.5, -0.3], [0.25, 0.0]], [0.43, 0.0625])
    """
    points = [theta.detach().clone()]
    losses = []
    for _ in range(steps):
        loss = problem.loss(theta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        points.append(theta.detach().clone())
        if progress is not None:
            progress.update(1)
    with torch.no_grad():
        losses.append(problem.loss(theta).item())
    return Descent(path=torch.stack(points).double().numpy(), losses=np.array(losses))


def optimize(
    problem: Problem,
    optimizer_name: str,
    steps: int,
    lr: float | None = None,
    progress: Progress | None = None,
) -> Descent:
    """Run the optimizer called ``optimizer_name`` from ``problem.start`` for ``steps`` steps.

    ``lr`` defaults to ``problem.learning_rates[optimizer_name]``.

    >>> descent = optimize(PROBLEMS["quadratic"], "adam", steps=1)
    >>> descent.path[-1].round(4).tolist()
    [0.4, -0.2]
    """
    theta = problem.start_parameter()
    if lr is None:
        lr = problem.learning_rates[optimizer_name]
    optimizer = build_optimizer(optimizer_name, [theta], lr)
    return descend(problem, theta, optimizer, steps, progress)
