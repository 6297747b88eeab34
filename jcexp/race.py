"""The budget race: which compression recipe keeps the most at a target size, without running the whole grid.

Users ask one question of the paper's metric: at this size (a TCr, eq. 1, or bits per weight), which recipe keeps
the most? The grid answers it by compressing every candidate and scoring each on every item. The race scores
the candidates round by round on the same seeded items (the order sequential evaluation uses,
jcexp/sequential.py) and drops a candidate as soon as the evidence says it is worse than the current leader.

The intervals are the anytime ones of jcexp/anytime.py: a paired delta-method interval with Bonferroni spending
over a number of looks fixed in advance. Here the family is every interval the race could read, with one error
budget ``alpha = 1 - level`` split over all of them: ``K`` rounds times the ``C (C - 1) / 2`` pairs of ``C``
candidates for the differences (the leader is chosen by the data, so every pair counts), and ``K`` times ``C``
for each candidate's own Sr; each of the ``K (P + C)`` intervals is at ``1 - alpha / (K (P + C))``, so the
differences get the share ``P / (P + C)`` of alpha and the Sr intervals ``C / (P + C)`` (before issue 26 each
family had all of alpha, a joint level of 90%). By the union bound all of them cover together with probability
at least ``level``, so dropping at any round, and the final statements, are valid however the race ran. A
candidate is dropped once the interval of (its Sr - the leader's Sr) lies entirely below 0 and the two disagree
on at least ``min_discordant`` items (never fewer than jcexp/verdicts.py's ``MIN_DISCORDANT``; only items on
which the candidate and the leader disagree count). The race stops when one candidate is left (a winner), when
every survivor's interval against the leader lies inside ±margin with the floor met (a claim of equivalence: the
survivors keep as much as each other within the margin, and no winner is named), or when the items run out (no
claim for the survivors not shown equivalent). Every candidate's record says which of these it got: dropped
(with the interval), winner, equivalent (with the interval), or no claim (with the interval that could not
decide and why); an undecided race's leader is only the highest point estimate, never its choice. It also stops, not separated, when the remaining items could not decide: every survivor's
observed difference from the leader is under half the half-width that all the items could reach, and none could
come within the margin (futility). A stop without a claim cannot make any interval wrong, so the futility stop
keeps the family-wise guarantee; it gives up power that the remaining items would hardly have bought.

Pure: the enumeration, the race's decisions and the Pareto frontier use the standard library, numpy (through
jcexp.anytime) and jcexp.metrics; no torch, no Hydra, no I/O. hydra_plugins/jcexp_budget runs the rounds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jcexp import anytime, metrics, verdicts

SCALE_BITS = 16  # one fp16/bf16 scale per group (compressed-tensors stores them in the model's 16-bit dtype)
DEFAULT_TCR_TOLERANCE = 0.02
DEFAULT_BITS_TOLERANCE = 0.25


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
    # When the race is over: "winner", "dropped", "equivalent", "no claim" or "failed", and the reason with the
    # interval that decided it (or could not).
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

    @property
    def pairs(self) -> int:
        return max(1, len(self.names) * (len(self.names) - 1) // 2)

    @property
    def intervals(self) -> int:
        """Every interval the race may read: each look of each pair's difference and of each candidate's Sr."""
        return self.looks * (self.pairs + len(self.names))

    @property
    def difference_level(self) -> float:
        """Each difference interval's level: one Bonferroni split of ``1 - level`` over ``intervals``."""
        return anytime.look_level(self.level, self.intervals)

    @property
    def sr_level(self) -> float:
        """Each candidate's Sr interval's level: the same split as the differences' (one error budget)."""
        return anytime.look_level(self.level, self.intervals)

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
    ) -> dict[str, Any]:
        """Round ``round_`` (1-based) is scored: ``models[name]`` holds each live candidate's items so far,
        ``dense`` the dense model's. Updates the standings, drops what the evidence separates, and decides
        whether the race is over. Returns the round's record."""
        if self.done:
            raise ValueError(f"the race is over ({self.outcome})")
        if not 1 <= round_ <= self.looks:
            raise ValueError(f"round {round_} is outside 1..{self.looks}: the spending covers {self.looks}")
        for name in list(self.alive):
            if name not in models:
                self.fail(name, round_, "no items")
        live = self.alive
        for name in live:
            s = self.standings[name]
            got = anytime.delta_interval([dense, models[name]], tasks, anytime.retention(), self.sr_level)
            s.rounds, s.items = round_, sum(got["n"].values())
            s.sr, s.sr_ci = got["point"], got["ci"]
        ranked = sorted(
            (n for n in live if self.standings[n].sr is not None), key=lambda n: -self.standings[n].sr
        )
        record: dict[str, Any] = {"round": round_, "alive": list(live), "dropped": {}, "leader": None}
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
            disagree = sum(int((a[1] != a[2]).sum()) for a in aligned.values())
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

    def _conclude(self) -> None:
        """Each candidate's verdict once the race is over: what was claimed about it, and from which interval."""
        margin = verdicts.margin_text(self.margin)
        for s in self.standings.values():
            if s.why and s.why.startswith("failed"):
                s.verdict, s.reason = "failed", s.why
            elif not s.alive:
                s.verdict, s.reason = "dropped", s.why
            elif self.outcome == "winner":
                s.verdict, s.reason = "winner", "every other candidate was dropped or failed"
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
    def claim(self) -> str | None:
        """What the race concludes, in words: a winner, a set shown equivalent, or None (no claim)."""
        if self.outcome == "winner":
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
            "standings": {n: asdict(s) for n, s in self.standings.items()},
            "rounds": self.rounds,
            "method": (
                f"{anytime.METHOD}; one error budget of {1 - self.level:.2g} split (Bonferroni) over "
                f"{self.intervals} intervals: {self.looks} rounds x ({self.pairs} pairs' differences + "
                f"{len(self.names)} candidates' Sr)"
            ),
        }


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
