"""adamkit: Adam-family optimizers for PyTorch, exact drop-ins for torch.optim.

>>> import torch, adamkit
>>> model = torch.nn.Linear(2, 1)
>>> optimizer = adamkit.Adam(model.parameters(), lr=0.1)
"""

from adamkit.optimizers import (
    ADOPT, ASGD, SGD, Adadelta, Adagrad, AdEMAMix, Adam, Adamax, AdamW, Adan, Lion, NAdam, RAdam, RMSprop, Rprop,
    ScheduleFreeAdamW, Yogi, warmup,
)
from adamkit.safety import CheckpointError, freeze, load_checkpoint, param_groups, save_checkpoint, unfreeze
from adamkit.trace import trace

__all__ = [
    "ADOPT",
    "ASGD",
    "SGD",
    "Adadelta",
    "Adagrad",
    "AdEMAMix",
    "Adam",
    "AdamW",
    "Adamax",
    "Adan",
    "CheckpointError",
    "Lion",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "ScheduleFreeAdamW",
    "Yogi",
    "freeze",
    "load_checkpoint",
    "param_groups",
    "save_checkpoint",
    "trace",
    "unfreeze",
    "warmup",
]
__version__ = "0.1.0"
