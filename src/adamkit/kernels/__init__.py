"""Kernels: how an update rule is run over a group of tensors.

``eager`` runs the rule tensor by tensor with ordinary torch operations; it is the
reference, equal to ``torch.optim``'s for-loop bit for bit. ``fused_cpu`` runs the same
rule in one parallel pass over all of a group's CPU tensors (numba).
"""

from adamkit.kernels.eager import eager_step

__all__ = ["eager_step"]
