"""Train a linear regression on the airfoil data, following d2l.ai's optimization chapter.

The protocol (``nn.Linear(5, 1)`` with weights drawn from N(0, 0.01^2), mini-batches
of 10, loss MSE/2, the whole-data-set loss recorded every 200 examples) is the one
d2l uses to compare optimizers, so curves from different optimizers line up.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from adamkit.datasets import load_airfoil

EVALUATE_EVERY_EXAMPLES = 200

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


def half_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """d2l's squared loss: mean of ``(prediction - target)**2 / 2``.

    >>> half_mse(torch.tensor([[3.0]]), torch.tensor([[1.0]]))
    tensor(2.)
    """
    return ((predictions - targets) ** 2 / 2).mean()


def train(
    make_optimizer: OptimizerFactory,
    *,
    epochs: int = 2,
    batch_size: int = 10,
    seed: int = 0,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_loss: LossCallback | None = None,
    progress: Progress | None = None,
) -> TrainingResult:
    """Train ``nn.Linear`` on ``data`` (default: ``load_airfoil()``) and return its loss curve.

    ``make_optimizer(params)`` builds the optimizer. The same ``seed`` gives the same
    initial weights and the same shuffles, so the same numbers run to run. The loss
    over the whole data set is recorded each time the count of examples trained on
    reaches a multiple of 200 (for batch sizes dividing 200, exactly d2l's
    ``n % 200 == 0``); ``on_loss(examples, epoch, loss)`` is called with each record.

    >>> result = train(lambda params: torch.optim.Adam(params, lr=0.01), epochs=1)
    >>> len(result.curve), result.curve[0][0] == 200 / 1500, result.final_loss < 0.3
    (7, True, True)
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    features, targets = load_airfoil() if data is None else data
    n_examples = len(features)
    generator = torch.Generator().manual_seed(seed)

    # skip_init leaves the global RNG alone; all randomness comes from `generator`.
    model = nn.utils.skip_init(nn.Linear, features.shape[1], targets.shape[1], dtype=features.dtype)
    with torch.no_grad():
        nn.init.normal_(model.weight, std=0.01, generator=generator)
        nn.init.zeros_(model.bias)
    optimizer = make_optimizer(model.parameters())

    def loss_on_all_data() -> float:
        with torch.no_grad():
            return half_mse(model(features), targets).item()

    curve: list[tuple[float, float]] = []
    examples_seen = 0
    training_seconds = 0.0
    for _ in range(epochs):
        order = torch.randperm(n_examples, generator=generator)
        for batch in order.split(batch_size):
            started = time.perf_counter()
            loss = half_mse(model(features[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            training_seconds += time.perf_counter() - started

            previous_count, examples_seen = examples_seen, examples_seen + len(batch)
            if progress is not None:
                progress.update(len(batch))
            if examples_seen // EVALUATE_EVERY_EXAMPLES > previous_count // EVALUATE_EVERY_EXAMPLES:
                epoch, loss_value = examples_seen / n_examples, loss_on_all_data()
                curve.append((epoch, loss_value))
                if on_loss is not None:
                    on_loss(examples_seen, epoch, loss_value)

    return TrainingResult(
        curve=curve, final_loss=loss_on_all_data(), seconds_per_epoch=training_seconds / epochs
    )
