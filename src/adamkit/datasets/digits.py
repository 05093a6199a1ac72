"""The UCI handwritten digits (8x8 images), as scikit-learn ships them.

Attribution is in README.md next to the data file.
"""

import gzip
from importlib import resources

import numpy as np
import torch

DATA_FILE = "digits.csv.gz"


def load_digits(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images [1797, 64], labels [1797])``: pixels scaled from 0..16 to [0, 1], labels 0..9.

    >>> images, labels = load_digits()
    >>> images.shape, labels.shape, float(images.max()), labels.unique().tolist()
    (torch.Size([1797, 64]), torch.Size([1797]), 1.0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    with resources.files(__package__).joinpath(DATA_FILE).open("rb") as packed:
        rows = np.loadtxt(gzip.open(packed, "rt"), delimiter=",", dtype=np.int64)
    images = torch.from_numpy(rows[:, :-1]).to(dtype) / 16
    return images, torch.from_numpy(rows[:, -1])
