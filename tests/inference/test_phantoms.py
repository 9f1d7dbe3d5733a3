import numpy as np
import pytest

from inference.ml.phantoms import (
    FINDING_TERMS,
    FINDINGS,
    Phantom,
    PhantomConfig,
    generate_phantom,
    generate_phantoms,
)

SMALL = 128  # big enough for anatomy to be measurable, small enough to keep the suite fast


def _text_boxes(p: Phantom):
    """Boxes of the burned-in strings and markers (ECG leads are long wires, not text)."""
    return [b for b, label in zip(p.text_boxes, p.text_labels, strict=True) if label != "ECG"]


def test_shapes_and_dtypes():
    p = generate_phantom(seed=0, size=SMALL, burn_in_text=True)
    assert p.image.shape == p.clean.shape == p.text_mask.shape == (SMALL, SMALL)
    assert p.image.dtype == p.clean.dtype == np.uint8
    assert p.text_mask.dtype == bool
    assert len(p.text_boxes) == len(p.text_labels) >= 1
    assert all(isinstance(v, int) for box in p.text_boxes for v in box)
    assert p.seed == 0 and p.view in ("PA", "AP")


def test_default_size_and_tiny_preset():
    assert generate_phantom(seed=1).image.shape == (512, 512)
    assert PhantomConfig.tiny().size == 64
    assert generate_phantom(seed=1, config=PhantomConfig.tiny()).image.shape == (64, 64)


def test_same_arguments_give_identical_bytes():
    kw = dict(seed=7, size=SMALL, burn_in_text=True, jpeg_quality=80)
    a, b = generate_phantom(**kw), generate_phantom(**kw)
    for field in ("image", "clean", "text_mask"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes()
    assert (a.text_boxes, a.report, a.findings) == (b.text_boxes, b.report, b.findings)


def test_different_seeds_differ():
    images = [generate_phantom(seed=s, size=SMALL, findings=()).clean for s in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).mean() > 1.0


def test_anatomy_looks_like_a_chest():
    p = generate_phantom(seed=3, size=256, findings=())
    img = p.clean.astype(float)
    right_lung, left_lung = img[90:140, 50:90].mean(), img[90:140, 170:205].mean()
    mediastinum, abdomen = img[90:140, 118:138].mean(), img[225:250, 60:200].mean()
    assert right_lung < mediastinum - 40 and left_lung < mediastinum - 40  # lungs dark, midline bright
    assert abdomen > right_lung + 40  # below the diaphragm is soft tissue
    assert img[:10, :20].mean() < 40  # air above the shoulders


def test_heart_leans_to_the_patients_left():
    p = generate_phantom(seed=5, size=256, findings=("cardiomegaly",))
    rows = p.clean[150:165].astype(float)  # through the heart, above the domes
    bright = rows.mean(0) > np.percentile(rows.mean(0), 60)
    cols = np.flatnonzero(bright[40:216]) + 40
    assert cols.mean() > 128  # patient's left is the image right


def test_cardiomegaly_has_larger_cardiothoracic_ratio():
    for seed in range(5):
        normal = generate_phantom(seed=seed, size=SMALL, findings=())
        big = generate_phantom(seed=seed, size=SMALL, findings=("cardiomegaly",))
        assert normal.cardiothoracic_ratio < 0.5 < big.cardiothoracic_ratio
        assert big.cardiothoracic_ratio > normal.cardiothoracic_ratio + 0.05
        assert np.count_nonzero(big.clean != normal.clean) > 0


def test_same_seed_is_the_same_patient_whatever_the_findings():
    normal = generate_phantom(seed=6, size=SMALL, findings=())
    sick = generate_phantom(seed=6, size=SMALL, findings=("cardiomegaly",))
    assert np.array_equal(normal.clean[: SMALL // 4], sick.clean[: SMALL // 4])  # neck and apices untouched
    assert f"cardiothoracic ratio {sick.cardiothoracic_ratio:.2f}" in sick.report


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_is_drawn_and_reported(finding):
    normal = generate_phantom(seed=11, size=SMALL, findings=())
    p = generate_phantom(seed=11, size=SMALL, findings=(finding,))
    assert p.findings == (finding,)
    assert FINDING_TERMS[finding] in p.report.lower()
    assert "impression" in p.report.lower() and "no acute" not in p.report.lower()
    changed = np.abs(p.clean.astype(int) - normal.clean.astype(int)) > 8
    assert changed.sum() > 20  # the finding changes the anatomy, not just the text


def test_lateral_findings_name_a_side():
    for finding in ("pleural_effusion", "pneumothorax", "nodule", "consolidation"):
        for seed in range(3):
            report = generate_phantom(seed=seed, size=64, findings=(finding,)).report
            sentence = next(s for s in report.split(". ") if FINDING_TERMS[finding] in s.lower())
            assert ("right" in sentence) != ("left" in sentence), sentence


def test_normal_report():
    p = generate_phantom(seed=4, size=64, findings=())
    assert p.findings == ()
    assert p.report.startswith(("PA chest radiograph.", "AP portable chest radiograph."))
    assert p.report.endswith("No acute cardiopulmonary abnormality.")
    assert "cardiomegaly" not in p.report.lower()


def test_random_findings_follow_config():
    always = PhantomConfig(size=64, **{f"p_{n}": 1.0 for n in FINDINGS})
    never = PhantomConfig(size=64, **{f"p_{n}": 0.0 for n in FINDINGS})
    assert generate_phantom(seed=0, config=always).findings == FINDINGS
    assert generate_phantom(seed=0, config=never).findings == ()


def test_unknown_finding_is_rejected():
    with pytest.raises(ValueError, match="unknown findings"):
        generate_phantom(seed=0, size=64, findings=("fracture",))
    with pytest.raises(TypeError):
        generate_phantom(seed=0, size=64, findings="nodule")


def test_text_mask_empty_without_burn_in():
    p = generate_phantom(seed=0, size=SMALL)
    assert not p.text_mask.any() and p.text_boxes == []
    assert np.array_equal(p.image, p.clean)


def test_burn_in_only_changes_masked_pixels():
    for seed in range(6):
        plain = generate_phantom(seed=seed, size=SMALL)
        p = generate_phantom(seed=seed, size=SMALL, burn_in_text=True)
        assert p.text_mask.any()
        assert np.array_equal(p.clean, plain.clean)  # turning text on never moves the anatomy
        assert np.array_equal(p.image[~p.text_mask], p.clean[~p.text_mask])
        assert p.image[p.text_mask].mean() > 180
        for x0, y0, x1, y1 in p.text_boxes:  # every box holds mask pixels and hugs them
            box = p.text_mask[y0:y1, x0:x1]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()


def test_text_height_at_512():
    heights = []
    for seed in range(8):
        p = generate_phantom(seed=seed, findings=(), burn_in_text=True)
        heights += [y1 - y0 for _, y0, _, y1 in _text_boxes(p)]
    assert heights and all(8 <= h <= 30 for h in heights)


def test_text_stays_legible_when_tiny():
    for seed in range(4):
        p = generate_phantom(seed=seed, config=PhantomConfig.tiny(), burn_in_text=True)
        assert all(y1 - y0 >= 5 for _, y0, _, y1 in _text_boxes(p))


def test_jpeg_changes_pixels_but_keeps_truth():
    raw = generate_phantom(seed=9, size=SMALL, burn_in_text=True)
    jpg = generate_phantom(seed=9, size=SMALL, burn_in_text=True, jpeg_quality=75)
    assert not np.array_equal(raw.image, jpg.image)
    assert np.abs(raw.image.astype(int) - jpg.image.astype(int)).mean() < 6  # lossy, not destroyed
    assert np.array_equal(raw.text_mask, jpg.text_mask)
    assert np.array_equal(raw.clean, jpg.clean)
    assert raw.text_boxes == jpg.text_boxes


def test_generate_phantoms_matches_single_calls():
    batch = list(generate_phantoms(3, seed=20, size=64, burn_in_text=True))
    assert [p.seed for p in batch] == [20, 21, 22]
    assert np.array_equal(batch[1].image, generate_phantom(seed=21, size=64, burn_in_text=True).image)
