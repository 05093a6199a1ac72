"""Small data sets shipped with adamkit, so that demos and tests never download."""

from adamkit.datasets.airfoil import load_airfoil
from adamkit.datasets.digits import load_digits
from adamkit.datasets.text import load_text

__all__ = ["load_airfoil", "load_digits", "load_text"]
