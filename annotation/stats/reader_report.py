"""Reader-study statistics for real-vs-synthetic reads: one module for the dashboard, the API and the CLI.

Positive class = synthetic: sensitivity is "synthetic called synthetic", specificity "real called real".
Every proportion carries a Wilson 95% interval without continuity correction. A value that cannot be computed is
``None`` with a ``reason`` next to it, never NaN, so ``reader_report`` is always valid strict JSON.

The inputs (``Read``, ``RubricRead``, ``CatchRule``) and constants are in ``annotation.stats.reads``, the agreement
statistics (kappas, Krippendorff's alpha) in ``annotation.stats.agreement``; this module holds the proportions,
tests, AUC and the report assembly. The closed-form definitions (Wilson, Cohen/weighted kappa, Fleiss, Krippendorff,
AUC) are written out in numpy rather than called from scikit-learn / statsmodels / krippendorff: those formulas are
a few lines each, the libraries signal undefined values with warnings and NaN that we would have to trap anyway,
scikit-learn and statsmodels add about a second of import time to every process that shows a dashboard, and the
tests can then compare every number with the library references as an independent check. Exact binomial p-values
come from scipy, the reference itself.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from scipy import stats as sps

from annotation.stats.agreement import cohen_pairs, fleiss_kappa, kappa_stat, rubric_agreement
from annotation.stats.reads import (
    ALPHA,
    CALLS,
    DEFAULT_MARGIN,
    REAL,
    SYNTHETIC,
    UNSPECIFIED_VERSION,
    Z95,
    CatchRule,
    Read,
    RubricRead,
    Stat,
    realism_rating,
)

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
    """ROC AUC of the reads on the 10-point realism scale (``realism_rating``: called synthetic 6-10 by confidence,
    called real 1-5). Computed as the Mann-Whitney U with mid-ranks, which equals scikit-learn's ``roc_auc_score``
    including its half credit for ties."""
    positive = np.array([r.truth == SYNTHETIC for r in reads], dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        reason = "no reads" if not reads else f"only {REAL if n_pos == 0 else SYNTHETIC} cases"
        return {"value": None, "n": len(reads), "reason": reason}
    ranks = sps.rankdata([realism_rating(r.call, r.confidence) for r in reads])
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
            "kappa": kappa_stat(first, again, values=CALLS, empty="no repeated cases"),
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
