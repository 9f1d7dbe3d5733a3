"""Agreement between readers: Cohen's kappa per pair of readers, Fleiss' kappa over all, and per rubric criterion
the quadratic-weighted kappa and Krippendorff's ordinal alpha, written out in numpy (the tests compare each with
scikit-learn, statsmodels and krippendorff). No Django here."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from annotation.stats.reads import CALLS, IDENTICAL, Read, RubricRead, Stat


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


def kappa_stat(
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
        out[pair_key(a, b)] = kappa_stat(answers_a, answers_b, **kappa_args)
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
