"""Training safety: freezing, parameter-group builders and validated checkpoints."""

from adamkit.safety.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from adamkit.safety.freezing import freeze, unfreeze
from adamkit.safety.groups import param_groups

__all__ = ["CheckpointError", "freeze", "load_checkpoint", "param_groups", "save_checkpoint", "unfreeze"]
