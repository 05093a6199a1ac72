"""The NASA airfoil self-noise data set, prepared as in d2l.ai's optimization chapter.

Attribution and column descriptions are in README.md next to the data file.
"""

import io
from importlib import resources

import numpy as np
import torch

DATA_FILE = "airfoil_self_noise.dat"
TOTAL_ROWS = 1503


def load_airfoil(
    n_rows: int = 1500, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return standardized airfoil ``(features [n_rows, 5], target [n_rows, 1])``.

    Follows d2l's ``get_data_ch11``: every column is standardized to mean 0 and
    standard deviation 1 (ddof=0) over all 1503 rows of the file, and only then
    are the first ``n_rows`` rows kept. The features are frequency, angle of
    attack, chord length, free-stream velocity and suction-side displacement
    thickness; the target is the scaled sound pressure level.

    >>> features, target = load_airfoil()
    >>> features.shape, target.shape
    (torch.Size([1500, 5]), torch.Size([1500, 1]))
    """
    if not 1 <= n_rows <= TOTAL_ROWS:
        raise ValueError(f"n_rows must be between 1 and {TOTAL_ROWS}, got {n_rows}")
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="ascii")
    data = np.loadtxt(io.StringIO(text), delimiter="\t", dtype=np.float64)
    # Standardize in float64 and round once, whatever dtype the caller asks for.
    data = (data - data.mean(axis=0)) / data.std(axis=0)
    rows = torch.from_numpy(data[:n_rows]).to(dtype)
    return rows[:, :-1].contiguous(), rows[:, -1:].contiguous()
