"""Train a task's model with an optimizer and record its loss curve.

The protocol is d2l.ai's, from its optimization chapter: mini-batches drawn by a
seeded shuffle each epoch, and the loss over the whole data set recorded every
``evaluate_every`` examples, so curves from different optimizers line up.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from adamkit.tasks import TASKS, Task

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
LossCallback = Callable[[int, float, float], None]


class Progress(Protocol):
    """Anything with tqdm's ``update(n)``; it is advanced by examples trained on."""

    def update(self, n: int) -> object: ...


@dataclass(frozen=True)
class TrainingResult:
    """What one training run produced.

    ``curve`` holds ``(epoch, loss)`` pairs: epochs completed, as a fraction, and the
    loss over the whole data set at that point. ``seconds_per_epoch`` counts only
    training steps, not the evaluations that produce the curve.
    """

    curve: list[tuple[float, float]]
    final_loss: float
    seconds_per_epoch: float


def train(
    make_optimizer: OptimizerFactory,
    *,
    task: Task | str = "airfoil",
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_loss: LossCallback | None = None,
    progress: Progress | None = None,
) -> TrainingResult:
    """Train ``task``'s model (a ``Task`` or a name in ``adamkit.tasks.TASKS``) and return its loss curve.

    ``make_optimizer(params)`` builds the optimizer; ``epochs``, ``batch_size`` and
    ``data`` default to the task's. The same ``seed`` gives the same initial weights
    and the same shuffles, so the same numbers run to run. The loss over the whole
    data set is recorded each time the count of examples trained on reaches a multiple
    of ``task.evaluate_every`` (for the airfoil task and batch sizes dividing 200,
    exactly d2l's ``n % 200 == 0``); ``on_loss(examples, epoch, loss)`` is called with
    each record.

    >>> result = train(lambda params: torch.optim.Adam(params, lr=0.01), epochs=1)
    >>> len(result.curve), result.curve[0][0] == 200 / 1500, result.final_loss < 0.3
    (7, True, True)
    """
    task = TASKS[task] if isinstance(task, str) else task
    epochs = task.epochs if epochs is None else epochs
    batch_size = task.batch_size if batch_size is None else batch_size
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    inputs, targets = task.load_data() if data is None else data
    n_examples = len(inputs)
    generator = torch.Generator().manual_seed(seed)
    model = task.build_model(inputs, targets, generator)
    optimizer = make_optimizer(model.parameters())

    # Schedule-Free optimizers train at y and are evaluated at x: they switch for each evaluation.
    switches = callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))

    def loss_on_all_data() -> float:
        if switches:
            optimizer.eval()
        try:
            with torch.no_grad():
                return task.loss(model(inputs), targets).item()
        finally:
            if switches:
                optimizer.train()

    curve: list[tuple[float, float]] = []
    examples_seen = 0
    training_seconds = 0.0
    for _ in range(epochs):
        order = torch.randperm(n_examples, generator=generator)
        for batch in order.split(batch_size):
            started = time.perf_counter()
            loss = task.loss(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            training_seconds += time.perf_counter() - started

            previous_count, examples_seen = examples_seen, examples_seen + len(batch)
            if progress is not None:
                progress.update(len(batch))
            if examples_seen // task.evaluate_every > previous_count // task.evaluate_every:
                epoch, loss_value = examples_seen / n_examples, loss_on_all_data()
                curve.append((epoch, loss_value))
                if on_loss is not None:
                    on_loss(examples_seen, epoch, loss_value)

    return TrainingResult(
        curve=curve, final_loss=loss_on_all_data(), seconds_per_epoch=training_seconds / epochs
    )
