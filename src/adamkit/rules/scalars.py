"""Scalar math for per-step coefficients: torch's Python expressions, or correctly rounded.

``torch.optim``'s for-loop computes Adam's bias corrections with Python's ``**``, which
calls the C library's ``pow``. That ``pow`` is not correctly rounded (glibc's misrounds
about 0.07% of ``beta ** step`` and 0.1% of ``x ** 0.5``), and C libraries differ, so
coefficients made with it may differ between machines. ``TORCH`` repeats torch's
expressions (for the eager kernel's bit-for-bit parity); ``EXACT`` rounds every result
once, so the default kernels' coefficients are the same everywhere.

>>> EXACT.power(0.9, 3), EXACT.sqrt(0.25)
(0.7290000000000001, 0.5)
"""

from __future__ import annotations

import decimal
import math
import operator
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache
from typing import Any, NamedTuple

from torch import is_tensor


def as_number(value: Any) -> Any:
    """A tensor hyperparameter or step count as a Python number, as torch reads it where
    it takes a number (``add``'s ``alpha``, its non-capturable steps); numbers unchanged.

    >>> import torch
    >>> as_number(torch.tensor(0.5)), as_number(2.0)
    (0.5, 2.0)
    """
    return value.item() if is_tensor(value) else value


class ScalarMath(NamedTuple):
    """The operations coefficients need beyond + - * /."""

    power: Callable[[float, float], float]
    sqrt: Callable[[float], float]
    exp: Callable[[float], float] = math.exp
    log: Callable[[float], float] = math.log


def _python_sqrt(x: float) -> float:
    return x**0.5  # torch's expression: `bias_correction2 ** 0.5`


def _truncated_product(a: int, b: int, bits: int) -> tuple[int, int]:
    """``a * b`` cut to its top ``bits`` bits, and the number of bits cut."""
    product = a * b
    cut = max(0, product.bit_length() - bits)
    return product >> cut, cut


def _round_scaled(mantissa: int, exponent: int, error: int) -> float | None:
    """``mantissa * 2**exponent`` rounded to the nearest double, or None when the true
    value, within ``error`` units of ``mantissa``, could round either way."""
    target = max(exponent + mantissa.bit_length() - 53, -1074)  # exponent of the result's last bit
    shift = target - exponent
    if shift <= 0:
        return math.ldexp(mantissa, exponent)
    kept, remainder = mantissa >> shift, mantissa & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if abs(remainder - half) <= error:
        return None
    try:
        return math.ldexp(kept + (remainder > half), target)
    except OverflowError:
        return math.inf


def _split(base: float) -> tuple[int, int]:
    """``abs(base)`` as ``mantissa * 2**scale`` with an integer mantissa, exactly."""
    fraction, exponent = math.frexp(abs(base))
    return int(fraction * (1 << 53)), exponent - 53


def _wide_power(base: float, n: int, bits: int) -> tuple[int, int, int]:
    """``abs(base) ** n`` as ``(mantissa, scale, error)``: powers by squaring on integers
    cut to ``bits`` bits after each product. Each cut loses under one unit of a
    ``bits``-bit mantissa, and a power doubles the relative error of what it squares,
    so the result is within ``error = 2 * (2n + products)`` units of its last bit."""
    mantissa, scale = _split(base)
    result, result_scale, power, power_scale, k, products = 1, 0, mantissa, scale, n, 0
    while k:
        if k & 1:
            result, cut = _truncated_product(result, power, bits)
            result_scale += power_scale + cut
            products += 1
        k >>= 1
        if k:
            power, cut = _truncated_product(power, power, bits)
            power_scale = 2 * power_scale + cut
            products += 1
    return result, result_scale, 2 * (2 * n + products) + 2


# The last wide power of each base: a training run asks for step, then step + 1, and one
# more product (one more unit of error) gives the next power.
_last_power: dict[float, tuple[int, int, int, int]] = {}


@lru_cache(maxsize=4096)
def correctly_rounded_power(base: float, exponent: float) -> float:
    """``base ** exponent`` rounded once.

    For an integer ``exponent`` >= 0 (a step count) the power is computed on integers
    carrying 128 bits with a bound on its error (see ``_wide_power``); when the bound
    leaves the rounding in doubt, 256 bits decide, and in the end exact rational
    arithmetic (only ever needed when the power is exact, hence short). Other exponents
    (NAdam's ``0.96 ** (step * momentum_decay)``) go through ``_decimal_power``.
    """
    if not (math.isfinite(base) and math.isfinite(exponent)):
        return base**exponent
    if exponent != int(exponent) or exponent < 0:
        return _decimal_power(base, exponent)
    n = int(exponent)
    if n <= 1 or base == 0:
        return base**n
    negative = base < 0 and n % 2 == 1
    last = _last_power.get(base)
    if last is not None and last[0] == n - 1:
        factor, factor_scale = _split(base)
        mantissa, cut = _truncated_product(last[1], factor, 128)
        wide = (mantissa, last[2] + factor_scale + cut, last[3] + 2)
    else:
        wide = _wide_power(base, n, 128)
    _last_power[base] = (n, *wide)
    rounded = _round_scaled(*wide)
    if rounded is None:
        rounded = _round_scaled(*_wide_power(base, n, 256))
    if rounded is None:
        return float(Fraction(base) ** n)
    return -rounded if negative else rounded


def _decimal_power(base: float, exponent: float) -> float:
    """``base ** exponent`` for a real exponent, rounded once (``_rounded_once``).
    Negative bases, zero and huge exponents are left to Python's ``**``."""
    if base <= 0 or not 0 < abs(exponent) < 1e6:
        return base**exponent
    return _rounded_once(lambda: decimal.Decimal(base) ** decimal.Decimal(exponent), lambda: base**exponent)


@lru_cache(maxsize=4096)
def correctly_rounded_exp(x: float) -> float:
    """``e ** x`` rounded once (``_rounded_once``)."""
    if not abs(x) < 700:
        return math.exp(x)
    return _rounded_once(lambda: decimal.Decimal(x).exp(), lambda: math.exp(x))


@lru_cache(maxsize=4096)
def correctly_rounded_log(x: float) -> float:
    """The natural logarithm of ``x`` rounded once (``_rounded_once``); exact at 1."""
    if not 0 < x < math.inf or x == 1:
        return math.log(x)
    return _rounded_once(lambda: decimal.Decimal(x).ln(), lambda: math.log(x))


def _rounded_once(value: Callable[[], decimal.Decimal], fallback: Callable[[], float]) -> float:
    """``value()`` computed in decimal with 40 and then 80 significant digits (each
    almost always correctly rounded, so within a unit of their last digit), until the
    result is far enough from the midpoint of two doubles that converting it cannot
    round the wrong way. Results outside the doubles' normal range are left to
    ``fallback`` (Python's own operation)."""
    for digits in (40, 80):
        with decimal.localcontext(decimal.Context(prec=digits, Emax=10**6, Emin=-(10**6))):
            exact = value()
            rounded = float(exact)
            if not 2.2250738585072014e-308 <= abs(rounded) < math.inf:
                return fallback()
            magnitude = abs(rounded)
            above = decimal.Decimal(magnitude) + (decimal.Decimal(math.nextafter(magnitude, math.inf)) - decimal.Decimal(magnitude)) / 2
            below = decimal.Decimal(magnitude) - (decimal.Decimal(magnitude) - decimal.Decimal(math.nextafter(magnitude, 0))) / 2
            margin = exact.copy_abs() * decimal.Decimal(10) ** (2 - digits)
            if abs(exact.copy_abs() - above) > margin and abs(exact.copy_abs() - below) > margin:
                return rounded
    raise ArithmeticError("cannot round the value once")  # this close to a midpoint of two doubles is not known


TORCH = ScalarMath(operator.pow, _python_sqrt)
EXACT = ScalarMath(correctly_rounded_power, math.sqrt, correctly_rounded_exp, correctly_rounded_log)
