"""adamkit: Adam-family optimizers for PyTorch, exact drop-ins for torch.optim.

>>> import torch, adamkit
>>> model = torch.nn.Linear(2, 1)
>>> optimizer = adamkit.Adam(model.parameters(), lr=0.1)
"""

from adamkit.optimizers import SGD, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop, Yogi, warmup
from adamkit.safety import CheckpointError, freeze, load_checkpoint, param_groups, save_checkpoint, unfreeze
from adamkit.trace import trace

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "CheckpointError",
    "NAdam",
    "RAdam",
    "RMSprop",
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
