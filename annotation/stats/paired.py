"""Paired comparisons of two model versions on the same evaluation-panel items, and per-version means with
bootstrap CIs (numpy and scipy only: no Django).

A panel item is one prompt × seed sampled by every version, so two versions' scores on it are a pair. Means carry a
percentile-bootstrap 95% CI over items (seeded, so a report is reproducible); comparisons add a one-sided Wilcoxon
signed-rank p and Cohen's d_z (mean difference over the differences' SD). Fewer than `MIN_PAIRS` pairs cannot
reach p < 0.05 in a one-sided signed-rank test and give no p, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.ml.reporting import too_few

BOOTSTRAP = 2000
MIN_PAIRS = 6


def _values(values: Sequence[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def bootstrap_mean(values: Sequence[float], *, resamples: int = BOOTSTRAP, seed: int = 0) -> dict:
    """{"mean", "ci_low", "ci_high", "n"}: the mean with its percentile-bootstrap 95% CI over the items; means of
    fewer than 2 items have no CI."""
    x = _values(values)
    if len(x) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    if len(x) < 2:
        return {"mean": float(x.mean()), "ci_low": None, "ci_high": None, "n": 1}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(len(x))}


def signed_rank_p(diff: Sequence[float], *, shift: float = 0.0) -> tuple[float | None, str | None]:
    """One-sided Wilcoxon signed-rank p that `diff + shift` is centred above 0, or (None, reason)."""
    from scipy.stats import wilcoxon

    d = np.asarray(diff, dtype=float) + shift
    if len(d) < MIN_PAIRS:
        return None, too_few(len(d))
    if not np.any(d):
        return None, "every paired difference is 0"
    return float(wilcoxon(d, alternative="greater").pvalue), None


def paired_comparison(before: Sequence[float], after: Sequence[float], *, seed: int = 0) -> dict:
    """`after` against `before` on the same items: {"gain": bootstrap mean of after − before, "p_value" (one-sided:
    after > before), "effect_size" (d_z), "n", "skipped": {name: reason}}."""
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.shape} vs {b.shape}")
    diff = b - a
    out: dict = {"gain": bootstrap_mean(diff, seed=seed), "n": int(len(diff)), "skipped": {}}
    out["p_value"], reason = signed_rank_p(diff)
    if reason:
        out["skipped"]["p_value"] = reason
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    out["effect_size"] = float(diff.mean() / sd) if sd > 0 else None
    if out["effect_size"] is None:
        out["skipped"]["effect_size"] = "fewer than 2 items or no spread in the differences"
    return out


def paired_promotion_test(diff: Sequence[float], margin: float) -> dict:
    """One-sided Wilcoxon signed-rank test that the new version scores no worse than `margin` below its parent
    (child − parent + margin > 0) over the paired items, with its n; a negative margin asks it to be better by
    that much."""
    p, reason = signed_rank_p(diff, shift=margin)
    out = {"p_value": p, "n_pairs": int(len(diff)),
           "test": "Wilcoxon signed-rank, one-sided: child - parent + margin > 0"}
    if reason:
        out["p_value_skipped"] = reason
    return out
