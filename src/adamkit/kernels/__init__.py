"""Kernels: how an update rule is run over a group of tensors.

``eager`` runs the rule tensor by tensor with ordinary torch operations; it is the
reference every faster kernel must reproduce bit for bit.
"""

from adamkit.kernels.eager import eager_step

__all__ = ["eager_step"]
