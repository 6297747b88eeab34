"""What an interval lets jcexp say: one vocabulary for the verdict line, ``report --compare``, the claims table
and W&B.

An interval that contains 0 is not evidence that two things are equal: with ±10 points of Sr it almost always
contains 0. "Equal" is an equivalence claim and needs a margin: two runs are **equivalent** only when the
whole 95% interval of their difference lies inside ±margin (the two one-sided tests, TOST, read from the
interval; with a two-sided 95% interval this is TOST at 2.5% per side, the conservative reading). An interval
that excludes 0 says **higher** or **lower**. Anything else is **inconclusive**: the items cannot tell.
A difference that could not be computed is **undefined**, with its reason.

Pure: no numpy, no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

# Points of Sr (as a fraction) inside which two runs count as equivalent, unless the user sets another.
DEFAULT_MARGIN = 0.05

EQUIVALENT, HIGHER, LOWER, INCONCLUSIVE, UNDEFINED = (
    "equivalent",
    "higher",
    "lower",
    "inconclusive",
    "undefined",
)
HOLDS, DOES_NOT_HOLD = "holds", "does not hold"


def inside(ci: Sequence[float], margin: float) -> bool:
    return -margin <= ci[0] and ci[1] <= margin


def difference_word(ci: Sequence[float] | None, margin: float = DEFAULT_MARGIN) -> str:
    """A - B from the interval of their difference: equivalent, higher, lower, inconclusive or undefined.

    Equivalence is checked first: a difference that is real but smaller than the margin (an interval inside
    ±margin that excludes 0) is equivalent for practical purposes, which is what the margin is for."""
    if ci is None:
        return UNDEFINED
    if inside(ci, margin):
        return EQUIVALENT
    if ci[0] > 0:
        return HIGHER
    if ci[1] < 0:
        return LOWER
    return INCONCLUSIVE


def claim_verdict(expect: str, ci: Sequence[float] | None, margin: float = DEFAULT_MARGIN) -> str:
    """The verdict on a claim about a difference d, from d's interval.

    ``expect`` '>' (d > 0) or '<' (d < 0): holds when the interval lies on the claimed side of 0, does not
    hold when it lies on the other side, else inconclusive. '=' (equivalent within the margin): holds when the
    interval lies inside ±margin, does not hold when it lies wholly outside it, else inconclusive."""
    if ci is None:
        return UNDEFINED
    lo, hi = ci
    if expect == "=":
        if inside(ci, margin):
            return HOLDS
        return DOES_NOT_HOLD if lo > margin or hi < -margin else INCONCLUSIVE
    if expect not in (">", "<"):
        raise ValueError(f"expect must be '>', '<' or '=', got {expect!r}")
    above, below = lo > 0, hi < 0
    if (above and expect == ">") or (below and expect == "<"):
        return HOLDS
    return DOES_NOT_HOLD if above or below else INCONCLUSIVE


def points(ci: Sequence[float]) -> str:
    """An interval of a difference in Sr as points: '[+1.0, +16.2]'."""
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def margin_text(margin: float) -> str:
    return f"±{100 * margin:g} points of Sr"
