"""Set-to-set image metrics on kept features and images: PRDC, memorisation, MS-SSIM diversity, utility.

No Django here. Each function takes whole arrays (at most `MetricsConfig.max_features` rows per set, as
`training.ml.metrics.image_metrics` keeps them) and works in row chunks, so a distance matrix never needs O(N²)
memory. A metric that cannot be computed on what it was given raises `MetricSkipped(reason)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from inference.ml.phantoms import FINDINGS
from training.ml.metrics.features import MetricSkipped

_MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as in torchmetrics


# --- set-to-set metrics on kept features ---------------------------------------------------------------------


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0, out=d)


_CHUNK = 1024  # rows per block of a distance matrix: memory O(_CHUNK × N), not O(N²)


def _chunks(n: int, size: int | None = None) -> Iterator[slice]:
    size = size or _CHUNK
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row to its k-th nearest other row."""
    out = np.empty(len(x))
    for s in _chunks(len(x)):
        d = _sq_dists(x[s], x)
        out[s] = np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself (distance 0)
    return out


def prdc(real: np.ndarray, fake: np.ndarray, *, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k-NN balls in feature space, as their
    reference code computes them (strict "inside a ball": distance < radius), in row chunks."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) <= k or len(fake) <= k:
        raise MetricSkipped(
            f"PRDC with k={k} needs more than {k} images per set, got {len(real)} real, {len(fake)} synthetic"
        )
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    inside_real = np.zeros(len(fake))  # per fake: how many real balls hold it
    covered = np.zeros(len(real), bool)  # per real: is its nearest fake inside its ball
    recalled = np.zeros(len(real), bool)
    for s in _chunks(len(fake)):
        d = _sq_dists(fake[s], real)  # (chunk of fakes, reals)
        inside = d < r_real[None, :]
        inside_real[s] = inside.sum(1)
        covered |= inside.any(0)
        recalled |= (d < r_fake[s, None]).any(0)
    return {
        "precision": float((inside_real > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(inside_real.sum() / (k * len(fake))),
        "coverage": float(covered.mean()),
    }


@dataclass
class Memorisation:
    """Per synthetic image: its nearest real image and how close, in features and in pixels; near-copies flagged."""

    nearest_index: np.ndarray  # int, into the real set given (feature space)
    distance: np.ndarray  # cosine distance, features centred on the real mean
    threshold: float  # distance at or under which an image is flagged
    pixel_index: np.ndarray | None  # int, the real thumbnail that correlates best
    correlation: np.ndarray | None  # its Pearson correlation
    min_correlation: float | None  # correlation at or over which an image is flagged
    flagged: np.ndarray  # bool

    @property
    def flagged_count(self) -> int:
        return int(self.flagged.sum())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _flat_unit(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails as rows whose dot products are Pearson correlations."""
    t = np.asarray(thumbs, np.float64).reshape(len(thumbs), -1)
    return _unit(t - t.mean(1, keepdims=True))


def _nearest(
    ref_unit: np.ndarray,
    query_unit: np.ndarray,
    *,
    leave_one_out: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Index and cosine distance of each query row's nearest reference row, in chunks."""
    idx, dist = np.empty(len(query_unit), int), np.empty(len(query_unit))
    for s in _chunks(len(query_unit)):
        sim = query_unit[s] @ ref_unit.T
        if leave_one_out:  # the query set is the reference set: skip each row itself
            sim[np.arange(len(sim)), np.arange(s.start, s.stop)] = -np.inf
        idx[s] = sim.argmax(1)
        dist[s] = 1 - sim[np.arange(len(sim)), idx[s]]
    return idx, np.clip(dist, 0, 2)


def memorisation(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    threshold: float | None = None,
    real_thumbs: np.ndarray | None = None,
    fake_thumbs: np.ndarray | None = None,
    min_correlation: float | None = None,
    quantile: float = 0.01,
) -> Memorisation:
    """Nearest real neighbour of each synthetic image by cosine distance of features centred on the real mean
    (raw CNN features are all positive, so uncentred cosines crowd near 1), flagged at or under `threshold`; with
    thumbnails (N, h, w), also the real image whose pixels correlate best (Pearson): then an image is flagged
    only if it is also at or over `min_correlation`, near in both senses (either alone flags many distinct
    chest X-rays at small sample sizes).

    A threshold left None is calibrated on the real images themselves: the `quantile` of their leave-one-out
    nearest-neighbour distances (for correlation, the 1 − `quantile` one). So an image is flagged when it sits
    closer to a real image than all but `quantile` of real images sit to each other; a generator that copies
    nothing gets at most about that share flagged by chance. Chest X-rays all look alike in raw pixels
    (distinct phantoms correlate at about 0.97 at 32 px), which is why no fixed pixel threshold is the default.
    Shifted or flipped copies are not caught by either measure."""
    if len(real) < 2 or len(fake) == 0:
        raise MetricSkipped(
            f"memorisation needs ≥ 2 real and ≥ 1 synthetic images, got {len(real)} and {len(fake)}"
        )
    centre = np.asarray(real, np.float64).mean(0)
    r, f = _unit(np.asarray(real, np.float64) - centre), _unit(np.asarray(fake, np.float64) - centre)
    if threshold is None:
        threshold = float(np.quantile(_nearest(r, r, leave_one_out=True)[1], quantile))
    idx, dist = _nearest(r, f)
    flagged = dist <= threshold
    pix_idx = corr = None
    if real_thumbs is not None and fake_thumbs is not None:
        rt, ft = _flat_unit(real_thumbs), _flat_unit(fake_thumbs)
        if min_correlation is None:
            min_correlation = float(np.quantile(1 - _nearest(rt, rt, leave_one_out=True)[1], 1 - quantile))
        pix_idx, pix_dist = _nearest(rt, ft)
        corr = 1 - pix_dist
        flagged &= corr >= min_correlation
    return Memorisation(idx, dist, threshold, pix_idx, corr, min_correlation, flagged)


def _msssim_setup(side: int) -> tuple[int, tuple[float, ...]]:
    """(kernel size, betas) for images of this smallest side. The default 5 scales with an 11-px window need
    ≥ 176 px in torchmetrics; smaller images keep the 11-px window and drop the coarsest scales (the remaining
    betas rescaled to sum to 1): 128 px → 4 scales, 64 px → 3, 32 px → 2; below 22 px it is one-scale SSIM."""
    for scales in range(5, 0, -1):
        div = max(1, scales - 1) ** 2  # torchmetrics' own size check
        if side >= 2**scales and side // div > 10 and side // 2 ** (scales - 1) >= 11:
            betas = np.array(_MSSSIM_BETAS[:scales])
            return 11, tuple((betas / betas.sum()).tolist())
    kernel = max(3, (side - 1) // 2 * 2 - 1)  # odd and smaller than the side, for reflect padding
    return kernel, (1.0,)


def ms_ssim_diversity(images: Sequence[np.ndarray], *, pairs: int = 100, seed: int = 0) -> dict[str, Any]:
    """Mean MS-SSIM (torchmetrics, data range 255, negative terms clipped to 0 as its default does) over random
    pairs of distinct images; images are cropped to their common smallest size. Lower = more diverse."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    n = len(images)
    if n < 2:
        raise MetricSkipped(f"MS-SSIM diversity needs at least 2 images, got {n}")
    h = min(im.shape[0] for im in images)
    w = min(im.shape[1] for im in images)
    stack = torch.from_numpy(np.stack([np.asarray(im)[:h, :w] for im in images])).float().unsqueeze(1)
    rng = np.random.default_rng(seed)
    all_pairs = n * (n - 1) // 2
    if all_pairs <= pairs:
        i, j = np.triu_indices(n, 1)
    else:
        i = rng.integers(0, n, pairs)
        j = (i + rng.integers(1, n, pairs)) % n  # never the same image
    kernel, betas = _msssim_setup(min(h, w))
    values = []
    for s in _chunks(len(i), 32):
        values.append(
            msssim(
                stack[i[s]], stack[j[s]], kernel_size=kernel, betas=betas, data_range=255.0, reduction="none"
            )
        )
    return {
        "mean": float(torch.cat(values).mean()),
        "pairs": int(len(i)),
        "size_px": [h, w],
        "kernel_size": kernel,
        "scales": len(betas),
    }


# --- downstream utility --------------------------------------------------------------------------------------


def multi_hot(labels: Iterable[Sequence[str]], findings: Sequence[str]) -> np.ndarray:
    """(N, len(findings)) 0/1 from per-image finding names; unknown names are ignored."""
    return np.array([[name in set(lab) for name in findings] for lab in labels], dtype=np.int8).reshape(
        -1, len(findings)
    )


def downstream_utility(
    train_fake: tuple[np.ndarray, np.ndarray],
    train_real: tuple[np.ndarray, np.ndarray],
    test_real: tuple[np.ndarray, np.ndarray],
    *,
    findings: Sequence[str] = FINDINGS,
    seed: int = 0,
) -> dict[str, Any]:
    """Per finding, a standardised logistic regression on features trained on synthetic images and one trained on
    as many real ones (both sets cut to the smaller size), each tested on held-out real images; AUROC per finding
    and their macro mean. Each (features (N, d), labels (N, F) multi-hot) pair is one set. A finding whose
    training or test labels are all one class gets a null AUROC and a reason."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(train_fake[0]), len(train_real[0]))
    if n < 2 or len(test_real[0]) < 2:
        raise MetricSkipped(
            f"utility needs ≥ 2 images per set, got {len(train_fake[0])} synthetic, "
            f"{len(train_real[0])} real train, {len(test_real[0])} real test"
        )
    arms = {
        name: (x[keep], y[keep])
        for name, (x, y) in (("synthetic", train_fake), ("real", train_real))
        for keep in [np.sort(rng.permutation(len(x))[:n])]
    }
    x_test, y_test = test_real
    out: dict[str, Any] = {"n_train": n, "n_test": int(len(x_test)), "reasons": {}}
    for arm in arms:
        out[arm] = {"auroc": {}, "macro_auroc": None}
    for col, name in enumerate(findings):
        if len(set(y_test[:, col])) < 2:
            for arm in arms:
                out[arm]["auroc"][name] = None
            out["reasons"][name] = (
                f"held-out real images are all {'positive' if y_test[0, col] else 'negative'}"
            )
            continue
        for arm, (x, y) in arms.items():
            if len(set(y[:, col])) < 2:
                out[arm]["auroc"][name] = None
                out["reasons"][f"{arm}:{name}"] = (
                    f"{arm} training images are all {'positive' if y[0, col] else 'negative'}"
                )
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
            clf.fit(x, y[:, col])
            out[arm]["auroc"][name] = float(roc_auc_score(y_test[:, col], clf.predict_proba(x_test)[:, 1]))
    for arm in arms:
        scores = [v for v in out[arm]["auroc"].values() if v is not None]
        out[arm]["macro_auroc"] = float(np.mean(scores)) if scores else None
    return out
