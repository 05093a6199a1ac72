"""Kernels: how an update rule is run over a group of tensors.

``eager`` runs the rule tensor by tensor with ordinary torch operations: with torch's
own calls it equals ``torch.optim``'s for-loop bit for bit (``foreach=False``), and in
its exact mode it rounds square roots and coefficients correctly. ``fused_cpu`` runs
the same rule in one parallel pass over all of a group's CPU tensors (numba; the loops
are in ``cpu_loops``, the operations in ``scalar_ops``, the compiled code in the
``compile_cache``), with correctly rounded operations only: its bits are the same on
every machine.
"""

from adamkit.kernels.eager import eager_step

__all__ = ["eager_step"]
