"""Image metrics: the mathematics on random features, streaming, skips and the JSON report (all on CPU, seconds)."""

import json

import numpy as np
import pytest
import torch
from scipy import linalg

from inference.ml.phantoms import FINDINGS, generate_phantom
from training.ml.metrics import images as metrics
from training.ml.metrics import sets as set_metrics
from training.ml.metrics.features import (
    FeatureStats,
    MetricSkipped,
    batches,
    build_extractors,
    extract_features,
    fid,
    inception_fid,
    random_features,
    timm_features,
)
from training.ml.metrics.images import MetricsConfig, image_metrics, report_lines
from training.ml.metrics.sets import downstream_utility, memorisation, ms_ssim_diversity, multi_hot, prdc


def phantoms(n: int, start: int = 0, **kw) -> list[np.ndarray]:
    return [generate_phantom(seed=start + i, size=64, **kw).image for i in range(n)]


@pytest.fixture(scope="module")
def extractor():
    return random_features(dim=32, seed=0)


@pytest.fixture(scope="module")
def real_images():
    return phantoms(120)


@pytest.fixture(scope="module")
def other_images():
    return phantoms(120, start=10_000)


def reference_fid(x: np.ndarray, y: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance on all features at once, the straightforward way."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2)).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# --- FID ---------------------------------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero(extractor, real_images):
    stats = FeatureStats.of(extract_features(real_images, extractor))
    assert abs(fid(stats, stats)) < 1e-6 * np.trace(stats.cov)


def test_fid_agrees_with_a_scipy_reference(extractor, real_images, other_images):
    x, y = (extract_features(s, extractor).astype(np.float64) for s in (real_images, other_images))
    expected = reference_fid(x, y)
    assert expected > 0
    assert fid(FeatureStats.of(x), FeatureStats.of(y)) == pytest.approx(expected, rel=1e-6)


def test_fid_on_gaussians_matches_the_closed_form():
    # Diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    real, fake = (
        FeatureStats(3, 10, np.zeros(3), np.diag(a) * 9),
        FeatureStats(3, 10, np.ones(3), np.diag(b) * 9),
    )
    assert fid(real, fake) == pytest.approx(3 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), rel=1e-9)


def test_shifting_one_set_raises_fid(extractor, real_images, other_images):
    real = FeatureStats.of(extract_features(real_images, extractor))
    same = fid(real, FeatureStats.of(extract_features(other_images, extractor)))
    brighter = [np.clip(im.astype(int) + 40, 0, 255).astype(np.uint8) for im in other_images]
    shifted = fid(real, FeatureStats.of(extract_features(brighter, extractor)))
    assert shifted > 5 * same


def test_streaming_in_batches_equals_all_at_once(extractor, real_images):
    feats = (
        extract_features(real_images, extractor).astype(np.float64) + 1e3
    )  # a large offset tests stability
    stats = FeatureStats(feats.shape[1])
    for i in range(0, len(feats), 7):
        stats.update(feats[i : i + 7])
    halves = FeatureStats.of(feats[:50]).merge(FeatureStats.of(feats[50:]))
    for s in (stats, halves):
        assert s.n == len(feats)
        np.testing.assert_allclose(s.mean, feats.mean(0), rtol=1e-12)
        np.testing.assert_allclose(s.cov, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-12)
    # The extractor sees the same pixels whatever the batch size.
    one_by_one = extract_features(iter(real_images[:20]), extractor, batch_size=1)
    np.testing.assert_allclose(
        one_by_one, extract_features(real_images[:20], extractor, batch_size=16), atol=1e-5
    )


def test_stats_save_and_load(tmp_path, extractor, real_images):
    stats = FeatureStats.of(extract_features(real_images[:30], extractor))
    stats.save(tmp_path / "real.npz")
    again = FeatureStats.load(tmp_path / "real.npz")
    assert again.n == 30 and np.array_equal(again.mean, stats.mean) and np.array_equal(again.m2, stats.m2)


def test_batches_group_same_sizes_and_reject_colour():
    imgs = [np.zeros((8, 8), np.uint8)] * 3 + [np.zeros((4, 8), np.uint8)] + [np.zeros((8, 8), np.uint8)]
    assert [b.shape for b in batches(iter(imgs), 2)] == [(2, 8, 8), (1, 8, 8), (1, 4, 8), (1, 8, 8)]
    with pytest.raises(ValueError, match="uint8 grayscale"):
        list(batches([np.zeros((8, 8, 3), np.uint8)], 2))


# --- PRDC, memorisation, MS-SSIM -----------------------------------------------------------------------------


def test_prdc_identical_and_far_apart_sets():
    x = np.random.default_rng(0).normal(size=(200, 16))
    same = prdc(x, x.copy(), k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0)
    far = prdc(x, x + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_matches_the_papers_formulas_with_small_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    real, fake, k = rng.normal(size=(60, 8)), rng.normal(0.3, 1.2, size=(50, 8)), 3
    d_rr, d_ff = (
        linalg.norm(real[:, None] - real[None], axis=2),
        linalg.norm(fake[:, None] - fake[None], axis=2),
    )
    d_rf = linalg.norm(real[:, None] - fake[None], axis=2)
    r_real, r_fake = np.sort(d_rr, 1)[:, k], np.sort(d_ff, 1)[:, k]  # Naeem et al.'s reference code
    expected = {
        "precision": (d_rf < r_real[:, None]).any(0).mean(),
        "recall": (d_rf < r_fake[None, :]).any(1).mean(),
        "density": (1 / k) * (d_rf < r_real[:, None]).sum(0).mean(),
        "coverage": (d_rf.min(1) < r_real).mean(),
    }
    monkeypatch.setattr(set_metrics, "_CHUNK", 7)
    got = prdc(real, fake, k=k)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_memorisation_flags_an_exact_copy_and_not_a_different_image(extractor, real_images):
    fake = [real_images[3].copy(), generate_phantom(seed=999, size=64).image]
    thumbs = [np.stack([metrics._thumb(im, 32) for im in s]) for s in (real_images, fake)]
    m = memorisation(
        extract_features(real_images, extractor),
        extract_features(fake, extractor),
        real_thumbs=thumbs[0],
        fake_thumbs=thumbs[1],
    )
    assert m.flagged.tolist() == [True, False] and m.flagged_count == 1
    assert m.nearest_index[0] == 3 and m.pixel_index[0] == 3
    assert m.distance[0] == pytest.approx(0, abs=1e-9) and m.correlation[0] == pytest.approx(1)
    assert 0 < m.threshold < m.distance[1]
    fixed = memorisation(
        extract_features(real_images, extractor), extract_features(fake, extractor), threshold=1e-6
    )
    assert fixed.flagged.tolist() == [True, False] and fixed.correlation is None


def test_ms_ssim_on_64_px_images(real_images):
    assert set_metrics._msssim_setup(64) == (
        11,
        pytest.approx((0.0448 / 0.6305, 0.2856 / 0.6305, 0.3001 / 0.6305)),
    )
    assert len(set_metrics._msssim_setup(256)[1]) == 5 and len(set_metrics._msssim_setup(128)[1]) == 4
    same = ms_ssim_diversity([real_images[0]] * 2, pairs=5)
    assert same["mean"] == pytest.approx(1.0, abs=1e-5) and same["scales"] == 3
    varied = ms_ssim_diversity(real_images[:30], pairs=40, seed=1)
    noise = [np.random.default_rng(i).integers(0, 256, (64, 64), dtype=np.uint8) for i in range(30)]
    assert 0 < ms_ssim_diversity(noise, pairs=40)["mean"] < varied["mean"] < 1 and varied["pairs"] == 40
    assert (
        ms_ssim_diversity([im[:16, :16] for im in real_images[:3]])["scales"] == 1
    )  # plain SSIM below 22 px


# --- downstream utility --------------------------------------------------------------------------------------


def labelled_phantoms(n: int, start: int) -> tuple[list[np.ndarray], list[tuple[str, ...]]]:
    """Each finding present in about half the studies, so every AUROC is defined."""
    rng = np.random.default_rng(start)
    ps = [
        generate_phantom(seed=start + i, size=64, findings=[f for f in FINDINGS if rng.uniform() < 0.5])
        for i in range(n)
    ]
    return [p.image for p in ps], [p.findings for p in ps]


def test_downstream_utility_on_phantoms(extractor):
    sets = [labelled_phantoms(n, start) for n, start in ((60, 0), (60, 1000), (40, 2000))]
    (fake, y_fake), (real, y_real), (test, y_test) = [
        (extract_features(x, extractor), multi_hot(y, FINDINGS)) for x, y in sets
    ]
    out = downstream_utility((fake, y_fake), (real, y_real), (test, y_test), findings=FINDINGS)
    assert out["n_train"] == 60 and out["n_test"] == 40 and out["reasons"] == {}
    for arm in ("synthetic", "real"):
        assert set(out[arm]["auroc"]) == set(FINDINGS)
        assert all(0 <= v <= 1 for v in out[arm]["auroc"].values())
        assert 0 <= out[arm]["macro_auroc"] <= 1
    assert out["real"]["auroc"]["cardiomegaly"] > 0.7  # the big heart is visible even to random features


def test_utility_gives_a_reason_when_a_finding_has_one_class(extractor):
    (x, y) = labelled_phantoms(30, 0)
    feats, labels = extract_features(x, extractor), multi_hot(y, FINDINGS)
    labels[:, FINDINGS.index("nodule")] = 0
    out = downstream_utility((feats, labels), (feats, labels), (feats, labels), findings=FINDINGS)
    assert out["synthetic"]["auroc"]["nodule"] is None and "all negative" in out["reasons"]["nodule"]


# --- weights, skips and the report --------------------------------------------------------------------------


def test_missing_or_bad_weights_raise_metric_skipped(tmp_path):
    with pytest.raises(MetricSkipped, match="no FID Inception weights configured"):
        inception_fid(None)
    with pytest.raises(MetricSkipped, match="not found"):
        inception_fid(tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MetricSkipped, match="could not be read"):
        inception_fid(tmp_path / "bad.pth")
    torch.save({"x": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(MetricSkipped, match="do not fit"):
        inception_fid(tmp_path / "other.pth")
    with pytest.raises(MetricSkipped, match="no CXR feature model"):
        timm_features(None, None)
    fid_net, domain_net, skipped = build_extractors(inception_weights=tmp_path / "nope.pth")
    assert fid_net is None and domain_net is None
    assert "not found" in skipped["fid"] and skipped["fid_domain"] == "no CXR feature model configured"


def test_inception_builder_loads_a_local_state_dict(tmp_path):
    import torchvision

    # The FID network's tensors have torchvision's names (1008 classes); random values stand in for the weights.
    net = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, num_classes=1008
    )
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    fid_net = inception_fid(tmp_path / "inception.pth")
    feats = fid_net(np.stack(phantoms(2)))
    assert fid_net.dim == 2048 and feats.shape == (2, 2048) and np.isfinite(feats).all()


def test_timm_builder_adapts_a_three_channel_stem(tmp_path):
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(tmp_path / "cxr.safetensors"))
    net = timm_features("test_resnet", tmp_path / "cxr.safetensors", in_chans=1)
    assert net(np.stack(phantoms(2))).shape == (2, net.dim)


def test_report_without_weights_skips_with_reasons_and_is_strict_json(real_images, other_images):
    cfg = MetricsConfig.tiny()
    report = image_metrics(
        iter(real_images[:60]), (im for im in other_images[:40]), extractor=None, config=cfg
    )
    assert report["fid"] is None and report["skipped"]["fid"] == "no FID Inception weights configured"
    assert report["fid_domain"] is None and "CXR" in report["skipped"]["fid_domain"]
    assert report["utility"] is None and "labels" in report["skipped"]["utility"]
    assert report["features"]["embedding"].startswith("random-conv")
    assert 0 <= report["prdc"]["precision"] <= 1 and report["ms_ssim"]["synthetic"] > 0
    json.dumps(report, allow_nan=False)
    lines = report_lines(report)
    assert "fid: skipped: no FID Inception weights configured" in lines
    assert any(line.startswith("prdc: precision") for line in lines)
    few = image_metrics(iter(real_images[:3]), iter(other_images[:1]), extractor=None, config=cfg)
    assert few["prdc"] is None and "more than 5" in few["skipped"]["prdc"]
    assert few["ms_ssim"] is None and "at least 2" in few["skipped"]["ms_ssim"]
    json.dumps(few, allow_nan=False)


def test_full_report_on_phantoms(extractor):
    real, y_real = labelled_phantoms(90, 0)
    fake, y_fake = labelled_phantoms(50, 5000)
    fake[7] = real[11].copy()  # one memorised image
    report = image_metrics(
        iter(real),
        iter(fake),
        extractor=extractor,
        domain_extractor=random_features(dim=16, seed=1),
        real_findings=iter(y_real),
        fake_findings=iter(y_fake),
        config=MetricsConfig.tiny(),
    )
    json.dumps(report, allow_nan=False)
    assert report["n_real"] == 90 and report["n_synthetic"] == 50
    assert report["fid"] > 0 and report["fid_domain"] > 0 and report["skipped"] == {}
    assert report["features"]["embedding"] == "random-conv-16 (seed 1)"  # the domain features, when given
    mem = report["memorisation"]
    assert {"synthetic": 7, "real": 11} in [
        {k: c[k] for k in ("synthetic", "real")} for c in mem["near_copies"]
    ]
    utility = report["utility"]
    assert utility["n_test"] > 10 and all(
        0 <= v <= 1 for v in utility["real"]["auroc"].values() if v is not None
    )


def test_labels_must_match_the_images(extractor, real_images):
    with pytest.raises(ValueError, match="fewer finding labels"):
        image_metrics(
            real_images[:10],
            real_images[:10],
            extractor=extractor,
            real_findings=[()] * 9,
            fake_findings=[()] * 10,
            config=MetricsConfig.tiny(),
        )


def test_module_imports_no_django():
    import subprocess
    import sys

    code = "import sys, training.ml.metrics.images, training.ml.metrics.sets; print(any(m.startswith('django') for m in sys.modules))"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
