"""The budget race: which compression recipe keeps the most at a target size, without running the whole grid.

Users ask one question of the paper's metric: at this size (a TCr, eq. 1, or bits per weight), which recipe keeps
the most? The grid answers it by compressing every candidate and scoring each on every item. The race scores
the candidates round by round on the same seeded items (the order sequential evaluation uses,
jcexp/sequential.py). It SCREENS on the lowest-variance paired statistic it has and CONFIRMS on Sr.

The screen (issue 26 item 3). Every run records, per held-out prose document, KL(dense || compressed) per token
(jcexp/divergence.py, items.json's ``divergence``), on every document at once (the KL forward reads the held-out
prose whole, already in round 1). Both candidates' KLs are to the same dense model on the same documents, so
the candidate-vs-leader comparison is paired by document: ``d_j = log KL_c(j) - log KL_b(j)`` (logs: the
comparison is scale-free, documents whose KL is large for both do not dominate, and per-document KL is roughly
log-normal, which a t interval suits), ``b`` the candidate with the lowest mean log KL (the KL leader). With few
documents (15 on the offline suite) the interval is Student's t with ``n - 1`` degrees of freedom (quantile
computed exactly here, ``t_quantile``), and a drop also needs the two-sided sign-flip (randomization) test of
the same differences at the same level (``sign_flip_test``: exact, all 2^n sign patterns up to 16 documents,
under the null that the two recipes' KLs are exchangeable per document; its smallest p-value is 2 / 2^n, so a
collapsed t interval on few documents cannot decide), and at least ``MIN_SCREEN_DOCUMENTS`` documents. (An
exact sign test in its place, tried first, needed all 15 documents to point the same way at six candidates'
per-pair level: in bench/budget_race.py's simulation at TCr 81.25% with KL ranking as Sr does, 53% of races
ended without a claim, against 7% with the sign-flip test.) A candidate whose interval of (its mean log KL - the KL leader's) lies
above ``log(1 + screen_margin)`` (0: strictly farther) is **screened out**: a claim about KL only ("farther
from the dense model's predictions than the KL leader, on these documents"), recorded with that interval,
never a claim about its Sr. The screen reads the KL once (the first round that has it): later rounds recompute
the same KL (each round's job runs the same forward on the same documents), and reading it again would be
another look that the budget does not cover. The per-item log-likelihood margin of the correct answer is not a
screen here: items.json keeps only each item's metric value (acc / acc_norm, jcexp/lm_eval_worker.py's
``compact_samples``), not the choices' log-likelihoods, so the margin would need the worker to keep lm-eval's
per-choice responses (a change to every run's record, not made here).

The screen orders the candidates and chooses which to keep scoring items on. Whether KL ranks recipes as Sr
does is an empirical question, not a theorem: where it does not, the screen can remove the candidate with the
highest Sr, and the winner is then the best among those kept, which is all its claim says (bench/budget_race.py
measures the rank agreement on a real race, ``kl_vs_sr``; docs/performance.md has the simulation). The
confirmation, and every claim about Sr, is made on Sr among the candidates the screen kept: a confirmed candidate is **dropped** once the
interval of (its Sr - the Sr leader's) lies entirely below 0 and the two disagree on at least
``min_discordant`` items (never fewer than jcexp/verdicts.py's ``MIN_DISCORDANT``; only items on which the
candidate and the leader disagree count). The race stops when one confirmed candidate is left (the **winner**:
the screened-out candidates are farther from dense in KL, the dropped ones lower in Sr), when every survivor's
interval against the leader lies inside ±margin with the floor met (a claim of **equivalence**: the survivors
keep as much as each other within the margin, and no winner is named), or when the items run out (**no claim**
for the survivors not shown equivalent). Every candidate's record says which of these it got: screened out
(with the KL interval), dropped (with the Sr interval), winner, equivalent (with the interval), or no claim
(with the interval that could not decide and why); an undecided race's leader is only the highest point
estimate, never its choice. It also stops, not separated, when the remaining items could not decide: every
survivor's observed difference from the leader is under half the half-width that all the items could reach,
and none could come within the margin (futility). A stop without a claim cannot make any interval wrong, so the
futility stop keeps the family-wise guarantee; it gives up power that the remaining items would hardly have
bought.

One error budget, ``alpha = 1 - level``, split over every interval the race could read (union bound, so all of
them cover together with probability at least ``level`` and every claim above is valid however the race ran):
``screen_share`` of alpha (``SCREEN_SHARE`` = 1/4 by default: 0.0125 of 0.05) goes to the screen, one look at
the ``P = C (C - 1) / 2`` pairs of ``C`` candidates (the KL leader is chosen by the data, so every pair counts),
each KL interval and sign-flip test at ``1 - screen_share alpha / P``; the rest (3/4: 0.0375) goes to Sr, over ``K``
rounds times the ``P`` pairs' differences plus the ``C`` candidates' own Sr intervals, each at
``1 - (1 - screen_share) alpha / (K (P + C))`` (the intervals of jcexp/anytime.py: a paired delta-method interval
with pseudo-items, Bonferroni over the looks). Without per-document KL (``screen_share=0``, what the sweeper
passes when no candidate recorded any) all of alpha goes to Sr, as before the screen.

Pure: the enumeration, the race's decisions and the Pareto frontier use the standard library, numpy
(directly and through jcexp.anytime) and jcexp.metrics; no torch, no Hydra, no I/O. hydra_plugins/jcexp_budget
runs the rounds.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from jcexp import anytime, metrics, paired, verdicts

SCALE_BITS = 16  # one fp16/bf16 scale per group (compressed-tensors stores them in the model's 16-bit dtype)
DEFAULT_TCR_TOLERANCE = 0.02
DEFAULT_BITS_TOLERANCE = 0.25
SCREEN_SHARE = 0.25  # of the race's alpha, to the KL screen's one look; the rest to Sr (module docstring)
MIN_SCREEN_DOCUMENTS = 5  # fewer shared documents: the screen leaves the pair to Sr
KL_FLOOR = 1e-12  # nats/token: a document's KL of exactly 0 (identical predictions) has a finite log


# ------------------------------------------------------------------------------------------------ recipes
@dataclass(frozen=True)
class Recipe:
    """One point of the search space, as config-group choices and values."""

    pruner: str  # "none" when nothing is pruned
    sparsity: float  # percent; for an N:M mask, 100 N / M
    mask: str | None
    nm_layout: str
    quant: str  # "none" when nothing is quantized
    bits: int  # 16: not quantized
    group_size: int | None  # None: the quantizer's own default (model.group_size for GPTQ and RTN)
    case: str | None  # GPTQ after pruning (quant.case); None otherwise
    onepass: bool = False  # variant=onepass: pruning inside GPTQ's sweep

    @property
    def pruned(self) -> bool:
        return self.pruner != "none"

    @property
    def quantized(self) -> bool:
        return self.quant != "none"

    @property
    def tcr(self) -> float:
        return metrics.tcr(self.sparsity, self.bits)

    @property
    def name(self) -> str:
        if self.onepass:
            prune = f"one-pass {self.mask or f'{self.sparsity:g}%'}"
        elif self.pruned:
            layout = f" ({self.nm_layout})" if self.mask and self.nm_layout != "exact" else ""
            prune = f"{self.pruner} {self.mask or f'{self.sparsity:g}%'}{layout}"
        else:
            prune = ""
        quant = ""
        if self.quantized:
            quant = f"{self.quant} w{self.bits}"
            if self.group_size is not None:
                quant += f" g{self.group_size}"
            if self.case is not None and not self.onepass:
                quant += f" case {self.case}"
        return " + ".join(p for p in (prune, quant) if p) or "dense"

    def overrides(self) -> list[str]:
        """The command-line overrides that select this recipe (after any the user gave, so these win)."""
        if self.onepass:
            out = ["variant=onepass"]
        else:
            out = [f"pruner={self.pruner}", f"quant={self.quant}"]
        if self.pruned:
            if self.mask:
                out += [f"pruner.mask='{self.mask}'", f"pruner.nm_layout={self.nm_layout}"]
            else:
                out += ["pruner.mask=null", f"pruner.sparsity={self.sparsity:g}"]
        if self.quantized:
            out.append(f"quant.bits={self.bits}")
            if self.group_size is not None:
                out.append(f"quant.group_size={self.group_size}")
            if self.case is not None and not self.onepass:
                out.append(f"quant.case={self.case}")
        return out


def mask_bits(recipe: Recipe) -> float:
    """Bits per weight that storing the sparsity pattern costs (the paper's IV-B.4 figures)."""
    if not recipe.pruned:
        return 0.0
    if recipe.mask:
        n, m = (int(x) for x in recipe.mask.split(":"))
        return metrics.mask_overhead_bits(n, m)
    return metrics.mask_overhead_bits()


def bits_per_weight(recipe: Recipe, group_size: int | None, measured_overhead: float | None = None) -> float:
    """Bits per weight of the recipe's storage: the kept values, their scales (zero points for an asymmetric
    scheme are in ``measured_overhead`` when measured) and the mask. ``group_size``: the group the quantizer
    uses (None: per channel, whose scale costs next to nothing per weight). ``measured_overhead``: the scale
    and zero-point bits per weight read from the saved checkpoint (stored bits per weight minus the value
    bits), replacing the estimate 16 / group_size."""
    kept = 1 - recipe.sparsity / 100
    if not recipe.quantized:
        return metrics.REFERENCE_BITS * kept + mask_bits(recipe)
    overhead = measured_overhead
    if overhead is None:
        overhead = SCALE_BITS / group_size if group_size else 0.0
    return recipe.bits * kept + overhead + mask_bits(recipe)


def space_recipes(space: Mapping[str, Any]) -> list[Recipe]:
    """Every recipe the space's lists can express, before any band or config check (a dense recipe is not a
    compression and is left out). ``space``: BudgetSpace's fields."""
    prunings: list[tuple[str, float, str | None, str]] = [("none", 0.0, None, "exact")]
    for pruner in space["pruners"]:
        prunings += [(pruner, float(s), None, "exact") for s in space["sparsity"] if float(s) > 0]
        for mask, layout in itertools.product(space["masks"], space["nm_layouts"]):
            n, m = (int(x) for x in str(mask).split(":"))
            prunings.append((pruner, 100 * n / m, str(mask), layout))
    quants: list[tuple[str, int, int | None]] = [("none", 16, None)]
    quants += [
        (q, int(b), None if g is None else int(g))
        for q, b, g in itertools.product(space["quantizers"], space["bits"], space["group_sizes"])
        if int(b) < 16
    ]
    out: list[Recipe] = []
    for (pruner, sparsity, mask, layout), (quant, bits, group) in itertools.product(prunings, quants):
        if pruner == "none" and quant == "none":
            continue
        gptq_after_pruning = quant == "gptq" and pruner != "none"
        for case in space["cases"] if gptq_after_pruning else [None]:
            out.append(Recipe(pruner, sparsity, mask, layout, quant, bits, group, case))
        if gptq_after_pruning and space.get("onepass") and pruner == "sparsegpt":
            out.append(Recipe(pruner, sparsity, mask, layout, quant, bits, group, None, onepass=True))
    return list(dict.fromkeys(out))


def tolerance_for(tcr: float | None, tolerance: float | None) -> float:
    """The band's half-width: the user's, else 2 points of TCr or a quarter bit per weight."""
    if tolerance is not None:
        return float(tolerance)
    return DEFAULT_TCR_TOLERANCE if tcr is not None else DEFAULT_BITS_TOLERANCE


def near(value: float, target: float, tolerance: float) -> bool:
    return abs(value - target) <= tolerance + 1e-9


# ------------------------------------------------------------------------------------------------- screen
def t_coverage(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer ``df`` >= 1, in closed form (the finite sums of Abramowitz &
    Stegun 26.7.3/26.7.4): jcexp declares no scipy, and the screen needs the quantile at levels near 1 - 1e-4."""
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd
        total, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        inner = math.sin(theta) * math.cos(theta) * (1 + total) if df > 1 else 0.0
        return min(1.0, 2 / math.pi * (theta + inner))
    total, term = 1.0, 1.0
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return min(1.0, math.sin(theta) * total)


def t_quantile(level: float, df: int) -> float:
    """The two-sided quantile: the t with P(|T| <= t) = ``level`` (bisection on ``t_coverage``)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    lo, hi = 0.0, 1.0
    while t_coverage(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_coverage(mid, df) < level else (lo, mid)
        if hi - lo <= 1e-10 * hi:
            break
    return hi


FLIP_EXACT_UP_TO = 16  # documents: every one of the 2^n sign patterns; above, FLIP_DRAWS random ones
FLIP_DRAWS = 1 << 16


@functools.lru_cache(maxsize=8)
def _signs(n: int) -> np.ndarray:
    """Every pattern of n signs (2^n x n), or FLIP_DRAWS seeded random patterns when n > FLIP_EXACT_UP_TO."""
    if n <= FLIP_EXACT_UP_TO:
        return 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(float)
    return np.random.default_rng(n).choice([-1.0, 1.0], size=(FLIP_DRAWS, n))


def sign_flip_test(d: Sequence[float]) -> float:
    """The two-sided sign-flip (randomization) test of mean 0 for paired differences ``d``: the share of sign
    patterns whose |mean| reaches the observed one. Exact for any n under the null that each difference is as
    likely positive as negative (the two recipes' KLs exchangeable per document); the smallest p-value is
    2 / 2^n (0.25 on 3 documents), so differences all alike, whose t interval has width 0, cannot decide on
    few documents. Over FLIP_EXACT_UP_TO documents a Monte Carlo p-value, (1 + hits) / (1 + draws), still valid."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return 1.0
    observed = abs(float(d.sum()))
    tol = 1e-12 * max(1.0, observed)
    if n <= FLIP_EXACT_UP_TO:
        # Every pattern's sum as the outer sum of the two halves' pattern sums (2^h + 2^(n-h) products, not
        # 2^n x n: the race calls this for every pair).
        h = n // 2
        sums = np.add.outer(_signs(h) @ d[:h], _signs(n - h) @ d[h:]) if h else _signs(n) @ d
        return int((np.abs(sums) >= observed - tol).sum()) / 2**n
    hits = int((np.abs(_signs(n) @ d) >= observed - tol).sum())
    return (1 + hits) / (1 + FLIP_DRAWS)


def screen_interval(
    candidate: Mapping[Any, float], leader: Mapping[Any, float], level: float, margin: float = 0.0
) -> dict[str, Any]:
    """The screen's interval: (candidate's mean log per-document KL) - (the leader's), paired over the documents
    both have, Student's t with n - 1 degrees of freedom at ``level``; ``ratio`` and ``ratio_ci`` are its
    exponentials (the ratio of the geometric-mean KLs). ``above``: documents on which the candidate's log KL
    exceeds the leader's by more than log(1 + ``margin``); ``flip_p`` the sign-flip test of the differences less
    log(1 + margin) (``sign_flip_test``). ``apart``: the interval lies above log(1 + margin) and the sign-flip
    test is at ``1 - level`` or under (the screen's drop needs both: the t interval is approximate with few
    documents, the sign-flip test exact under its null and never decided by a collapsed interval). Values are
    nats/token per document."""
    docs = [d for d in candidate if d in leader]
    n = len(docs)
    out: dict[str, Any] = {"n": n, "point": None, "ci": None, "ratio": None, "ratio_ci": None, "level": level}
    out.update({"above": None, "flip_p": None, "apart": False})
    if n < 2:
        return out
    d = np.log(np.maximum([candidate[i] for i in docs], KL_FLOOR)) - np.log(
        np.maximum([leader[i] for i in docs], KL_FLOOR)
    )
    point, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(n)
    half = t_quantile(level, n - 1) * se
    ci = [point - half, point + half]
    floor = math.log1p(margin)
    above = int((d > floor).sum())
    flip_p = sign_flip_test(d - floor)
    return {
        **out,
        "point": point,
        "ci": ci,
        "ratio": math.exp(point),
        "ratio_ci": [math.exp(ci[0]), math.exp(ci[1])],
        "above": above,
        "flip_p": flip_p,
        "apart": ci[0] > floor and point > floor and flip_p <= 1 - level,
    }


# --------------------------------------------------------------------------------------------------- race
@dataclass
class Standing:
    """One candidate's state in the race."""

    name: str
    alive: bool = True
    rounds: int = 0  # rounds it was scored in
    items: int = 0  # items it was scored on (over tasks)
    sr: float | None = None
    sr_ci: list[float] | None = None
    versus: str | None = None  # the leader it was last compared with
    diff: float | None = None  # its Sr minus the leader's, at its last look
    diff_ci: list[float] | None = None
    dropped_round: int | None = None
    why: str | None = None  # why it was dropped (or failed)
    discordant: int | None = None  # items on which it and the leader disagree, at its last look
    # The KL screen (one look): its geometric-mean per-document KL (nats/token), the KL leader it was compared
    # with, the ratio of the two (exp of the mean log difference) with its interval, the documents, and, when
    # it was screened out, the round and why.
    kl: float | None = None
    kl_documents: int | None = None
    kl_versus: str | None = None
    kl_ratio: float | None = None
    kl_ratio_ci: list[float] | None = None
    kl_flip_p: float | None = None
    screened_round: int | None = None
    screen: str | None = None  # "screened out", "kept" or "not screened", with why in screen_why
    screen_why: str | None = None
    # When the race is over: "winner", "screened out", "dropped", "equivalent", "no claim" or "failed", and
    # the reason with the interval that decided it (or could not).
    verdict: str | None = None
    reason: str | None = None


@dataclass
class Race:
    """The race's decisions, look by look (``look``); ``names`` are the candidates, ``looks`` the rounds."""

    names: list[str]
    looks: int
    level: float = 0.95
    margin: float = verdicts.DEFAULT_MARGIN
    min_discordant: int = verdicts.MIN_DISCORDANT
    futility: bool = True  # stop, not separated, once the remaining items could not decide (``_decidable``)
    screen_share: float = SCREEN_SHARE  # of alpha, to the KL screen; 0: no screen, all of alpha to Sr
    screen_margin: float = 0.0  # screened out only when its KL is shown above (1 + this) x the KL leader's
    min_screen_documents: int = MIN_SCREEN_DOCUMENTS
    screened: bool = False  # the screen has read the KL (it reads it once)
    standings: dict[str, Standing] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    outcome: str | None = None  # "winner", "equivalent", "not separated", "none left"
    leader: str | None = None

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError("candidate names must be unique")
        if not self.names:
            raise ValueError("a race needs at least one candidate")
        self.standings = self.standings or {n: Standing(n) for n in self.names}
        # The floor is never below the claims' own (jcexp/verdicts.py); a user may ask for more.
        self.min_discordant = max(int(self.min_discordant), verdicts.MIN_DISCORDANT)
        if not 0 <= self.screen_share < 1:
            raise ValueError(f"screen_share must be in [0, 1), got {self.screen_share}")
        if self.screen_margin < 0:
            raise ValueError(f"screen_margin must be >= 0, got {self.screen_margin}")

    @property
    def pairs(self) -> int:
        return max(1, len(self.names) * (len(self.names) - 1) // 2)

    @property
    def intervals(self) -> int:
        """Every Sr interval the race may read: each look of each pair's difference and of each candidate's Sr."""
        return self.looks * (self.pairs + len(self.names))

    @property
    def screen_intervals(self) -> int:
        """The KL screen's intervals: one look at every pair (0 without a screen)."""
        return self.pairs if self.screen_share > 0 else 0

    @property
    def sr_alpha(self) -> float:
        return (1 - self.level) * (1 - self.screen_share)

    @property
    def difference_level(self) -> float:
        """Each Sr difference interval's level: Sr's share of alpha split (Bonferroni) over ``intervals``."""
        return anytime.look_level(1 - self.sr_alpha, self.intervals)

    @property
    def sr_level(self) -> float:
        """Each candidate's Sr interval's level: the same split as the differences' (one error budget)."""
        return anytime.look_level(1 - self.sr_alpha, self.intervals)

    @property
    def screen_level(self) -> float | None:
        """Each KL screen interval's (and sign-flip test's) level: the screen's share of alpha over the pairs."""
        if self.screen_share == 0:
            return None
        return anytime.look_level(1 - (1 - self.level) * self.screen_share, self.screen_intervals)

    @property
    def alive(self) -> list[str]:
        return [n for n in self.names if self.standings[n].alive]

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def fail(self, name: str, round_: int, cause: str) -> None:
        """A candidate whose job failed leaves the race (its failure is recorded by the launcher)."""
        s = self.standings[name]
        s.alive, s.dropped_round, s.why = False, round_, f"failed: {cause}"

    def look(
        self,
        round_: int,
        dense: anytime.TaskItems,
        models: Mapping[str, anytime.TaskItems],
        tasks: Sequence[str],
        kl: Mapping[str, Mapping[Any, float]] | None = None,
    ) -> dict[str, Any]:
        """Round ``round_`` (1-based) is scored: ``models[name]`` holds each live candidate's items so far,
        ``dense`` the dense model's; ``kl[name]``, when given, each candidate's per-document KL(dense ||
        candidate) in nats/token (document id -> value). The first round given ``kl`` screens on it
        (``_screen``); then the Sr looks among the candidates kept. Updates the standings, drops what the
        evidence separates, and decides whether the race is over. Returns the round's record."""
        if self.done:
            raise ValueError(f"the race is over ({self.outcome})")
        if not 1 <= round_ <= self.looks:
            raise ValueError(f"round {round_} is outside 1..{self.looks}: the spending covers {self.looks}")
        for name in list(self.alive):
            if name not in models:
                self.fail(name, round_, "no items")
        screened_out: dict[str, str] = {}
        for name in self.alive:  # the screened-out candidates' Sr on the items they were scored on
            s = self.standings[name]
            got = anytime.delta_interval([dense, models[name]], tasks, anytime.retention(), self.sr_level)
            s.rounds, s.items = round_, sum(got["n"].values())
            s.sr, s.sr_ci = got["point"], got["ci"]
        if kl is not None and self.screen_share > 0 and not self.screened:
            screened_out = self._screen(round_, kl)
        live = self.alive
        ranked = sorted(
            (n for n in live if self.standings[n].sr is not None), key=lambda n: -self.standings[n].sr
        )
        record: dict[str, Any] = {"round": round_, "alive": list(live), "dropped": {}, "leader": None}
        if screened_out:
            record["screened_out"] = screened_out
        if not ranked:
            self.outcome = "undefined"
            record["stop"] = "Sr is undefined for every candidate (e.g. a dense task mean of 0)"
            self.rounds.append(record)
            return record
        leader = self.leader = record["leader"] = ranked[0]
        inside_margin, open_question = True, False
        for name in live:
            if name == leader:
                continue
            s = self.standings[name]
            aligned = anytime.align([dense, models[name], models[leader]], tasks)
            d = anytime.delta_interval_aligned(aligned, anytime.difference(), self.difference_level)
            # The floor counts the items on which the candidate and the leader disagree, not those on which
            # either differs from the dense model (a candidate identical to the leader counts 0).
            disagree = paired.discordant(aligned, [(1, 2)])
            s.versus, s.diff, s.diff_ci, s.discordant = leader, d["point"], d["ci"], disagree
            if d["ci"] is None:
                inside_margin, open_question = False, True
                continue
            floor_met = verdicts.below_floor(disagree, self.min_discordant) is None
            if d["ci"][1] < 0 and floor_met:
                s.alive, s.dropped_round = False, round_
                s.why = f"below {leader} at round {round_}: Sr difference {verdicts.points(d['ci'])}"
                record["dropped"][name] = s.why
                continue
            if not (floor_met and verdicts.inside(d["ci"], self.margin)):
                inside_margin = False
            if floor_met:
                open_question |= self._decidable(d, round_)
            else:
                # Below the floor the interval is mostly the pseudo-items', and projecting it to all the items
                # understates what they could decide. The question stays open for the first half of the looks,
                # and after that while the disagreements, projected to all the items, would reach the floor
                # (two candidates that answer alike cannot: without this they ran every round).
                projected = disagree * self.looks / round_
                open_question |= round_ < self.looks / 2 or projected >= self.min_discordant
        lead = self.standings[leader]
        lead.versus = lead.diff = lead.diff_ci = lead.discordant = None
        left = self.alive
        if len(left) == 1:
            self.outcome, record["stop"] = "winner", "one candidate left"
        elif inside_margin:
            self.outcome = "equivalent"
            record["stop"] = f"every survivor within {verdicts.margin_text(self.margin)} of {leader}"
        elif round_ == self.looks:
            self.outcome, record["stop"] = "not separated", "items exhausted"
        elif self.futility and not open_question:
            self.outcome = "not separated"
            record["stop"] = (
                "futile: with every item, no survivor's difference from the leader would be resolved "
                "(each observed difference is under half the half-width all the items could reach) and "
                f"none could come within {verdicts.margin_text(self.margin)}, or the two would still disagree "
                f"on fewer than {self.min_discordant} items"
            )
        if self.done:
            self._conclude()
        self.rounds.append(record)
        return record

    def _screen(self, round_: int, kl: Mapping[str, Mapping[Any, float]]) -> dict[str, str]:
        """The KL screen's one look: every live candidate with per-document KL against the KL leader (the lowest
        mean log KL); those whose interval lies above log(1 + screen_margin), with the sign-flip test agreeing, are
        screened out (a claim about KL). Candidates without KL, or with fewer than ``min_screen_documents``
        documents shared with the leader, are not screened. Returns {name: why} of those screened out."""
        self.screened = True
        level = self.screen_level
        assert level is not None
        have = {n: kl[n] for n in self.alive if kl.get(n)}
        for name in self.alive:
            if name not in have:
                s = self.standings[name]
                s.screen, s.screen_why = "not screened", "no per-document KL"
        if not have:
            return {}
        mean_log = {
            n: float(np.mean(np.log(np.maximum(list(v.values()), KL_FLOOR)))) for n, v in have.items()
        }
        best = min(have, key=lambda n: mean_log[n])
        out: dict[str, str] = {}
        for name in have:
            s = self.standings[name]
            s.kl, s.kl_documents = math.exp(mean_log[name]), len(have[name])
            if name == best:
                s.screen, s.screen_why = "kept", "the KL leader (lowest geometric-mean KL to dense)"
                continue
            got = screen_interval(have[name], have[best], level, self.screen_margin)
            s.kl_versus, s.kl_ratio, s.kl_ratio_ci = best, got["ratio"], got["ratio_ci"]
            s.kl_flip_p = got["flip_p"]
            s.kl_documents = got["n"]
            if got["n"] < self.min_screen_documents:
                s.screen = "not screened"
                s.screen_why = f"only {got['n']} documents shared with {best} (the screen needs {self.min_screen_documents})"
                continue
            text = (
                f"KL to dense {_ratio(got['ratio_ci'])} x {best}'s on {got['n']} documents "
                f"(t, df {got['n'] - 1}, level {level:.6f}; sign-flip test p {got['flip_p']:.2g}, {got['above']} of "
                f"{got['n']} documents above)"
            )
            if got["apart"]:
                s.alive, s.screened_round = False, round_
                s.screen = "screened out"
                s.screen_why = s.why = f"screened out by KL at round {round_}: {text}"
                out[name] = s.why
            else:
                s.screen, s.screen_why = "kept", f"not separated from {best} by KL: {text}"
        return out

    def _conclude(self) -> None:
        """Each candidate's verdict once the race is over: what was claimed about it, and from which interval."""
        margin = verdicts.margin_text(self.margin)
        for s in self.standings.values():
            if s.why and s.why.startswith("failed"):
                s.verdict, s.reason = "failed", s.why
            elif s.screen == "screened out":
                s.verdict, s.reason = "screened out", s.screen_why
            elif not s.alive:
                s.verdict, s.reason = "dropped", s.why
            elif self.outcome == "winner":
                s.verdict = "winner"
                s.reason = "every other candidate was screened out by KL (farther from dense), dropped on Sr or failed"
            elif s.name == self.leader:
                if self.outcome == "equivalent":
                    s.verdict = "equivalent"
                    s.reason = f"the highest point estimate; every other survivor is within {margin} of it"
                else:
                    s.verdict = "no claim"
                    s.reason = (
                        "the highest point estimate only: the intervals do not separate it from the other "
                        "survivors (it is not the race's choice)"
                    )
            elif s.diff_ci is None:
                s.verdict, s.reason = "no claim", "its difference from the leader is undefined"
            else:
                interval = f"Sr difference from {s.versus} {verdicts.points(s.diff_ci)}"
                floor = verdicts.below_floor(s.discordant, self.min_discordant)
                if floor is None and verdicts.inside(s.diff_ci, self.margin):
                    s.verdict, s.reason = "equivalent", f"{interval}, inside {margin}"
                else:
                    s.verdict = "no claim"
                    s.reason = f"{interval}: " + (floor or f"neither below 0 nor inside {margin}")

    def _decidable(self, d: dict[str, Any], round_: int) -> bool:
        """Could the rest of the items still decide this survivor against the leader? Every look's interval is
        at the same level, and the rounds hand out items in proportion to the tasks' sizes, so with all items
        its half-width would be about the current one divided by sqrt(looks / round). The question stays open while the observed difference is at least half that
        final half-width (a drop is within reach) or the difference could still fit inside ±margin. Stopping
        when no question is open makes no claim, so the intervals stay valid; it only gives up power that the
        remaining items would hardly have bought."""
        if round_ >= self.looks:
            return True
        final = d["half_width"] / math.sqrt(self.looks / round_)
        return abs(d["point"]) >= final / 2 or abs(d["point"]) + final <= self.margin

    @property
    def winner(self) -> str | None:
        return self.alive[0] if self.outcome == "winner" else None

    @property
    def unseparated(self) -> list[str]:
        """The survivors when no winner is named (equivalent, or not separated when the items ran out)."""
        return self.alive if self.outcome in ("equivalent", "not separated") else []

    @property
    def screened_out(self) -> list[str]:
        return [n for n in self.names if self.standings[n].screen == "screened out"]

    @property
    def claim(self) -> str | None:
        """What the race concludes, in words: a winner, a set shown equivalent, or None (no claim)."""
        if self.outcome == "winner":
            if self.screened_out:
                return (
                    f"{self.winner} keeps the most among the candidates the KL screen kept (every other one was "
                    f"dropped on Sr); screened out as farther from dense in KL: {', '.join(self.screened_out)}"
                )
            return f"{self.winner} keeps the most (every other candidate was separated from it)"
        if self.outcome == "equivalent":
            return (
                f"{', '.join(self.alive)} are equivalent within {verdicts.margin_text(self.margin)} "
                f"(each survivor's interval against {self.leader} lies inside it)"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        if self.done:
            self._conclude()  # also after an outcome set from outside (the sweeper's "none left")
        return {
            "looks": self.looks,
            "level": self.level,
            "difference_level": self.difference_level,
            "sr_level": self.sr_level,
            "margin": self.margin,
            "min_discordant": self.min_discordant,
            "futility": self.futility,
            "outcome": self.outcome,
            "winner": self.winner,
            "unseparated": self.unseparated,
            "claim": self.claim,
            "leader": self.leader,
            "intervals": self.intervals,
            "screen_share": self.screen_share,
            "screen_level": self.screen_level,
            "screen_intervals": self.screen_intervals,
            "screen_margin": self.screen_margin,
            "screened": self.screened,
            "screened_out": self.screened_out,
            "standings": {n: asdict(s) for n, s in self.standings.items()},
            "rounds": self.rounds,
            "method": self.method,
        }

    @property
    def method(self) -> str:
        alpha = 1 - self.level
        sr = (
            f"Sr: {anytime.METHOD}, {self.sr_alpha:.4g} of it over {self.intervals} intervals ({self.looks} rounds "
            f"x ({self.pairs} pairs' differences + {len(self.names)} candidates' Sr))"
        )
        if not self.screen_share:
            return f"one error budget of {alpha:.2g} split (Bonferroni); no KL screen; {sr}"
        return (
            f"one error budget of {alpha:.2g} split (Bonferroni): KL screen {alpha * self.screen_share:.4g} over "
            f"{self.screen_intervals} intervals (one look at {self.pairs} pairs: paired mean log per-document KL, "
            f"Student t with documents - 1 df, and the sign-flip test); {sr}"
        )


def _ratio(ci: Sequence[float] | None) -> str:
    return "n/a" if not ci else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


# -------------------------------------------------------------------------------------------------- pareto
def pareto(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """The names on the frontier of (bits per weight, Sr): no other point has fewer or equal bits and a higher
    or equal Sr with one of them strict. Sorted by bits per weight."""
    front = []
    for name, (bits, sr) in points.items():
        if any(
            (b <= bits and s >= sr) and (b < bits or s > sr)
            for other, (b, s) in points.items()
            if other != name and not (math.isnan(b) or math.isnan(s))
        ):
            continue
        front.append(name)
    return sorted(front, key=lambda n: (points[n][0], -points[n][1]))
