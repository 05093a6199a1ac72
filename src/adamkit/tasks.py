"""The training tasks adamkit's tools and quality checks run: a model, its data and its loss.

- ``airfoil``: d2l.ai's optimizer protocol, ``nn.Linear(5, 1)`` on the airfoil data, MSE / 2.
- ``digits``: an MLP classifying scikit-learn's 8x8 handwritten digits, cross-entropy.
- ``chars``: a two-layer causal transformer predicting the next character of adamkit's
  documentation, cross-entropy in nats per character.

Every task draws all its randomness (initial weights, shuffles) from one seeded
generator, so a seed gives the same run on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from adamkit.datasets import load_airfoil, load_digits, load_text

ModelBuilder = Callable[[Tensor, Tensor, torch.Generator], nn.Module]


@dataclass(frozen=True)
class Task:
    """What to train: data, a model built from a generator, a loss, and settings that train well.

    ``load_data()`` gives ``(inputs, targets)`` indexed by example along the first
    dimension. ``learning_rates`` maps each adamkit optimizer's name to a rate that
    trains well in ``epochs`` epochs of ``batch_size`` examples. The loss over all the
    data is recorded every ``evaluate_every`` examples.

    >>> TASKS["digits"].load_data()[0].shape
    torch.Size([1797, 64])
    """

    name: str
    description: str
    load_data: Callable[[], tuple[Tensor, Tensor]]
    build_model: ModelBuilder
    loss: Callable[[Tensor, Tensor], Tensor]
    loss_label: str
    epochs: int
    batch_size: int
    evaluate_every: int
    learning_rates: Mapping[str, float]


def half_mse(predictions: Tensor, targets: Tensor) -> Tensor:
    """d2l's squared loss: mean of ``(prediction - target)**2 / 2``.

    >>> half_mse(torch.tensor([[3.0]]), torch.tensor([[1.0]]))
    tensor(2.)
    """
    return ((predictions - targets) ** 2 / 2).mean()


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every position: ``logits [..., classes]``, ``targets [...]``.

    >>> round(cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)).item(), 4)
    1.3863
    """
    return functional.cross_entropy(logits.flatten(0, -2), targets.flatten())


def linear_regression(inputs: Tensor, targets: Tensor, generator: torch.Generator) -> nn.Module:
    """d2l's model: weights from N(0, 0.01^2), zero bias."""
    # skip_init leaves the global RNG alone; all randomness comes from `generator`.
    model = nn.utils.skip_init(nn.Linear, inputs.shape[1], targets.shape[1], dtype=inputs.dtype)
    with torch.no_grad():
        nn.init.normal_(model.weight, std=0.01, generator=generator)
        nn.init.zeros_(model.bias)
    return model


def with_seed_from(generator: torch.Generator, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with torch's default initialization seeded from ``generator``; the global RNG is left as it was."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def digits_mlp(inputs: Tensor, targets: Tensor, generator: torch.Generator) -> nn.Module:
    """64 pixels -> 128 ReLU units -> 10 classes."""
    return with_seed_from(
        generator, lambda: nn.Sequential(nn.Linear(inputs.shape[1], 128), nn.ReLU(), nn.Linear(128, 10))
    )


class CharTransformer(nn.Module):
    """A small GPT-style model: embeddings, pre-norm causal transformer layers, a linear head.

    >>> model = CharTransformer(alphabet_size=5, context=8)
    >>> model(torch.zeros(2, 8, dtype=torch.long)).shape
    torch.Size([2, 8, 5])
    """

    def __init__(self, alphabet_size: int, context: int, width: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(alphabet_size, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, alphabet_size)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, codes: Tensor) -> Tensor:
        length = codes.shape[1]
        hidden = self.embed(codes) + self.position[:length]
        hidden = self.layers(hidden, mask=self.causal[:length, :length], is_causal=True)
        return self.head(self.norm(hidden))


CONTEXT = 64


def text_windows() -> tuple[Tensor, Tensor]:
    """adamkit's documentation cut into non-overlapping windows of ``CONTEXT`` characters,
    each with its next-character targets."""
    codes, _ = load_text()
    windows = (len(codes) - 1) // CONTEXT
    used = windows * CONTEXT
    return codes[:used].view(windows, CONTEXT), codes[1 : used + 1].view(windows, CONTEXT)


def char_transformer(inputs: Tensor, targets: Tensor, generator: torch.Generator) -> nn.Module:
    alphabet_size = len(load_text()[1])
    return with_seed_from(generator, lambda: CharTransformer(alphabet_size, inputs.shape[1]))


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="airfoil",
            description="nn.Linear(5, 1) on the airfoil self-noise data (d2l.ai's protocol)",
            load_data=load_airfoil,
            build_model=linear_regression,
            loss=half_mse,
            loss_label="loss on the whole data set (MSE / 2)",
            epochs=2,
            batch_size=10,
            evaluate_every=200,
            # d2l's choices where it has one: sgd 0.05, adagrad 0.1, adam 0.01.
            learning_rates={
                "adam": 0.01, "adamw": 0.01, "amsgrad": 0.01, "yogi": 0.01, "adamax": 0.02, "radam": 0.01, "nadam": 0.01,
                "sgd": 0.05, "rmsprop": 0.01, "adagrad": 0.1, "adadelta": 1.0, "rprop": 0.01, "asgd": 0.05,
                "lion": 0.003, "adopt": 0.01, "ademamix": 0.01, "adan": 0.01, "schedulefree": 0.03,
            },
        ),
        Task(
            name="digits",
            description="an MLP (64-128-10) classifying the 1797 8x8 handwritten digits",
            load_data=load_digits,
            build_model=digits_mlp,
            loss=cross_entropy,
            loss_label="cross-entropy on the whole data set",
            epochs=5,
            batch_size=32,
            evaluate_every=320,
            learning_rates={
                "adam": 0.003, "adamw": 0.003, "amsgrad": 0.003, "yogi": 0.003, "adamax": 0.006, "radam": 0.003, "nadam": 0.003,
                "sgd": 0.1, "rmsprop": 0.001, "adagrad": 0.03, "adadelta": 1.0, "rprop": 0.01, "asgd": 0.1,
                "lion": 0.001, "adopt": 0.003, "ademamix": 0.003, "adan": 0.003, "schedulefree": 0.03,
            },
        ),
        Task(
            name="chars",
            description=f"a 2-layer causal transformer predicting the next character of adamkit's docs ({CONTEXT} at a time)",
            load_data=text_windows,
            build_model=char_transformer,
            loss=cross_entropy,
            loss_label="cross-entropy on the whole text (nats per character)",
            epochs=20,
            batch_size=16,
            evaluate_every=320,
            learning_rates={
                "adam": 0.01, "adamw": 0.01, "amsgrad": 0.01, "yogi": 0.01, "adamax": 0.02, "radam": 0.01, "nadam": 0.01,
                "sgd": 0.3, "rmsprop": 0.001, "adagrad": 0.03, "adadelta": 1.0, "rprop": 0.001, "asgd": 0.3,
                "lion": 0.003, "adopt": 0.01, "ademamix": 0.01, "adan": 0.01, "schedulefree": 0.03,
            },
        ),
    )
}
