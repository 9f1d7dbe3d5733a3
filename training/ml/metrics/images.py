"""Image metrics for a round: real chest X-rays against synthetic ones, streamed in batches at flat memory.

No Django here. Images come in as iterables of uint8 grayscale arrays (H, W), so callers can stream them from
storage; each stream is read once, in batches, and every metric takes what it needs from that one pass:

- FID (Heusel et al. 2017) with the standard FID InceptionV3 (torch-fidelity's port of the TF graph, 2048-d pool
  features), and a domain FID with a chest-X-ray feature extractor (timm) when its weights are given. FID keeps
  only running moments (`FeatureStats`, float64), so it uses every image at constant memory.
- precision / recall / density / coverage (Naeem et al. 2020), memorisation (nearest real neighbour of each
  synthetic image) and downstream utility (a classifier trained on synthetic images, tested on held-out real ones,
  against a real-only baseline) need feature vectors side by side: they use a uniform reservoir sample of at most
  `MetricsConfig.max_features` vectors per set, so their memory is bounded too.
- MS-SSIM diversity: mean MS-SSIM over random pairs of synthetic images (lower = more diverse), with the same
  figure for real images beside it for scale.

Weights are loaded only from local files. A builder given no file, a missing one or an unreadable one raises
`MetricSkipped(reason)`; `image_metrics` puts the reason under "skipped" and the metric's value is null. The report
is JSON without NaN. `random_features` is a small random conv net for tests and the demo: random embeddings are
a usable, if weaker, basis for PRDC (Naeem et al. 2020, sec. 5).

The set-to-set metrics themselves are in `training.ml.metrics.sets`; this module streams the images once and builds
the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from inference.ml.config import option
from inference.ml.phantoms import FINDINGS
from training.ml.jsonable import json_safe
from training.ml.metrics.features import (
    FeatureExtractor,
    FeatureStats,
    MetricSkipped,
    batches,
    fid,
    random_features,
)
from training.ml.metrics.sets import downstream_utility, memorisation, ms_ssim_diversity, multi_hot, prdc


@dataclass(frozen=True)
class MetricsConfig:
    """How the round's image metrics are computed; stored with the report."""

    batch_size: int = option(32, "Images per forward pass of a feature extractor.")
    max_features: int = option(
        5000,
        "Most feature vectors kept per image set for PRDC, memorisation and utility "
        "(a uniform sample beyond that); FID always uses every image.",
    )
    prdc_k: int = option(5, "Nearest neighbours that set each real/synthetic sample's radius in PRDC.")
    ms_ssim_pairs: int = option(100, "Random image pairs per set for MS-SSIM diversity.")
    ms_ssim_max_images: int = option(200, "Images kept per set (uniform sample) to draw MS-SSIM pairs from.")
    ms_ssim_max_side: int = option(256, "Images are shrunk to at most this side before MS-SSIM, px.")
    thumbnail_px: int = option(32, "Side of the thumbnails compared pixel-wise for memorisation, px.")
    copy_distance: float | None = option(
        None,
        "Flag a synthetic image as a near-copy at or under this cosine "
        "distance to a real one (features centred on the real mean); None: "
        "calibrated on the real images, see copy_quantile.",
    )
    copy_correlation: float | None = option(
        None,
        "... or at or over this Pearson correlation of its thumbnail with "
        "a real one; None: calibrated, see copy_quantile.",
    )
    copy_quantile: float = option(
        0.01,
        "Calibrated thresholds: the share of real images that sit that close to "
        "another real image (so at most about this share of a non-copying "
        "generator's images is flagged by chance).",
    )
    utility_test_fraction: float = option(0.3, "Share of real images held out to test the utility classifiers.")
    findings: tuple[str, ...] = option(FINDINGS, "Finding names the utility classifiers predict (multi-label).")
    seed: int = option(0, "Seed for every sample, split and pair drawn.")

    @classmethod
    def tiny(cls) -> MetricsConfig:
        return cls(batch_size=8, max_features=256, ms_ssim_pairs=20, ms_ssim_max_images=40)


# --- one pass over a stream ----------------------------------------------------------------------------------


class _Reservoir:
    """A uniform sample of at most `cap` items from a stream of unknown length (Vitter's algorithm R)."""

    def __init__(self, cap: int, rng: np.random.Generator) -> None:
        self.cap, self.rng, self.seen, self.items = cap, rng, 0, []

    def slot(self) -> int | None:
        """Where the next stream item goes in the sample, or None when it is not drawn."""
        self.seen += 1
        if len(self.items) < self.cap:
            self.items.append(None)
            return len(self.items) - 1
        j = int(self.rng.integers(0, self.seen))
        return j if j < self.cap else None


@dataclass
class _Pass:
    stats: dict[str, FeatureStats]  # FID moments per metric ("fid", "fid_domain")
    kept: _Reservoir  # (stream index, embedding features, thumbnail, labels, is_test)
    images: _Reservoir  # shrunk images for MS-SSIM
    n: int = 0


def _thumb(img: np.ndarray, px: int) -> np.ndarray:
    return cv2.resize(img, (px, px), interpolation=cv2.INTER_AREA).astype(np.float32)


def _shrink(img: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(img.shape)
    if scale >= 1:
        return img.copy()  # a copy, so the kept image does not pin the caller's batch buffer
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


_MISSING = object()


def _stream_pass(
    images: Iterable[np.ndarray],
    labels: Iterable[Sequence[str]] | None,
    *,
    fid_nets: dict[str, FeatureExtractor],
    embed: FeatureExtractor,
    cfg: MetricsConfig,
    rng: np.random.Generator,
    split: bool,
) -> _Pass:
    out = _Pass(
        stats={key: FeatureStats(net.dim) for key, net in fid_nets.items()},
        kept=_Reservoir(cfg.max_features, rng),
        images=_Reservoir(cfg.ms_ssim_max_images, rng),
    )
    label_iter = iter(labels) if labels is not None else None
    for batch in batches(images, cfg.batch_size):
        feats: dict[int, np.ndarray] = {}  # one forward per extractor, even if it serves several metrics
        for key, net in fid_nets.items():
            if id(net) not in feats:
                feats[id(net)] = net(batch)
            out.stats[key].update(feats[id(net)])
        emb = feats[id(embed)] if id(embed) in feats else embed(batch)
        for row, img in enumerate(batch):
            lab = next(label_iter, _MISSING) if label_iter is not None else None
            if lab is _MISSING:
                raise ValueError("fewer finding labels than images")
            is_test = split and bool(rng.uniform() < cfg.utility_test_fraction)
            if (i := out.kept.slot()) is not None:  # thumbnails and copies only for what is kept
                out.kept.items[i] = (out.n, emb[row].copy(), _thumb(img, cfg.thumbnail_px), lab, is_test)
            if (i := out.images.slot()) is not None:
                out.images.items[i] = _shrink(img, cfg.ms_ssim_max_side)
            out.n += 1
    if label_iter is not None and next(label_iter, None) is not None:
        raise ValueError("more finding labels than images")
    return out


def _columns(p: _Pass) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, np.ndarray]:
    items = sorted(p.kept.items, key=lambda t: t[0])
    if not items:
        return np.zeros(0, int), np.zeros((0, 0)), np.zeros((0, 0, 0)), [], np.zeros(0, bool)
    index, emb, thumbs, labels, test = zip(*items, strict=True)
    return np.array(index), np.stack(emb), np.stack(thumbs), list(labels), np.array(test)


# --- the report ----------------------------------------------------------------------------------------------


def image_metrics(
    real_images: Iterable[np.ndarray],
    fake_images: Iterable[np.ndarray],
    *,
    extractor: FeatureExtractor | None,
    domain_extractor: FeatureExtractor | None = None,
    embedding: FeatureExtractor | None = None,
    real_findings: Iterable[Sequence[str]] | None = None,
    fake_findings: Iterable[Sequence[str]] | None = None,
    config: MetricsConfig | None = None,
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every image metric of a round in one pass over each stream; a JSON-ready dict with no NaN.

    `extractor` gives FID (None: skipped), `domain_extractor` the domain FID. PRDC, memorisation and utility use
    `embedding`, by default the domain extractor, else `extractor`, else `random_features()`. Memorisation looks
    for copies of `real_images`: pass the generator's training images there to check it against them.
    `real_findings` / `fake_findings` (finding names per image, in stream order) enable utility; a random
    `utility_test_fraction` of the real images is held out for its tests. `skipped` carries reasons from
    `build_extractors`."""
    cfg = config or MetricsConfig()
    skipped = dict(skipped or {})
    skipped.setdefault("fid", "no FID Inception weights configured")
    skipped.setdefault("fid_domain", "no CXR feature weights configured")
    fid_nets = {
        key: net for key, net in (("fid", extractor), ("fid_domain", domain_extractor)) if net is not None
    }
    for key in fid_nets:
        skipped.pop(key)
    embed = embedding or domain_extractor or extractor or random_features(seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    real = _stream_pass(
        real_images, real_findings, fid_nets=fid_nets, embed=embed, cfg=cfg, rng=rng, split=True
    )
    fake = _stream_pass(
        fake_images, fake_findings, fid_nets=fid_nets, embed=embed, cfg=cfg, rng=rng, split=False
    )
    report: dict[str, Any] = {
        "n_real": real.n,
        "n_synthetic": fake.n,
        "config": asdict(cfg),
        "features": {"embedding": embed.name, **{key: net.name for key, net in fid_nets.items()}},
    }

    def attempt(key: str, compute: Callable[[], Any]) -> None:
        try:
            report[key] = compute()
        except MetricSkipped as exc:
            report[key] = None
            skipped[key] = exc.reason

    for key in ("fid", "fid_domain"):
        if key in fid_nets:
            attempt(key, lambda key=key: _fid_or_skip(real.stats[key], fake.stats[key]))
        else:
            report[key] = None
    r_idx, r_emb, r_thumb, r_lab, r_test = _columns(real)
    f_idx, f_emb, f_thumb, f_lab, _ = _columns(fake)
    attempt(
        "prdc",
        lambda: {
            **prdc(r_emb, f_emb, k=cfg.prdc_k),
            "k": cfg.prdc_k,
            "n_real": len(r_emb),
            "n_synthetic": len(f_emb),
        },
    )
    attempt("ms_ssim", lambda: _ms_ssim_report(fake.images.items, real.images.items, cfg))
    attempt("memorisation", lambda: _memorisation_report(r_idx, r_emb, r_thumb, f_idx, f_emb, f_thumb, cfg))
    if real_findings is None or fake_findings is None:
        report["utility"] = None
        skipped["utility"] = "no finding labels given for real and synthetic images"
    else:
        y_real, y_fake = multi_hot(r_lab, cfg.findings), multi_hot(f_lab, cfg.findings)
        attempt(
            "utility",
            lambda: {
                **downstream_utility(
                    (f_emb, y_fake),
                    (r_emb[~r_test], y_real[~r_test]),
                    (r_emb[r_test], y_real[r_test]),
                    findings=cfg.findings,
                    seed=cfg.seed,
                ),
                "findings": list(cfg.findings),
            },
        )
    report["skipped"] = skipped
    return json_safe(report)


def _fid_or_skip(real: FeatureStats, fake: FeatureStats) -> float:
    try:
        return fid(real, fake)
    except ValueError as exc:
        raise MetricSkipped(f"FID failed: {exc} (too few images for the feature dimension?)") from exc


def _ms_ssim_report(
    fake_imgs: list[np.ndarray], real_imgs: list[np.ndarray], cfg: MetricsConfig
) -> dict[str, Any]:
    fake = ms_ssim_diversity(fake_imgs, pairs=cfg.ms_ssim_pairs, seed=cfg.seed)
    out = {"synthetic": fake.pop("mean"), "real": None, **fake}
    if len(real_imgs) >= 2:
        out["real"] = ms_ssim_diversity(real_imgs, pairs=cfg.ms_ssim_pairs, seed=cfg.seed)["mean"]
    return out


def _memorisation_report(r_idx, r_emb, r_thumb, f_idx, f_emb, f_thumb, cfg: MetricsConfig) -> dict[str, Any]:
    m = memorisation(
        r_emb,
        f_emb,
        threshold=cfg.copy_distance,
        real_thumbs=r_thumb,
        fake_thumbs=f_thumb,
        min_correlation=cfg.copy_correlation,
        quantile=cfg.copy_quantile,
    )
    by_features, by_pixels = m.distance <= m.threshold, m.correlation >= m.min_correlation
    return {
        "flagged": m.flagged_count,
        "flagged_by_features": int(by_features.sum()),
        "flagged_by_pixels": int(by_pixels.sum()),
        "checked": len(f_idx),
        "against_real": len(r_idx),
        "distance_threshold": m.threshold,
        "correlation_threshold": m.min_correlation,
        "calibrated": {"distance": cfg.copy_distance is None, "correlation": cfg.copy_correlation is None},
        "min_distance": float(m.distance.min()),
        "median_distance": float(np.median(m.distance)),
        "max_correlation": float(m.correlation.max()),
        "median_correlation": float(np.median(m.correlation)),
        "near_copies": [  # stream indices: synthetic image i looks like real image j; the closest first, 100 at most
            {
                "synthetic": int(f_idx[i]),
                "real": int(r_idx[m.nearest_index[i]]),
                "distance": float(m.distance[i]),
                "real_by_pixels": int(r_idx[m.pixel_index[i]]),
                "correlation": float(m.correlation[i]),
            }
            for i in sorted(np.flatnonzero(m.flagged), key=lambda i: m.distance[i])[:100]
        ],
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """One line per metric for a command's output: its headline value, or that it was skipped and why."""
    headline = {
        "fid": lambda v: f"{v:.4g}",
        "fid_domain": lambda v: f"{v:.4g}",
        "prdc": lambda v: ", ".join(
            f"{k} {v[k]:.3f}" for k in ("precision", "recall", "density", "coverage")
        ),
        "ms_ssim": lambda v: (
            f"synthetic {v['synthetic']:.3f}" + (f", real {v['real']:.3f}" if v["real"] is not None else "")
        ),
        "memorisation": lambda v: f"{v['flagged']} of {v['checked']} synthetic images flagged as near-copies",
        "utility": lambda v: ", ".join(
            f"{arm} macro AUROC "
            + ("n/a" if v[arm]["macro_auroc"] is None else f"{v[arm]['macro_auroc']:.3f}")
            for arm in ("synthetic", "real")
        ),
    }
    lines = []
    for key, show in headline.items():
        value = report.get(key)
        reason = report.get("skipped", {}).get(key)
        lines.append(
            f"{key}: " + (show(value) if value is not None else f"skipped: {reason or 'not computed'}")
        )
    return lines
