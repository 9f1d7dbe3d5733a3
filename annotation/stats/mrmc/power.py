"""Power and sample size of a two-treatment MRMC study from a pilot's Obuchowski-Rockette components (Hillis,
Obuchowski & Berbaum 2011, "Power estimation for multireader ROC methods: an updated and unified approach"; the
method of RJafroc's ``SsPowerGivenJK`` / ``SsSampleSizeKGivenJ``). numpy/scipy only.

The pilot's error variance and covariances scale with 1/cases, so for J readers and K cases, K* the pilot's cases and
d = the AUC difference to detect (Var, Cov1-3 and VarTR from ``annotation.stats.mrmc.analysis``; VarTR below 0 counts as 0):

- RRRC: den = VarTR + K*/K [Var - Cov1 + (J-1) max(Cov2 - Cov3, 0)], ncp = J d^2 / (2 den),
  ddf = den^2 (J-1) / (VarTR + K*/K [Var - Cov1 - max(Cov2 - Cov3, 0)])^2, power from the noncentral F(1, ddf);
- FRRC: den without VarTR, noncentral chi-square with 1 df;
- RRFC: den = VarTR + K*/K [Var - Cov1 - max(Cov2 - Cov3, 0)], noncentral F(1, J-1).

``cases_needed`` is the smallest K (2 or more) whose power reaches the target, or None with the reason when no
number of cases reaches it with J readers (reader variability caps the power of the random-reader analyses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats as sps

from annotation.stats.reads import ALPHA

ANALYSES = ("rrrc", "frrc", "rrfc")
DEFAULT_TARGET = 0.8
MAX_CASES = 100_000
NEEDED = ("var", "cov1", "cov2", "cov3", "var_tr")


def _power(analysis: str, comp: dict[str, float], pilot_cases: int, readers: int, cases: np.ndarray,
           effect: float, alpha: float) -> np.ndarray:
    scale = pilot_cases / cases
    d23 = max(comp["cov2"] - comp["cov3"], 0.0)
    var_tr = max(comp["var_tr"], 0.0)
    base = comp["var"] - comp["cov1"]
    j = readers
    if analysis == "frrc":
        den = scale * (base + (j - 1) * d23)
        return _noncentral(sps.chi2, sps.ncx2, (1,), j * effect**2 / (2 * den), alpha)
    if analysis == "rrfc":
        den = var_tr + scale * (base - d23)
        df2 = np.full_like(den, j - 1)
    else:
        den = var_tr + scale * (base + (j - 1) * d23)
        df2 = den**2 * (j - 1) / (var_tr + scale * (base - d23)) ** 2
    return _noncentral(sps.f, sps.ncf, (1, df2), j * effect**2 / (2 * den), alpha)


def _noncentral(central, noncentral, df: tuple, ncp: np.ndarray, alpha: float) -> np.ndarray:
    """P(statistic > its alpha critical value) under noncentrality ``ncp`` (scipy's noncentral sf is wrong at 0)."""
    crit = central.isf(alpha, *df)
    ncp = np.asarray(ncp, dtype=float)
    safe = np.where(ncp > 0, ncp, 1.0)
    return np.where(ncp > 0, noncentral.sf(crit, *df, safe), central.sf(crit, *df))


def _check(comp: dict[str, Any] | None, pilot_cases: int, readers: int) -> str | None:
    """Why no power can be computed from these inputs, or None."""
    if comp is None or any(comp.get(key) is None for key in NEEDED):
        return "the pilot has no Var, Cov1-3 and VarTR (it needs two treatments and two readers)"
    if readers < 2:
        return "needs at least 2 readers"
    if pilot_cases < 2:
        return "the pilot needs at least 2 cases"
    if comp["var"] - comp["cov1"] - max(comp["cov2"] - comp["cov3"], 0.0) <= 0 and max(comp["var_tr"], 0.0) <= 0:
        return "the pilot's components leave no error variance (Var - Cov1 - max(Cov2 - Cov3, 0) <= 0 and VarTR <= 0)"
    return None


def power(comp: dict[str, Any] | None, *, pilot_cases: int, readers: int, cases: int, effect: float,
          alpha: float = ALPHA) -> dict[str, Any]:
    """Power of each analysis for ``readers`` and ``cases`` at AUC difference ``effect``: {rrrc, frrc, rrfc,
    skipped}."""
    reason = _check(comp, pilot_cases, readers) or ("needs at least 2 cases" if cases < 2 else None)
    if reason:
        return {**dict.fromkeys(ANALYSES), "skipped": dict.fromkeys(ANALYSES, reason)}
    k = np.array([float(cases)])
    return {**{a: float(_power(a, comp, pilot_cases, readers, k, effect, alpha)[0]) for a in ANALYSES}, "skipped": {}}


def cases_needed(comp: dict[str, Any] | None, *, pilot_cases: int, readers: int, effect: float,
                 target: float = DEFAULT_TARGET, alpha: float = ALPHA, max_cases: int = MAX_CASES) -> dict[str, Any]:
    """The fewest cases (2 or more) with which each analysis reaches ``target`` power with ``readers``:
    {rrrc, frrc, rrfc, power: {analysis: power at that K}, skipped}."""
    out: dict[str, Any] = {**dict.fromkeys(ANALYSES), "power": dict.fromkeys(ANALYSES), "skipped": {}}
    reason = _check(comp, pilot_cases, readers)
    if reason is None and effect == 0:
        reason = "effect 0: no number of cases detects no difference"
    if reason is None and not alpha < target < 1:
        reason = f"target power must lie between alpha ({alpha}) and 1, got {target}"
    if reason:
        out["skipped"] = dict.fromkeys(ANALYSES, reason)
        return out
    grid = np.arange(2, max_cases + 1, dtype=float)
    for analysis in ANALYSES:
        values = _power(analysis, comp, pilot_cases, readers, grid, effect, alpha)
        reached = np.flatnonzero(values >= target)
        if reached.size:
            out[analysis] = int(grid[reached[0]])
            out["power"][analysis] = float(values[reached[0]])
        else:
            out["skipped"][analysis] = (
                f"not reachable with {readers} readers: power is {values[-1]:.3f} with {max_cases} cases "
                "(reader variability limits it; add readers)")
    return out
