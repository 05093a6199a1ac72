"""Small data sets shipped with adamkit, so that demos and tests never download."""

from adamkit.datasets.airfoil import load_airfoil

__all__ = ["load_airfoil"]
