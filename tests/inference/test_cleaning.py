"""Text cleaning on JPEG'd phantoms with burned-in text: the classical detector's mask against the ground truth,
OpenCV inpainting against the clean image, and the SAM and SD2-inpainting stages with tiny random models."""

from dataclasses import fields

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from inference.ml.cleaning import Box, CleaningConfig, DetectorNotConfiguredError, detect_text
from inference.ml.phantoms import generate_phantom
from inference.ml.sam import build_tiny_sam
from inference.ml.text_removal import clean_image, inpaint, refine_with_sam, resolve_refine

SEEDS = range(10)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU extra threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _phantoms(burn_in_text: bool):
    return [generate_phantom(seed=s, size=512, burn_in_text=burn_in_text, jpeg_quality=75) for s in SEEDS]


@pytest.fixture(scope="module")
def phantoms():
    return _phantoms(True)


@pytest.fixture(scope="module")
def detections(phantoms):
    return [detect_text(p.image, CleaningConfig()) for p in phantoms]


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    mse = np.mean((a[where].astype(np.float64) - b[where]) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def _inside(boxes: list[Box], shape) -> np.ndarray:
    inside = np.zeros(shape, bool)
    for b in boxes:
        inside[b.y0 : b.y1, b.x0 : b.x1] = True
    return inside


def test_classical_mask_matches_the_burned_in_pixels(phantoms, detections):
    inter = union = 0
    for p, (_, mask) in zip(phantoms, detections, strict=True):
        i, u = (mask & p.text_mask).sum(), (mask | p.text_mask).sum()
        inter, union = inter + i, union + u
        assert i / u >= 0.5, f"seed {p.seed}: IoU {i / u:.3f}"
        assert (mask & ~p.text_mask).mean() <= 0.01, f"seed {p.seed}: too many pixels outside the text"
    assert inter / union >= 0.7, f"pooled IoU {inter / union:.3f}"


def test_boxes_hold_the_mask(phantoms, detections):
    for p, (boxes, mask) in zip(phantoms, detections, strict=True):
        assert boxes and all(0 <= b.x0 < b.x1 <= 512 and 0 <= b.y0 < b.y1 <= 512 for b in boxes)
        assert not (mask & ~_inside(boxes, mask.shape)).any(), f"seed {p.seed}"


def test_images_without_text_give_an_almost_empty_mask():
    for p in _phantoms(False):
        boxes, mask = detect_text(p.image)
        assert mask.mean() <= 0.001, f"seed {p.seed}: {mask.mean():.4%} flagged"


def test_opencv_inpainting_brings_the_text_pixels_back_towards_the_clean_image(phantoms):
    for p in phantoms:
        result = clean_image(p.image, CleaningConfig())
        gain = _psnr(result.cleaned, p.clean, p.text_mask) - _psnr(p.image, p.clean, p.text_mask)
        assert gain >= 10, f"seed {p.seed}: PSNR gain {gain:.1f} dB"
        outside = ~result.inpaint_mask
        assert np.array_equal(result.cleaned[outside], p.image[outside])
        assert result.refine == "classical" and result.inpainter == "telea"
        assert set(result.timings_ms) == {"detect", "refine", "inpaint", "total"}


def test_random_tiny_sam_runs_and_keeps_masks_inside_their_boxes(phantoms, detections):
    predictor = SamPredictor(build_tiny_sam(seed=0))
    for p, (boxes, mask) in list(zip(phantoms, detections, strict=True))[:3]:
        sam_mask = refine_with_sam(p.image, boxes, predictor)
        assert sam_mask.any() and not (sam_mask & ~_inside(boxes, sam_mask.shape)).any()
        result = clean_image(p.image, CleaningConfig(refine="sam"), predictor=predictor)
        assert result.refine == "sam" and not (result.mask & ~_inside(result.boxes, mask.shape)).any()
        both = clean_image(p.image, CleaningConfig(refine="sam_and_classical"), predictor=predictor)
        assert not (both.mask & ~result.mask).any()


def test_refine_choice():
    tiny = SamPredictor(build_tiny_sam(seed=0))
    assert resolve_refine(CleaningConfig(), None) == "classical"
    assert resolve_refine(CleaningConfig(), tiny) == "classical"  # a random tiny SAM cannot refine anything
    assert resolve_refine(CleaningConfig(refine="sam"), tiny) == "sam"
    with pytest.raises(ValueError, match="needs a SamPredictor"):
        clean_image(np.zeros((64, 64), np.uint8), CleaningConfig(refine="sam_and_classical"))


def test_ocr_detector_is_an_interface_only():
    image = generate_phantom(seed=0, size=128, burn_in_text=True).image
    with pytest.raises(DetectorNotConfiguredError, match="no OCR model was given"):
        detect_text(image, CleaningConfig(detector="ocr"))
    p = generate_phantom(seed=0, size=512, burn_in_text=True, jpeg_quality=75)
    boxes, mask = detect_text(p.image, CleaningConfig(detector="ocr"), ocr=lambda gray: p.text_boxes)
    assert boxes == [Box(*b) for b in p.text_boxes]
    assert (mask & p.text_mask).sum() / (mask | p.text_mask).sum() >= 0.7


def test_colour_input_and_validation():
    p = generate_phantom(seed=4, size=256, burn_in_text=True, jpeg_quality=75)
    rgb = np.repeat(p.image[..., None], 3, axis=2)
    result = clean_image(rgb)
    assert result.cleaned.shape == rgb.shape and result.mask.any()
    assert np.array_equal(result.cleaned[~result.inpaint_mask], rgb[~result.inpaint_mask])
    with pytest.raises(ValueError, match="uint8"):
        clean_image(p.image.astype(np.float32))
    assert np.array_equal(inpaint(p.image, np.zeros(p.image.shape, bool)), p.image)


def test_config_documents_every_field():
    assert all(f.metadata.get("help") for f in fields(CleaningConfig))
    assert CleaningConfig.tiny().sd_steps < CleaningConfig().sd_steps


# --- SD2-inpainting with a tiny random pipeline ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_inpaint_pipe(tmp_path_factory):
    from diffusers import StableDiffusionInpaintPipeline

    from inference.ml.tiny import build_tiny_sd

    path = build_tiny_sd(tmp_path_factory.mktemp("tiny-models") / "sd-inpaint", inpaint=True)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(path), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


def test_sd_inpainting_changes_only_the_masked_pixels(tiny_inpaint_pipe):
    cfg = CleaningConfig.tiny()
    p = generate_phantom(seed=2, size=64, burn_in_text=True)
    result = clean_image(p.image, cfg, sd_inpaint_pipe=tiny_inpaint_pipe)
    assert result.inpainter == "sd" and result.inpaint_mask.any()
    outside = ~result.inpaint_mask
    assert np.array_equal(result.cleaned[outside], p.image[outside])
    assert (result.cleaned[result.inpaint_mask] != p.image[result.inpaint_mask]).any()
    again = clean_image(p.image, cfg, sd_inpaint_pipe=tiny_inpaint_pipe)
    assert np.array_equal(again.cleaned, result.cleaned)  # the sampler is seeded from the config


@pytest.mark.parametrize("shape", [(60, 50), (60, 50, 3)])
def test_sd_inpainting_handles_sizes_off_the_8_grid_and_colour(tiny_inpaint_pipe, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    mask = np.zeros(shape[:2], bool)
    mask[10:30, 12:40] = True
    out = inpaint(image, mask, CleaningConfig.tiny(), tiny_inpaint_pipe)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])
    resized = inpaint(image, mask, CleaningConfig(sd_steps=2, sd_resolution=32), tiny_inpaint_pipe)
    assert resized.shape == image.shape and np.array_equal(resized[~mask], image[~mask])
