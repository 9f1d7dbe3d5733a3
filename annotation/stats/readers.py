"""Reader-study statistics for real-vs-synthetic reads: one module for the dashboard, the API and the CLI.

Positive class = synthetic: sensitivity is "synthetic called synthetic", specificity "real called real".
Every proportion carries a Wilson 95% interval without continuity correction. A value that cannot be computed is
``None`` with a ``reason`` next to it, never NaN, so ``reader_report`` is always valid strict JSON.

The closed-form definitions (Wilson, Cohen/weighted kappa, Fleiss, Krippendorff, AUC) are written out here in numpy
rather than called from scikit-learn / statsmodels / krippendorff: those formulas are a few lines each, the
libraries signal undefined values with warnings and NaN that we would have to trap anyway, scikit-learn and
statsmodels add about a second of import time to every process that shows a dashboard, and the tests can then
compare every number with the library references as an independent check. Exact binomial p-values come from
scipy, the reference itself.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

REAL, SYNTHETIC = "real", "synthetic"
CALLS = (REAL, SYNTHETIC)
CONFIDENCE_RANGE = (1, 5)  # the reader form's scale (annotation/answers.py asks for 1..5)
DEFAULT_MARGIN = 0.10
ALPHA = 0.05
Z95 = float(sps.norm.isf(ALPHA / 2))
UNSPECIFIED_VERSION = "unspecified"
IDENTICAL = "all answers identical: agreement expected by chance is total"

Stat = dict[str, Any]


@dataclass(frozen=True)
class Read:
    """One realism read. ``repeat_of`` marks a deliberate re-read of the same case by the same reader."""

    case_id: str
    reader: str
    truth: str
    call: str
    confidence: int | None = None
    model_version: str | None = None
    is_catch: bool = False
    repeat_of: str | None = None

    def __post_init__(self):
        for name in ("truth", "call"):
            if getattr(self, name) not in CALLS:
                raise ValueError(f"{name} must be 'real' or 'synthetic', got {getattr(self, name)!r}")
        if self.confidence is not None and self.confidence < 1:
            raise ValueError(f"confidence must be a positive integer, got {self.confidence!r}")


@dataclass(frozen=True)
class RubricRead:
    """One rubric read: an integer score per criterion (ordinal scale)."""

    case_id: str
    reader: str
    scores: dict[str, int]


@dataclass(frozen=True)
class CatchRule:
    """Readers whose catch-trial accuracy is below ``min_accuracy`` (after at least ``min_trials`` catch trials)
    are flagged; with ``action="exclude"`` their reads are also left out of every pooled statistic."""

    min_accuracy: float = 0.8
    action: Literal["flag", "exclude"] = "flag"
    min_trials: int = 1

    def __post_init__(self):
        if not 0 <= self.min_accuracy <= 1:
            raise ValueError("min_accuracy must lie in [0, 1]")
        if self.action not in ("flag", "exclude"):
            raise ValueError("action must be 'flag' or 'exclude'")
        if self.min_trials < 1:
            raise ValueError("min_trials must be at least 1")


# --- proportions and tests ---------------------------------------------------------------------------------------


def undefined(reason: str) -> Stat:
    return {"value": None, "ci_low": None, "ci_high": None, "reason": reason}


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval without continuity correction (statsmodels ``proportion_confint(method="wilson")``)."""
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def proportion(k: int, n: int, reason: str) -> Stat:
    """k/n with its Wilson 95% interval; ``reason`` explains the null when n == 0."""
    if n == 0:
        return undefined(reason)
    low, high = wilson_interval(k, n)
    return {"value": k / n, "ci_low": low, "ci_high": high}


def binomial_p(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test (scipy's ``binomtest``, which sums outcomes no likelier than the observed)."""
    return float(sps.binomtest(k, n, p).pvalue)


def tost(k: int, n: int, *, margin: float = DEFAULT_MARGIN, alpha: float = ALPHA) -> dict[str, Any]:
    """Equivalence of accuracy to chance: two one-sided exact binomial tests against 0.5 - margin and 0.5 + margin.
    ``indistinguishable`` when both reject, i.e. when the larger p-value is below alpha."""
    if n == 0:
        return {
            "margin": margin,
            "p": None,
            "p_lower": None,
            "p_upper": None,
            "indistinguishable": None,
            "alpha": alpha,
            "reason": "no reads",
        }
    p_lower = float(sps.binomtest(k, n, 0.5 - margin, alternative="greater").pvalue)
    p_upper = float(sps.binomtest(k, n, 0.5 + margin, alternative="less").pvalue)
    p = max(p_lower, p_upper)
    return {
        "margin": margin,
        "p": p,
        "p_lower": p_lower,
        "p_upper": p_upper,
        "indistinguishable": bool(p < alpha),
        "alpha": alpha,
    }


def auc(reads: Sequence[Read]) -> Stat:
    """ROC AUC of the reads scored +confidence when called synthetic and -confidence when called real (confidence 1
    when missing). Computed as the Mann-Whitney U with mid-ranks, which equals scikit-learn's ``roc_auc_score``
    including its half credit for ties."""
    positive = np.array([r.truth == SYNTHETIC for r in reads], dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        reason = "no reads" if not reads else f"only {REAL if n_pos == 0 else SYNTHETIC} cases"
        return {"value": None, "n": len(reads), "reason": reason}
    score = [
        (1 if r.call == SYNTHETIC else -1) * (1 if r.confidence is None else r.confidence) for r in reads
    ]
    ranks = sps.rankdata(score)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return {"value": float(u / (n_pos * n_neg)), "n": len(reads)}


def binary_summary(reads: Sequence[Read], *, margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, PPV, NPV (Wilson CIs), binomial test vs 0.5, TOST and AUC."""
    truth = np.array([r.truth == SYNTHETIC for r in reads], dtype=bool)
    call = np.array([r.call == SYNTHETIC for r in reads], dtype=bool)
    tp, tn = int((truth & call).sum()), int((~truth & ~call).sum())
    n, correct = len(reads), tp + tn
    out: dict[str, Any] = {
        "n": n,
        "accuracy": proportion(correct, n, "no reads"),
        "sensitivity": proportion(tp, int(truth.sum()), "no synthetic cases"),
        "specificity": proportion(tn, int((~truth).sum()), "no real cases"),
        "ppv": proportion(tp, int(call.sum()), "no synthetic calls"),
        "npv": proportion(tn, int((~call).sum()), "no real calls"),
        "binomial_p": binomial_p(correct, n) if n else None,
    }
    if not n:
        out["binomial_p_reason"] = "no reads"
    out["tost"] = tost(correct, n, margin=margin)
    out["auc"] = auc(reads)
    return out


def fooling_rate(reads: Iterable[Read]) -> dict[str, Stat]:
    """Per model version: share of synthetic reads called real, with its Wilson CI."""
    by_version: dict[str, list[Read]] = defaultdict(list)
    for r in reads:
        if r.truth == SYNTHETIC:
            by_version[r.model_version or UNSPECIFIED_VERSION].append(r)
    return {
        version: {"n": len(rs), **proportion(sum(r.call == REAL for r in rs), len(rs), "no synthetic reads")}
        for version, rs in sorted(by_version.items())
    }


# --- agreement ---------------------------------------------------------------------------------------------------


def kappa(
    a: Sequence[Any], b: Sequence[Any], *, values: Sequence[Any], quadratic: bool = False
) -> float | None:
    """Cohen's kappa as scikit-learn defines it: 1 - sum(w * observed) / sum(w * expected), with 0/1 weights, or
    quadratic weights (value difference squared, i.e. sklearn's with ``labels`` = the full integer scale).
    ``None`` when chance agreement is total (every answer in one category)."""
    index = {v: i for i, v in enumerate(values)}
    observed = np.zeros((len(values), len(values)))
    for x, y in zip(a, b, strict=True):
        observed[index[x], index[y]] += 1
    if observed.sum() == 0:
        return None
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    v = np.asarray(values if quadratic else range(len(values)), dtype=float)
    weights = (v[:, None] - v[None, :]) ** 2 if quadratic else (v[:, None] != v[None, :]).astype(float)
    chance = float((weights * expected).sum())
    return None if chance == 0 else 1 - float((weights * observed).sum()) / chance


def _kappa_stat(
    a: Sequence, b: Sequence, *, values: Sequence, quadratic=False, empty="no cases in common"
) -> Stat:
    if not a:
        return {"value": None, "n": 0, "reason": empty}
    value = kappa(a, b, values=values, quadratic=quadratic)
    return (
        {"value": value, "n": len(a)}
        if value is not None
        else {"value": None, "n": len(a), "reason": IDENTICAL}
    )


def pair_key(a: str, b: str) -> str:
    return f"{a}|{b}"


def _pairwise_kappa(by_reader: dict[str, dict[str, Any]], **kappa_args: Any) -> dict[str, Stat]:
    out = {}
    for a, b in itertools.combinations(sorted(by_reader), 2):
        common = sorted(by_reader[a].keys() & by_reader[b].keys())
        answers_a, answers_b = [by_reader[a][c] for c in common], [by_reader[b][c] for c in common]
        out[pair_key(a, b)] = _kappa_stat(answers_a, answers_b, **kappa_args)
    return out


def cohen_pairs(reads: Iterable[Read], readers: Sequence[str]) -> dict[str, Stat]:
    """Cohen's kappa on the calls of each pair of readers, over the cases both of them read."""
    calls: dict[str, dict[str, str]] = {name: {} for name in readers}
    for r in reads:
        calls[r.reader][r.case_id] = r.call
    return _pairwise_kappa(calls, values=CALLS)


def fleiss_kappa(reads: Sequence[Read], readers: Sequence[str]) -> Stat:
    """Fleiss' kappa over all readers (statsmodels ``fleiss_kappa(method="fleiss")``).

    Rule: Fleiss needs the same number of reads on every case. When every case has the same number m >= 2 of reads
    all cases are used (the readers may differ between cases); otherwise only the cases read by every reader are."""
    if len(readers) < 2:
        return {"value": None, "n_cases": 0, "reason": "fewer than two readers"}
    calls_by_case: dict[str, list[str]] = defaultdict(list)
    for r in reads:
        calls_by_case[r.case_id].append(r.call)
    counts = {len(c) for c in calls_by_case.values()}
    if len(counts) == 1 and counts != {1}:
        note = f"all {len(calls_by_case)} cases have {counts.pop()} reads each"
        cases = list(calls_by_case.values())
    else:
        cases = [c for c in calls_by_case.values() if len(c) == len(readers)]
        note = (
            f"cases have unequal numbers of reads; only the {len(cases)} of {len(calls_by_case)} cases read by "
            f"all {len(readers)} readers are used"
        )
    if not cases:
        return {"value": None, "n_cases": 0, "note": note, "reason": "no case was read by every reader"}
    table = np.array([[c.count(v) for v in CALLS] for c in cases], dtype=float)
    m = table.sum(axis=1).max()
    p_cat = table.sum(axis=0) / table.sum()
    chance = float((p_cat**2).sum())
    if (table.sum(axis=0) == table.sum()).any():
        return {"value": None, "n_cases": len(cases), "note": note, "reason": IDENTICAL}
    agreement = float((((table**2).sum(axis=1) - m) / (m * (m - 1))).mean())
    return {"value": (agreement - chance) / (1 - chance), "n_cases": len(cases), "note": note}


def krippendorff_alpha_ordinal(units: Iterable[Sequence[int]]) -> float | None:
    """Krippendorff's alpha with the ordinal metric (the ``krippendorff`` package, ``level_of_measurement="ordinal"``).
    ``units`` holds the scores each case received; cases with fewer than two scores carry no pairs.
    ``None`` when nothing is pairable or the pairable scores do not vary."""
    units = [list(u) for u in units]
    domain = sorted({v for u in units for v in u})
    index = {v: i for i, v in enumerate(domain)}
    o = np.zeros((len(domain), len(domain)))
    for u in units:
        if len(u) < 2:
            continue
        counts = np.bincount([index[v] for v in u], minlength=len(domain)).astype(float)
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(u) - 1)
    n_v = o.sum(axis=0)
    if n_v.sum() < 2:
        return None
    e = (np.outer(n_v, n_v) - np.diag(n_v)) / (n_v.sum() - 1)
    cum = np.concatenate([[0.0], np.cumsum(n_v)])
    idx = np.arange(len(domain))
    i, j = np.minimum.outer(idx, idx), np.maximum.outer(idx, idx)
    d = (cum[j + 1] - cum[i] - (n_v[i] + n_v[j]) / 2) ** 2
    expected = float((e * d).sum())
    return None if expected == 0 else 1 - float((o * d).sum()) / expected


def _alpha_stat(units: dict[str, list[int]], n_readers: int) -> Stat:
    n_pairable = sum(len(u) >= 2 for u in units.values())
    if n_readers < 2:
        return {"value": None, "n_cases": n_pairable, "reason": "fewer than two readers"}
    if n_pairable == 0:
        return {"value": None, "n_cases": 0, "reason": "no case was scored by two readers"}
    value = krippendorff_alpha_ordinal(units.values())
    if value is None:
        return {
            "value": None,
            "n_cases": n_pairable,
            "reason": "scores of cases scored twice or more do not vary",
        }
    return {"value": value, "n_cases": n_pairable}


def rubric_agreement(rubric_reads: Iterable[RubricRead], *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """Per criterion: quadratic-weighted kappa for each pair of readers and Krippendorff's ordinal alpha over all.
    A reader's first score for a case counts; later ones are ignored."""
    skip = set(exclude)
    # criterion -> reader -> case -> score
    scores: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for rr in rubric_reads:
        if rr.reader not in skip:
            for criterion, score in rr.scores.items():
                scores[criterion][rr.reader].setdefault(rr.case_id, int(score))
    out = {}
    for criterion, by_reader in sorted(scores.items()):
        every = [v for s in by_reader.values() for v in s.values()]
        units: dict[str, list[int]] = defaultdict(list)
        for s in by_reader.values():
            for case, score in s.items():
                units[case].append(score)
        out[criterion] = {
            # The full integer scale makes the quadratic weights (score difference)^2 even when a score is unused.
            "weighted_kappa": _pairwise_kappa(
                by_reader, values=range(min(every), max(every) + 1), quadratic=True
            ),
            "krippendorff_alpha": _alpha_stat(units, len(by_reader)),
        }
    return out


def split_repeats(reads: Iterable[Read]) -> tuple[list[Read], list[tuple[Read, Read]]]:
    """The first read of each (reader, case) (one without ``repeat_of`` if any) and (first, repeat) pairs for the
    others. Only first reads enter accuracy and inter-reader agreement, so a repeated case is not counted twice."""
    groups: dict[tuple[str, str], list[Read]] = defaultdict(list)
    for r in reads:
        groups[(r.reader, r.case_id)].append(r)
    first_reads, pairs = [], []
    for group in groups.values():
        first = next((r for r in group if r.repeat_of is None), group[0])
        first_reads.append(first)
        pairs.extend((first, r) for r in group if r is not first)
    return first_reads, pairs


def intra_reader(
    pairs: Sequence[tuple[Read, Read]], readers: Sequence[str], *, exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """Per reader and pooled (over readers not in ``exclude``): percent agreement (Wilson CI) and Cohen's kappa
    between first and repeat calls."""
    skip = set(exclude)

    def summary(ps: Sequence[tuple[Read, Read]]) -> dict[str, Any]:
        same = sum(a.call == b.call for a, b in ps)
        first, again = [a.call for a, _ in ps], [b.call for _, b in ps]
        return {
            "n_pairs": len(ps),
            "agreement": proportion(same, len(ps), "no repeated cases"),
            "kappa": _kappa_stat(first, again, values=CALLS, empty="no repeated cases"),
        }

    return {
        "readers": {name: summary([p for p in pairs if p[0].reader == name]) for name in readers},
        "pooled": summary([p for p in pairs if p[0].reader not in skip]),
    }


def catch_summary(
    catch_reads: Sequence[Read], readers: Sequence[str], rule: CatchRule | None
) -> dict[str, Any]:
    """Catch-trial accuracy per reader, and the readers the rule flags (and, with action "exclude", excludes)."""
    per_reader, flagged = {}, []
    for name in readers:
        mine = [r for r in catch_reads if r.reader == name]
        correct = sum(r.call == r.truth for r in mine)
        per_reader[name] = {"n": len(mine), "accuracy": proportion(correct, len(mine), "no catch trials")}
        if rule and len(mine) >= rule.min_trials and correct / len(mine) < rule.min_accuracy:
            flagged.append({"reader": name, "n": len(mine), "accuracy": correct / len(mine)})
    excluded = flagged if rule and rule.action == "exclude" else []
    note = "no catch rule given: nobody is flagged"
    if rule:
        action = "excluded from pooled statistics" if rule.action == "exclude" else "flagged only"
        note = (
            f"below {rule.min_accuracy:.0%} catch accuracy after {rule.min_trials}+ catch trial(s): {action}"
        )
    rule_dict = asdict(rule) if rule else None
    return {"rule": rule_dict, "readers": per_reader, "flagged": flagged, "excluded": excluded, "note": note}


# --- the report --------------------------------------------------------------------------------------------------


def reader_report(
    reads: Iterable[Read],
    rubric_reads: Iterable[RubricRead] = (),
    *,
    margin: float = DEFAULT_MARGIN,
    catch_rule: CatchRule | None = None,
) -> dict[str, Any]:
    """Every reader-study statistic as one JSON-serialisable dict (no NaN): ``pooled`` and ``readers`` (binary
    metrics), ``fleiss_kappa``, ``cohen_kappa`` (keyed "readerA|readerB"), ``fooling_rate``, ``intra_reader``,
    ``rubric``, ``catch`` and ``notes``. Catch trials count only towards the catch rule; repeats only towards
    intra-reader agreement."""
    if not 0 < margin < 0.5:
        raise ValueError("margin must lie strictly between 0 and 0.5")
    reads = list(reads)
    readers = sorted({r.reader for r in reads})
    first_reads, repeats = split_repeats(r for r in reads if not r.is_catch)
    catch = catch_summary([r for r in reads if r.is_catch], readers, catch_rule)
    excluded = {e["reader"] for e in catch["excluded"]}
    kept_readers = [name for name in readers if name not in excluded]
    kept = [r for r in first_reads if r.reader not in excluded]
    notes = []
    if excluded:
        notes.append(
            f"excluded by the catch rule from pooled statistics, kappas, fooling rates, pooled intra-reader "
            f"and rubric agreement: {', '.join(sorted(excluded))}"
        )
    if repeats:
        notes.append(f"{len(repeats)} repeated read(s) count only towards intra-reader agreement")
    if len(kept_readers) < 2:
        notes.append("fewer than two readers: no inter-reader agreement")
    return {
        "n_reads": len(reads),
        "margin": margin,
        "pooled": {
            **binary_summary(kept, margin=margin),
            "n_readers": len(kept_readers),
            "excluded_readers": sorted(excluded),
        },
        "readers": {
            name: {
                **binary_summary([r for r in first_reads if r.reader == name], margin=margin),
                "excluded": name in excluded,
            }
            for name in readers
        },
        "fleiss_kappa": fleiss_kappa(kept, kept_readers),
        "cohen_kappa": cohen_pairs(kept, kept_readers),
        "fooling_rate": fooling_rate(kept),
        "intra_reader": intra_reader(repeats, readers, exclude=excluded),
        "rubric": rubric_agreement(rubric_reads, exclude=excluded),
        "catch": catch,
        "notes": notes,
    }
