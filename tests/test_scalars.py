"""The default kernels' coefficients are rounded once: powers checked against exact
rational arithmetic (integer exponents) and 120-digit decimal arithmetic (real ones)."""

import decimal
import math
import random
from fractions import Fraction

from adamkit.rules.scalars import EXACT


def test_integer_powers_are_the_exact_power_rounded_once():
    rng = random.Random(0)
    bases = [0.9, 0.999, 0.95, 0.5, 0.99] + [rng.uniform(0.5, 1.0) for _ in range(20)]
    for base in bases:
        for step in [1, 2, 3, 16, 17, 100, 1000] + [rng.randrange(1, 5000) for _ in range(10)]:
            assert EXACT.power(base, float(step)) == float(Fraction(base) ** step), (base, step)  # float() rounds once


def test_real_powers_are_within_half_an_ulp_of_the_true_power():
    """NAdam's momentum schedule: 0.96 ** (t * momentum_decay)."""
    rng = random.Random(1)
    cases = [(0.96, t * 4e-3) for t in range(1, 400)] + [(rng.uniform(0.1, 2.0), rng.uniform(0.0, 50.0)) for _ in range(300)]
    for base, exponent in cases:
        result = EXACT.power(base, exponent)
        with decimal.localcontext(decimal.Context(prec=120)):
            true = decimal.Decimal(base) ** decimal.Decimal(exponent)
            error = abs(decimal.Decimal(result) - true)
            half_ulp = decimal.Decimal(math.ulp(result)) / 2
            assert error <= half_ulp, (base, exponent, result)
