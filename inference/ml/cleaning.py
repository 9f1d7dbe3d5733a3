"""Remove burned-in text, laterality markers and ECG leads from radiographs: detect → (SAM) refine → inpaint.
This module holds the settings, the result types and the detector; refining, inpainting and `clean_image` are in
`inference.ml.text_removal`.

Each stage is a pure function of arrays, so the worker, the benchmarks and the tests call the same code:

- `detect_text`: a classical detector. Burned-in overlays are drawn at one flat intensity with aliased, sharp
  edges and thin strokes, while anatomy (ribs, clavicles, spine, diaphragm) is bright too but wide and smooth.
  A white top-hat keeps what is narrower than a few strokes; a high-pass "sharp edge" test keeps only what has
  crisp borders; characters and wire pieces are grouped so a group is judged on its summed evidence; pixels are
  then kept above half-way between the local background and the overlay's local intensity (JPEG ringing and
  blur make a fixed threshold wrong at both low and high contrast).
- `refine_with_sam`: box prompts to a `segment_anything.SamPredictor`, masks always clipped to their boxes.
- `inpaint`: SD2-inpainting through a diffusers `StableDiffusionInpaintPipeline` when one is given (composited
  back only inside the mask), OpenCV Telea otherwise.
- `clean_image`: all three with per-stage timings.

Sizes are in pixels at `reference_size_px` and scale with the image. Models arrive built and placed on their
device by the caller; nothing here picks a device. No Django here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import cv2
import numpy as np

from inference.ml.config import option

__all__ = [
    "Box",
    "CleaningConfig",
    "CleaningResult",
    "DetectorNotConfiguredError",
    "TextDetection",
    "TextDetector",
    "detect_text",
    "mask_boxes",
]


@dataclass(frozen=True)
class CleaningConfig:
    """How an image is cleaned. Pixel sizes are at `reference_size_px` and scale with the image's short side."""

    reference_size_px: int = option(512, "Image size at which the px values below apply, px.")
    detector: Literal["classical", "ocr"] = option(
        "classical", "Text detector; 'ocr' needs an OCR model passed in."
    )
    # classical detector
    background_kernel_px: int = option(15, "Disk for the white top-hat: wider than any stroke (1-5 px), px.")
    highpass_sigma_px: float = option(1.0, "Gaussian sigma of the high-pass that measures edge sharpness, px.")
    edge_threshold: float = option(
        7.0, "Least high-pass response of a sharp stroke pixel, grey levels (0-255)."
    )
    edge_threshold_noise: float = option(
        4.5, "The same, as a multiple of the image's noise sigma; the larger wins."
    )
    candidate_threshold: float = option(10.0, "Least top-hat response of a candidate pixel, grey levels.")
    candidate_threshold_noise: float = option(
        6.5, "The same, as a multiple of the noise sigma; the larger wins."
    )
    edge_gate_px: int = option(7, "Candidates must lie this close (disk diameter) to a sharp-edge pixel, px.")
    group_px: tuple[int, int] = option(
        (9, 5), "Width and height joining characters and wire pieces to a group, px."
    )
    edge_neighbours: int = option(1, "Sharp 8-neighbours a sharp pixel needs to count as edge evidence, count.")
    min_component_edges: int = option(2, "Sharp-edge pixels a component needs to join a group, count.")
    min_group_edges: int = option(
        20, "Sharp-edge pixels a group needs to be kept, count at the reference size."
    )
    min_group_contrast: float = option(
        20.0, "Least top-hat peak of a kept group, grey levels (and at least twice the candidate threshold)."
    )
    min_overlay_level: float = option(
        0.6, "Least mean intensity at a group's sharp edges, from the image's 1st (0) to 99th (1) percentile."
    )
    contrast_window_px: int = option(21, "Window for an overlay's local intensity (disk diameter), px.")
    mask_level: float = option(0.5, "Pixel threshold between local background (0) and overlay intensity (1).")
    core_level: float = option(0.7, "Level a mask piece must reach somewhere (with a sharp edge) to be kept.")
    box_group_px: tuple[int, int] = option((9, 3), "Width and height joining mask pixels into one box, px.")
    box_pad_px: int = option(2, "Margin added around each box, px.")
    # SAM refinement
    refine: Literal["auto", "classical", "sam", "sam_and_classical"] = option(
        "auto",
        "Final mask: the classical one, SAM's, or SAM's within the dilated classical one; 'auto' uses "
        "sam_and_classical for a SAM loaded from a checkpoint (not the tiny kind), classical otherwise.",
    )
    sam_classical_dilate_px: int = option(
        3, "Dilation of the classical mask that bounds SAM's in sam_and_classical, px."
    )
    sam_batch: int = option(64, "Box prompts decoded per SAM call, count.")
    # inpainting
    inpaint_dilate_px: int = option(1, "Dilation of the mask before inpainting, to cover JPEG ringing, px.")
    inpaint_radius_px: float = option(3.0, "Neighbourhood radius of OpenCV inpainting, px.")
    inpaint_method: Literal["telea", "ns"] = option("telea", "OpenCV method when no SD pipeline is given.")
    sd_prompt: str = option("chest radiograph", "Prompt for SD2-inpainting.")
    sd_negative_prompt: str = option(
        "text, letters, watermark", "Negative prompt for SD2-inpainting ('' for none)."
    )
    sd_steps: int = option(25, "Denoising steps of SD2-inpainting.")
    sd_guidance_scale: float = option(7.5, "Classifier-free guidance scale of SD2-inpainting.")
    sd_strength: float = option(1.0, "Noise strength inside the mask, 0-1 (1 replaces the masked content).")
    sd_seed: int = option(0, "Seed of the SD sampler's generator (a CPU generator, so devices agree).")
    sd_resolution: int | None = option(
        None, "Long side SD runs at, px (a multiple of 8); None pads the image to a multiple of 8 instead."
    )

    @classmethod
    def tiny(cls) -> CleaningConfig:
        """For tests with tiny random models: two SD steps, small SAM batches."""
        return cls(sd_steps=2, sd_guidance_scale=2.0, sam_batch=8)


class Box(NamedTuple):
    """A pixel box; x1 and y1 are exclusive, as in `Phantom.text_boxes`."""

    x0: int
    y0: int
    x1: int
    y1: int


class TextDetection(NamedTuple):
    boxes: list[Box]
    mask: np.ndarray  # bool H x W, the detector's pixel mask proposal


class TextDetector(Protocol):
    """An OCR text detector (e.g. a DBNet or CRAFT) whose weights exist locally; returns one box per text run."""

    def __call__(self, gray: np.ndarray) -> list[Box]: ...


class DetectorNotConfiguredError(RuntimeError):
    """The configured detector needs a model that was not given."""


@dataclass(frozen=True, eq=False)
class CleaningResult:
    cleaned: np.ndarray  # uint8, the input's shape
    mask: np.ndarray  # bool H x W, the text mask (before the inpainting dilation)
    boxes: list[Box]
    timings_ms: dict[str, float]  # detect, refine, inpaint, total
    inpaint_mask: np.ndarray  # bool H x W, what was actually inpainted
    refine: str  # the refinement used: "classical", "sam" or "sam_and_classical"
    inpainter: str  # "sd" or the OpenCV method


# --- detection ------------------------------------------------------------------------------------------------------


def image_scale(image: np.ndarray, cfg: CleaningConfig) -> float:
    return min(image.shape[:2]) / cfg.reference_size_px


def scaled_px(value: float, scale: float, *, odd: bool = False, least: int = 1) -> int:
    n = max(least, round(value * scale))
    return n + 1 if odd and n % 2 == 0 else n


def disk(diameter: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))


def as_gray(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a uint8 H x W or H x W x 3 image, got {image.dtype} {image.shape}")
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _noise_sigma(highpass: np.ndarray) -> float:
    """Robust noise sigma of the high-pass (median absolute deviation on a quarter of the pixels)."""
    sample = highpass[::2, ::2]
    return float(1.4826 * np.median(np.abs(sample - np.median(sample))))


def _overlay_mask(
    f: np.ndarray,
    bg: np.ndarray,
    seeds: np.ndarray,
    cfg: CleaningConfig,
    scale: float,
    sharp: np.ndarray | None = None,
) -> np.ndarray:
    """Pixels nearer the overlay's local intensity than the local background, around `seeds`.

    The overlay's intensity is the brightest seed pixel within the contrast window; pieces that never reach
    `core_level` of it (JPEG ringing, anatomy beside a wire) are dropped.
    """
    window = disk(scaled_px(cfg.contrast_window_px, scale, odd=True))
    near = cv2.dilate(seeds.astype(np.uint8), window) > 0
    contrast = np.where(near, cv2.dilate(np.where(seeds, f, 0).astype(np.float32), window) - bg, 0)
    region = cv2.dilate(seeds.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    residual = f - bg
    mask = region & (contrast > 0) & (residual > cfg.mask_level * contrast)
    core = mask & (residual >= cfg.core_level * contrast)
    if sharp is not None:
        core &= sharp
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    has_core = np.zeros(n, bool)
    has_core[labels[core]] = True
    has_core[0] = False
    return has_core[labels]


class _Features(NamedTuple):
    f: np.ndarray  # the image as float32
    bg: np.ndarray  # grey opening: the background under anything narrower than the disk
    residual: np.ndarray  # white top-hat, f - bg
    sharp: np.ndarray  # bool: crisp-edged bright pixels (high-pass above the noise) among the candidates
    low: float  # candidate threshold on the residual, grey levels
    scale: float


def _features(gray: np.ndarray, cfg: CleaningConfig) -> _Features:
    s = image_scale(gray, cfg)
    f = gray.astype(np.float32)
    bg = cv2.morphologyEx(f, cv2.MORPH_OPEN, disk(scaled_px(cfg.background_kernel_px, s, odd=True, least=3)))
    residual = f - bg
    highpass = f - cv2.GaussianBlur(f, (0, 0), max(cfg.highpass_sigma_px * s, 0.5))
    noise = _noise_sigma(highpass)
    low = max(cfg.candidate_threshold, cfg.candidate_threshold_noise * noise)
    sharp = (highpass > max(cfg.edge_threshold, cfg.edge_threshold_noise * noise)) & (residual > low)
    return _Features(f, bg, residual, sharp, low, s)


def _classical_mask(gray: np.ndarray, cfg: CleaningConfig) -> np.ndarray:
    f, bg, residual, sharp, low, s = _features(gray, cfg)
    gate = cv2.dilate(sharp.astype(np.uint8), disk(scaled_px(cfg.edge_gate_px, s, odd=True))) > 0
    candidates = ((residual > low) & gate).astype(np.uint8)

    n, labels = cv2.connectedComponents(candidates, connectivity=8)
    # Evidence counts only sharp pixels with a sharp neighbour: an edge is a run, noise makes isolated pixels.
    ones = np.ones((3, 3), np.float32)
    run = cv2.filter2D(sharp.astype(np.uint8), -1, ones, borderType=cv2.BORDER_CONSTANT) > cfg.edge_neighbours
    edges = np.bincount(labels[sharp & run], minlength=n)
    peak = np.zeros(n, np.float32)
    np.maximum.at(peak, labels.ravel(), residual.ravel())
    member = edges >= cfg.min_component_edges
    member[0] = False
    members = member[labels]

    # Judge groups, not components: a character's dot or a faint stretch of wire lives on its neighbours.
    gx, gy = (scaled_px(v, s) for v in cfg.group_px)
    grouped = cv2.dilate(members.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (gx, gy)))
    ng, group_labels = cv2.connectedComponents(grouped, connectivity=8)
    group_of = np.zeros(n, np.int64)
    group_of[labels[members]] = group_labels[members]
    group_edges = np.bincount(group_of[member], weights=edges[member], minlength=ng)
    group_peak = np.zeros(ng, np.float32)
    np.maximum.at(group_peak, group_of[member], peak[member])
    # Overlays are drawn near white; a faint sharp line in dark lung (a pneumothorax's pleural line) is anatomy.
    on_edge = sharp & members
    group_level = np.bincount(group_of[labels[on_edge]], weights=f[on_edge], minlength=ng) / np.maximum(
        np.bincount(group_of[labels[on_edge]], minlength=ng), 1
    )
    lo, hi = np.percentile(f[::2, ::2], (1, 99))
    good = (group_edges >= cfg.min_group_edges * s) & (group_peak >= max(cfg.min_group_contrast, 2 * low))
    good &= group_level >= lo + cfg.min_overlay_level * max(hi - lo, 1.0)
    good[0] = False
    keep = member & good[group_of]
    return _overlay_mask(f, bg, keep[labels], cfg, s, sharp=sharp)


def mask_boxes(mask: np.ndarray, cfg: CleaningConfig) -> list[Box]:
    """Boxes around runs of mask pixels (characters of a line join into one box), padded and clipped."""
    if not mask.any():
        return []
    s = image_scale(mask, cfg)
    gx, gy = (scaled_px(v, s) for v in cfg.box_group_px)
    joined = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (gx, gy)))
    n, labels = cv2.connectedComponents(joined, connectivity=8)
    ys, xs = np.nonzero(mask)
    which = labels[ys, xs]
    lo_x, lo_y = np.full(n, mask.shape[1]), np.full(n, mask.shape[0])
    hi_x, hi_y = np.full(n, -1), np.full(n, -1)
    np.minimum.at(lo_x, which, xs)
    np.minimum.at(lo_y, which, ys)
    np.maximum.at(hi_x, which, xs)
    np.maximum.at(hi_y, which, ys)
    h, w = mask.shape
    pad = scaled_px(cfg.box_pad_px, s, least=0)
    boxes = [
        Box(
            max(0, int(lo_x[i]) - pad),
            max(0, int(lo_y[i]) - pad),
            min(w, int(hi_x[i]) + 1 + pad),
            min(h, int(hi_y[i]) + 1 + pad),
        )
        for i in range(1, n)
        if hi_x[i] >= 0
    ]
    return sorted(boxes, key=lambda b: (b.y0, b.x0))


def detect_text(
    image: np.ndarray, cfg: CleaningConfig | None = None, *, ocr: TextDetector | None = None
) -> TextDetection:
    """Boxes and a pixel mask of burned-in text, markers and leads; unpacks as `boxes, mask = detect_text(...)`."""
    cfg = cfg or CleaningConfig()
    gray = as_gray(image)
    if cfg.detector == "classical":
        mask = _classical_mask(gray, cfg)
        return TextDetection(mask_boxes(mask, cfg), mask)
    if cfg.detector != "ocr":
        raise ValueError(f"unknown detector {cfg.detector!r}; use 'classical' or 'ocr'")
    if ocr is None:
        raise DetectorNotConfiguredError(
            "CleaningConfig.detector is 'ocr' but no OCR model was given: OCR weights are not bundled and "
            "cannot be downloaded here. Pass ocr=<a TextDetector built from local weights> or use "
            "detector='classical'."
        )
    boxes = [Box(*map(int, b)) for b in ocr(gray)]
    inside = np.zeros(gray.shape, bool)
    for b in boxes:
        inside[b.y0 : b.y1, b.x0 : b.x1] = True
    # Inside the boxes, the classical pixel rule without the grouping: OCR has already said "text here".
    feats = _features(gray, cfg)
    seeds = inside & (feats.residual > feats.low)
    return TextDetection(
        boxes, _overlay_mask(feats.f, feats.bg, seeds, cfg, feats.scale, sharp=feats.sharp) & inside
    )
