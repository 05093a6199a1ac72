"""A small text for character-level language models: adamkit's own documentation.

The file is a fixed snapshot (README.md, docs/architecture.md and docs/safety.md of
adamkit 0.1), so results on it do not move when the documentation does.
"""

from importlib import resources

import torch

DATA_FILE = "adamkit_docs.txt"


def load_text() -> tuple[torch.Tensor, str]:
    """Return ``(codes, alphabet)``: the text as int64 indexes into ``alphabet``, its sorted characters.

    >>> codes, alphabet = load_text()
    >>> len(codes) > 20_000, "".join(alphabet[i] for i in codes[:9])
    (True, '# adamkit')
    """
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    alphabet = "".join(sorted(set(text)))
    index = {character: i for i, character in enumerate(alphabet)}
    return torch.tensor([index[character] for character in text]), alphabet
