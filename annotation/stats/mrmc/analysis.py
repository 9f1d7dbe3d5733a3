"""Multi-reader multi-case (MRMC) analysis of empirical ROC AUCs: the Obuchowski-Rockette (OR) model with Hillis's
denominator degrees of freedom, as OR-DBM MRMC, RJafroc and MRMCaov compute it. numpy/scipy only, no Django.

A fully crossed design: every reader rates every case under every treatment. The figure of merit is the empirical
AUC (Wilcoxon-Mann-Whitney, ties count one half) per treatment x reader. Its error covariances across treatments and
readers come from the jackknife over cases (default; scaled by (K-1)/K) or DeLong's structural components. From them
the OR components Var, Cov1 (same reader, other treatment), Cov2 (other reader, same treatment), Cov3 (other both)
and, with the treatment x reader ANOVA of the AUCs, VarR and VarTR. Three analyses:

- random readers, random cases (RRRC): F = MS(T) / [MS(TR) + J max(Cov2 - Cov3, 0)], Hillis (2007) ddf;
- fixed readers, random cases (FRRC): X2 = (T-1) MS(T) / [Var - Cov1 + (J-1) max(Cov2 - Cov3, 0)];
- random readers, fixed cases (RRFC): F = MS(T) / MS(TR) on (T-1, (T-1)(J-1)) df;

each with the pairwise differences (SE, 95% CI) and per treatment the AUC with its CI (Hillis's single-treatment
df for RRRC). The RRRC per-treatment test against 0.5 is the readers-in-general answer to "could they tell synthetic
from real?", with an equivalence test (TOST) against 0.5 beside it. What cannot be computed is ``None`` and its
reason is under ``skipped``. Power and sample size from these components live in ``annotation.stats.mrmc.power``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from annotation.stats.reads import ALPHA, DEFAULT_MARGIN

COVARIANCES = ("jackknife", "delong")


class MRMCError(ValueError):
    """Every problem of an MRMC data set, as (line or None, message)."""

    def __init__(self, errors: list[tuple[int | None, str]]):
        self.errors = errors
        super().__init__("; ".join(msg if line is None else f"line {line}: {msg}" for line, msg in errors))


@dataclass(frozen=True)
class Rating:
    """One reader's rating of one case under one treatment; ``truth`` 1 = diseased / synthetic."""

    treatment: str
    reader: str
    case: str
    truth: int
    rating: float
    line: int | None = None


@dataclass(frozen=True)
class MRMCData:
    """A fully crossed design: ``ratings[t, r, k]`` for the names in first-appearance order, ``truth[k]`` 0/1."""

    treatments: tuple[str, ...]
    readers: tuple[str, ...]
    cases: tuple[str, ...]
    truth: np.ndarray
    ratings: np.ndarray

    @classmethod
    def from_ratings(cls, rows: Iterable[Rating], *, max_listed: int = 20) -> MRMCData:
        """Raises MRMCError listing duplicates, a case's conflicting truth, "-" in a treatment and missing cells."""
        errors: list[tuple[int | None, str]] = []
        order: dict[str, dict[str, int]] = {"treatment": {}, "reader": {}, "case": {}}
        truth: dict[str, tuple[int, int | None]] = {}
        cells: dict[tuple[str, str, str], tuple[float, int | None]] = {}
        refused: set[str] = set()
        for row in rows:
            for kind in order:
                order[kind].setdefault(getattr(row, kind), len(order[kind]))
            if "-" in row.treatment and row.treatment not in refused:
                refused.add(row.treatment)
                errors.append((row.line, f"treatment name {row.treatment!r} contains '-' (it names differences)"))
            if row.case in truth and truth[row.case][0] != row.truth:
                first = truth[row.case][1]
                errors.append((row.line, f"case {row.case!r} has truth {row.truth}, but {truth[row.case][0]}"
                               + (f" on line {first}" if first else "")))
            truth.setdefault(row.case, (row.truth, row.line))
            key = (row.treatment, row.reader, row.case)
            if key in cells:
                first = cells[key][1]
                errors.append((row.line, f"a second rating of case {row.case!r} by reader {row.reader!r} under "
                               f"treatment {row.treatment!r}" + (f" (first on line {first})" if first else "")))
            cells.setdefault(key, (row.rating, row.line))
        names = {kind: tuple(order[kind]) for kind in order}
        if not cells:
            errors.append((None, "no ratings"))
        missing = [
            (t, r, c) for t in names["treatment"] for r in names["reader"] for c in names["case"] if (t, r, c) not in cells
        ]
        for t, r, c in missing[:max_listed]:
            errors.append((None, f"missing cell: reader {r!r} has no rating of case {c!r} under treatment {t!r} "
                           "(the MRMC analysis needs every reader to rate every case under every treatment)"))
        if len(missing) > max_listed:
            errors.append((None, f"... and {len(missing) - max_listed} more missing cells"))
        if errors:
            raise MRMCError(errors)
        shape = tuple(len(names[k]) for k in ("treatment", "reader", "case"))
        ratings = np.empty(shape)
        index = {kind: {name: i for i, name in enumerate(names[kind])} for kind in names}
        for (t, r, c), (value, _) in cells.items():
            ratings[index["treatment"][t], index["reader"][r], index["case"][c]] = value
        y = np.array([truth[c][0] for c in names["case"]], dtype=int)
        return cls(names["treatment"], names["reader"], names["case"], y, ratings)


# --- figure of merit and its covariance -----------------------------------------------------------------------------


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: V10[i] = P(neg < pos_i) + P(neg = pos_i)/2, V01[j] likewise for negatives."""
    sneg, spos = np.sort(neg), np.sort(pos)
    v10 = (np.searchsorted(sneg, pos, "left") + np.searchsorted(sneg, pos, "right")) / (2 * len(neg))
    v01 = 1 - (np.searchsorted(spos, neg, "left") + np.searchsorted(spos, neg, "right")) / (2 * len(pos))
    return v10, v01


def auc_covariance(data: MRMCData, covariance: str = "jackknife") -> tuple[np.ndarray, np.ndarray]:
    """AUCs (T, R) and their error covariance matrix (T*R, T*R), index t * R + r."""
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    pos, neg = data.truth == 1, data.truth == 0
    n1, n0 = int(pos.sum()), int(neg.sum())
    flat = data.ratings.reshape(-1, data.ratings.shape[-1])
    parts = [_placements(x[pos], x[neg]) for x in flat]
    v10 = np.stack([p[0] for p in parts], axis=1)  # (n1, T*R)
    v01 = np.stack([p[1] for p in parts], axis=1)  # (n0, T*R)
    aucs = v10.mean(axis=0)
    if covariance == "delong":
        cov = np.atleast_2d(np.cov(v10, rowvar=False, ddof=1)) / n1 + np.atleast_2d(np.cov(v01, rowvar=False, ddof=1)) / n0
    else:  # leave one case out: a positive takes its V10 out of the mean, a negative its V01
        loo = np.concatenate([(n1 * aucs - v10) / (n1 - 1), (n0 * aucs - v01) / (n0 - 1)])
        dev = loo - loo.mean(axis=0)
        k = n1 + n0
        cov = (k - 1) / k * dev.T @ dev
    t, r = data.ratings.shape[:2]
    return aucs.reshape(t, r), cov


def or_components(cov: np.ndarray, t: int, r: int) -> dict[str, float | None]:
    """Var, Cov1, Cov2, Cov3 averaged over the cells of the covariance matrix they name (None where none exist)."""
    c = cov.reshape(t, r, t, r)
    same_t = np.eye(t, dtype=bool)[:, None, :, None]
    same_r = np.eye(r, dtype=bool)[None, :, None, :]

    def mean(mask: np.ndarray) -> float | None:
        mask = np.broadcast_to(mask, c.shape)
        return float(c[mask].mean()) if mask.any() else None

    return {
        "var": mean(same_t & same_r),
        "cov1": mean(~same_t & same_r),
        "cov2": mean(same_t & ~same_r),
        "cov3": mean(~same_t & ~same_r),
    }


# --- the analyses ---------------------------------------------------------------------------------------------------


def _ms(aucs: np.ndarray) -> dict[str, float | None]:
    t, r = aucs.shape
    grand, by_t, by_r = aucs.mean(), aucs.mean(axis=1), aucs.mean(axis=0)
    inter = aucs - by_t[:, None] - by_r[None, :] + grand
    return {
        "ms_t": float(r * ((by_t - grand) ** 2).sum() / (t - 1)) if t > 1 else None,
        "ms_r": float(t * ((by_r - grand) ** 2).sum() / (r - 1)) if r > 1 else None,
        "ms_tr": float((inter**2).sum() / ((t - 1) * (r - 1))) if t > 1 and r > 1 else None,
    }


def _interval(estimate: float, se: float, df: float | None, alpha: float) -> dict[str, float]:
    """Estimate +- t(df) or z quantile x SE, with the two-sided p of estimate = 0."""
    dist = sps.norm() if df is None else sps.t(df)
    half = float(dist.isf(alpha / 2)) * se
    stat = estimate / se if se > 0 else math.copysign(math.inf, estimate) if estimate else 0.0
    p = float(2 * dist.sf(abs(stat))) if math.isfinite(stat) else 0.0
    out = {"estimate": float(estimate), "se": float(se), "ci_low": float(estimate - half), "ci_high": float(estimate + half)}
    out.update({"df": float(df), "t": float(stat)} if df is not None else {"z": float(stat)})
    out["p"] = p
    return out


def _pairs(names: tuple[str, ...]) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]


def mrmc_analysis(
    data: MRMCData, *, covariance: str = "jackknife", alpha: float = ALPHA, margin: float = DEFAULT_MARGIN
) -> dict[str, Any]:
    """The OR analysis as one strict-JSON dict (keys: see the module docstring and ``reader_stats --mrmc``)."""
    t, r, k = data.ratings.shape
    skipped: dict[str, str] = {}
    out: dict[str, Any] = {
        "method": "OR",
        "covariance": covariance,
        "alpha": alpha,
        "n": {"treatments": t, "readers": r, "cases": k, "positive": int(data.truth.sum()),
              "negative": int((data.truth == 0).sum())},
        "treatments": {}, "readers": {}, "var_components": None, "ms": None,
        "rrrc": None, "frrc": None, "rrfc": None, "skipped": skipped,
    }
    n1, n0 = out["n"]["positive"], out["n"]["negative"]
    if min(n1, n0) < 2:
        skipped["auc"] = (f"needs at least 2 cases of each truth, got {n1} with truth 1 and {n0} with truth 0"
                          + (": one class is missing" if min(n1, n0) == 0 else ""))
        return out
    aucs, cov = auc_covariance(data, covariance)
    out["readers"] = {tn: {rn: float(aucs[i, j]) for j, rn in enumerate(data.readers)} for i, tn in enumerate(data.treatments)}
    comp = or_components(cov, t, r)
    ms = _ms(aucs)
    out["ms"] = ms
    var, cov1, cov2, cov3 = comp["var"], comp["cov1"], comp["cov2"], comp["cov3"]
    var_tr = var_r = None
    if ms["ms_tr"] is not None:
        var_tr = ms["ms_tr"] - var + cov1 + cov2 - cov3
        var_r = (ms["ms_r"] - var_tr - var - (t - 1) * cov1 + cov2 + (t - 1) * cov3) / t
    else:
        skipped["var_components"] = (
            "var_r and var_tr need two treatments and two readers" if t > 1 or r > 1 else
            "one treatment and one reader: only var is defined")
    out["var_components"] = {**comp, "var_r": var_r, "var_tr": var_tr}
    out["treatments"] = {name: _treatment(aucs[i], cov, i, r, alpha, margin, skipped, name)
                         for i, name in enumerate(data.treatments)}
    if t < 2:
        skipped["differences"] = "one treatment: there is no difference to test"
        return out
    means = aucs.mean(axis=1)
    pairs = _pairs(data.treatments)
    label = [f"{data.treatments[i]}-{data.treatments[j]}" for i, j in pairs]
    d23 = max(cov2 - cov3, 0.0) if r > 1 else 0.0
    # fixed readers: cases are the only random factor
    den_f = var - cov1 + (r - 1) * d23
    if den_f > 0:
        chi2 = (t - 1) * ms["ms_t"] / den_f
        se = math.sqrt(2 / r * den_f)
        per_reader = {}
        for j, rn in enumerate(data.readers):
            c = cov.reshape(t, r, t, r)[:, j, :, j]
            var_j = float(np.diag(c).mean())
            cov1_j = float(c[~np.eye(t, dtype=bool)].mean())
            se_j = math.sqrt(max(2 * (var_j - cov1_j), 0.0))
            per_reader[rn] = {lab: _interval(aucs[a, j] - aucs[b, j], se_j, None, alpha) if se_j > 0 else None
                              for lab, (a, b) in zip(label, pairs, strict=True)}
        out["frrc"] = {
            "chi2": float(chi2), "df": t - 1, "p": float(sps.chi2.sf(chi2, t - 1)), "error": float(den_f),
            "differences": {lab: _interval(means[a] - means[b], se, None, alpha) for lab, (a, b) in zip(label, pairs, strict=True)},
            "readers": per_reader,
        }
    else:
        skipped["frrc"] = "Var - Cov1 + (J-1) max(Cov2 - Cov3, 0) is 0: the AUCs do not vary over cases"
    if r < 2:
        skipped["rrrc"] = skipped["rrfc"] = "one reader: readers cannot be a random factor"
        return out
    # random readers, random cases (Hillis 2007 ddf)
    den = ms["ms_tr"] + r * d23
    if den > 0 and ms["ms_tr"] > 0:
        ddf = den**2 / (ms["ms_tr"] ** 2 / ((t - 1) * (r - 1)))
        f = ms["ms_t"] / den
        se = math.sqrt(2 / r * den)
        out["rrrc"] = {
            "f": float(f), "df1": t - 1, "ddf": float(ddf), "p": float(sps.f.sf(f, t - 1, ddf)), "error": float(den),
            "differences": {lab: _interval(means[a] - means[b], se, ddf, alpha) for lab, (a, b) in zip(label, pairs, strict=True)},
        }
    else:
        skipped["rrrc"] = "MS(T*R) is 0: the treatment difference is the same for every reader, ddf undefined"
    # random readers, fixed cases: the conventional treatment x reader ANOVA of the AUCs
    if ms["ms_tr"] > 0:
        df2 = (t - 1) * (r - 1)
        f = ms["ms_t"] / ms["ms_tr"]
        se = math.sqrt(2 / r * ms["ms_tr"])
        out["rrfc"] = {
            "f": float(f), "df1": t - 1, "df": df2, "p": float(sps.f.sf(f, t - 1, df2)),
            "differences": {lab: _interval(means[a] - means[b], se, df2, alpha) for lab, (a, b) in zip(label, pairs, strict=True)},
        }
    else:
        skipped["rrfc"] = "MS(T*R) is 0: the treatment difference is the same for every reader"
    return out


def _treatment(
    aucs: np.ndarray, cov: np.ndarray, i: int, r: int, alpha: float, margin: float, skipped: dict[str, str], name: str
) -> dict[str, Any]:
    """One treatment on its own data: RRRC (the headline CI, df, p vs 0.5, TOST), FRRC and RRFC intervals."""
    block = cov[i * r:(i + 1) * r, i * r:(i + 1) * r]
    auc = float(aucs.mean())
    var_t = float(np.diag(block).mean())
    cov2_t = float(block[~np.eye(r, dtype=bool)].mean()) if r > 1 else None
    ms_r = float(aucs.var(ddof=1)) if r > 1 else None
    out: dict[str, Any] = {"auc": auc, "se": None, "df": None, "ci_low": None, "ci_high": None, "p_vs_chance": None,
                           "equivalence": None, "ms_r": ms_r, "var": var_t, "cov2": cov2_t,
                           "fixed_readers": None, "fixed_cases": None}
    den_f = var_t + (r - 1) * max(cov2_t or 0.0, 0.0)
    if den_f > 0:
        fr = _interval(auc, math.sqrt(den_f / r), None, alpha)
        out["fixed_readers"] = {key: fr[key] for key in ("se", "ci_low", "ci_high")}
    if r < 2:
        skipped[f"treatments.{name}"] = "one reader: no readers-and-cases interval (fixed_readers has the cases-only one)"
        return out
    den = ms_r + r * max(cov2_t, 0.0)
    if ms_r > 0:
        fc = _interval(auc, math.sqrt(ms_r / r), r - 1, alpha)
        out["fixed_cases"] = {key: fc[key] for key in ("se", "df", "ci_low", "ci_high")}
    if den <= 0 or ms_r <= 0:
        skipped[f"treatments.{name}"] = (
            "no variation: every reader has the same AUC and it does not vary over cases" if den <= 0 else
            "every reader has the same AUC: MS(R) is 0, the single-treatment ddf is undefined")
        return out
    df = den**2 / (ms_r**2 / (r - 1))
    se = math.sqrt(den / r)
    iv = _interval(auc - 0.5, se, df, alpha)
    lower = float(sps.t.sf((auc - 0.5 + margin) / se, df))
    upper = float(sps.t.cdf((auc - 0.5 - margin) / se, df))
    out.update({
        "se": se, "df": float(df), "ci_low": iv["ci_low"] + 0.5, "ci_high": iv["ci_high"] + 0.5, "p_vs_chance": iv["p"],
        "equivalence": {"margin": margin, "p": max(lower, upper), "equivalent": max(lower, upper) < alpha},
    })
    return out
