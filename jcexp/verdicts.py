"""What an interval lets jcexp say: one vocabulary for the verdict line, ``report --compare``, the claims table
and W&B.

An interval that contains 0 is not evidence that two things are equal: with ±10 points of Sr it almost always
contains 0. "Equal" is an equivalence claim and needs a margin: two runs are **equivalent** only when the
whole 95% interval of their difference lies inside ±margin (the two one-sided tests, TOST, read from the
interval; with a two-sided 95% interval this is TOST at 2.5% per side, the conservative reading). An interval
that excludes 0 says **higher** or **lower**. Anything else is **inconclusive**: the items cannot tell.
A difference that could not be computed is **undefined**, with its reason.

Every claim, whatever its interval says, also needs evidence in the items themselves: at least
``MIN_DISCORDANT`` items on which the compared runs disagree. Below that floor the verdict is **inconclusive**
(``below_floor`` says why). The same floor applies to "=", ">" and "<", in the claims table, ``report
--compare``, and the budget race; every caller passes the count of items on which the two runs it compares differ
(not items on which either differs from the dense model). One kind of claim is exempt (``threshold_floor``): a
threshold claim, Sr above a fixed value such as 0.75, whose null (Sr at or below the value) is far from "the runs
agree", so few disagreements are evidence for it, not a degenerate case (a model that agrees with the dense one on
all but 5 of 200 items keeps far more than 0.75); its error is simulated in tests/test_claims.py.

Pure: no numpy, no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

# Points of Sr (as a fraction) inside which two runs count as equivalent, unless the user sets another.
DEFAULT_MARGIN = 0.05

# The discordance floor: a claim needs at least this many items on which the compared runs disagree. Why 10:
# with d discordant items all in one direction the exact two-sided sign test has p = 2^(1 - d); at d = 4 that
# is 0.125 (a ">" claim held on 4 items out of 200 in issue 26), at d = 10 it is 0.002, under 0.05 for any
# single claim. 10 is also sequential evaluation's and the race's default floor (benchmark.ci_min_discordant),
# so one number guards every normal-approximation interval jcexp reads a verdict from. The floor is not the
# multiplicity correction: the family-wise intervals do that (jcexp/paired.py).
MIN_DISCORDANT = 10

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


def below_floor(discordant: int | None, floor: int = MIN_DISCORDANT) -> str | None:
    """Why a claim on ``discordant`` disagreeing items cannot be decided, or None when the floor is met
    (always for ``floor`` 0, a threshold claim's)."""
    if floor <= 0:
        return None
    if discordant is None:
        return "the number of items on which the runs disagree is unknown"
    if discordant < floor:
        return f"only {discordant} items on which the compared runs disagree (a claim needs {floor})"
    return None


def threshold_floor(threshold: float, dense_right: float, floor: int = MIN_DISCORDANT) -> int:
    """The floor for a threshold claim (Sr above ``threshold``): 0 where, at the threshold, the model would
    disagree with the dense one on at least ``floor`` of the dense model's ``dense_right`` right answers (its
    null is then far from "the runs agree"); else ``floor`` (a small suite keeps it)."""
    return 0 if (1 - threshold) * dense_right >= floor else floor


def difference_word(
    ci: Sequence[float] | None, margin: float = DEFAULT_MARGIN, *, discordant: int | None
) -> str:
    """A - B from the interval of their difference: equivalent, higher, lower, inconclusive or undefined.

    Equivalence is checked first: a difference that is real but smaller than the margin (an interval inside
    ±margin that excludes 0) is equivalent for practical purposes, which is what the margin is for.
    ``discordant``: items on which A and B disagree; below ``MIN_DISCORDANT`` nothing but inconclusive."""
    if ci is None:
        return UNDEFINED
    if below_floor(discordant):
        return INCONCLUSIVE
    if inside(ci, margin):
        return EQUIVALENT
    if ci[0] > 0:
        return HIGHER
    if ci[1] < 0:
        return LOWER
    return INCONCLUSIVE


def claim_verdict(
    expect: str,
    ci: Sequence[float] | None,
    margin: float = DEFAULT_MARGIN,
    *,
    discordant: int | None,
    floor: int = MIN_DISCORDANT,
) -> str:
    """The verdict on a claim about a difference d, from d's interval.

    ``expect`` '>' (d > 0) or '<' (d < 0): holds when the interval lies on the claimed side of 0, does not
    hold when it lies on the other side, else inconclusive. '=' (equivalent within the margin): holds when the
    interval lies inside ±margin, does not hold when it lies wholly outside it, else inconclusive.
    ``discordant``: items on which the compared runs disagree; below ``MIN_DISCORDANT`` the verdict is
    inconclusive whatever the interval (``below_floor`` gives the reason); ``floor`` 0 for a threshold claim."""
    if expect not in (">", "<", "="):
        raise ValueError(f"expect must be '>', '<' or '=', got {expect!r}")
    if ci is None:
        return UNDEFINED
    if below_floor(discordant, floor):
        return INCONCLUSIVE
    lo, hi = ci
    if expect == "=":
        if inside(ci, margin):
            return HOLDS
        return DOES_NOT_HOLD if lo > margin or hi < -margin else INCONCLUSIVE
    above, below = lo > 0, hi < 0
    if (above and expect == ">") or (below and expect == "<"):
        return HOLDS
    return DOES_NOT_HOLD if above or below else INCONCLUSIVE


def points(ci: Sequence[float]) -> str:
    """An interval of a difference in Sr as points: '[+1.0, +16.2]'."""
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def margin_text(margin: float) -> str:
    return f"±{100 * margin:g} points of Sr"
