"""Procedural chest-radiograph phantoms: demo "real" images and data for the text-cleaning benchmark.

The generator works in a normalised frame (0..1 across the image; the patient's right is on the image
left, as radiographs are read) and builds an attenuation map from smooth layers: body soft tissue minus
the air in the lungs, heart and mediastinum, bones, vessels and the chosen findings. The map is blurred,
slightly rotated, exposed and given detector noise. Burned-in text is drawn last onto a copy, so `clean`
and `image` differ only inside `text_mask`.

Randomness comes from independent streams spawned from the seed (anatomy, findings, text, noise): the same
seed with different `findings` is the same patient with only the findings changed, and turning on
burned-in text never changes the anatomy.

The drawing primitives and the findings are in `inference.ml.phantom_findings`, the burned-in text in
`inference.ml.phantom_text`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from inference.ml.config import option
from inference.ml.phantom_findings import FINDING_DRAWERS, blur, draw_line, fill, lung
from inference.ml.phantom_text import REFERENCE_SIZE, burn_in

FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural_effusion", "pneumothorax", "nodule", "consolidation")
#: The words the report uses for each finding, for label parsers and tests.
FINDING_TERMS: dict[str, str] = {
    "cardiomegaly": "cardiomegaly",
    "pleural_effusion": "pleural effusion",
    "pneumothorax": "pneumothorax",
    "nodule": "nodule",
    "consolidation": "consolidation",
}


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that shapes a phantom except the seed and the per-call switches."""

    size: int = option(512, "Output width and height, px.")
    p_cardiomegaly: float = option(0.2, "Chance of cardiomegaly when findings=None.")
    p_pleural_effusion: float = option(0.15, "Chance of a pleural effusion when findings=None.")
    p_pneumothorax: float = option(0.08, "Chance of a pneumothorax when findings=None.")
    p_nodule: float = option(0.12, "Chance of a solitary pulmonary nodule when findings=None.")
    p_consolidation: float = option(0.15, "Chance of a patch of consolidation when findings=None.")
    p_ap_view: float = option(0.25, "Chance of an AP portable study instead of a PA one.")
    text_height_px: tuple[int, int] = option((8, 24), "Min and max height of burned-in text at 512 px, px.")
    min_text_height_px: int = option(5, "Floor on the scaled text height so small images stay legible, px.")
    max_text_items: int = option(4, "Most burned-in strings; at least one when text is on.")
    p_marker: float = option(0.85, "Chance of a boxed R/L laterality marker besides the strings.")
    p_ecg_leads: float = option(0.3, "Chance of ECG electrodes with lead wires (part of the text mask).")
    text_intensity: tuple[int, int] = option((200, 255), "Grey-level range of burned-in pixels, 0-255.")
    noise_sigma: float = option(0.012, "Detector noise std, fraction of full scale.")
    blur_sigma_px: float = option(1.0, "Gaussian blur of the anatomy at 512 px, px; scaled with size.")
    field_of_view_mm: float = option(380.0, "Physical width the image spans, mm; sizes nodules in the report.")

    @classmethod
    def tiny(cls) -> PhantomConfig:
        return cls(size=64)


@dataclass(frozen=True, eq=False)
class Phantom:
    """One generated study with its ground truth; arrays are H x W (no channel axis)."""

    image: np.ndarray  # uint8 HxW, what the scanner gives: burned-in text included, JPEG'd if asked
    clean: np.ndarray  # uint8 HxW, the same image without text; equal to `image` outside the mask pre-JPEG
    text_mask: np.ndarray  # bool HxW, exactly the burned-in pixels (drawn aliased, so no dilation needed)
    text_boxes: list[tuple[int, int, int, int]]  # (x0, y0, x1, y1) per element, x1/y1 exclusive
    text_labels: tuple[str, ...]  # the string drawn for each box; "MARKER R/L" and "ECG" for the others
    findings: tuple[str, ...]  # in FINDINGS order
    report: str
    seed: int
    cardiothoracic_ratio: float  # widest heart / widest inner thorax, measured on the drawn masks
    view: str  # "PA" or "AP"


@dataclass(frozen=True)
class _Layout:
    """The patient: where the anatomy sits (fractions of the image) and how the film was exposed."""

    cx: float
    hw: float  # half the inner thorax width
    apex: float
    dome: tuple[float, float]  # hemidiaphragm tops, (patient right, patient left)
    cp: tuple[float, float]  # costophrenic angles, below the domes
    ctr: float
    air: float
    angle: float
    scale: float
    gamma: float
    lo: float
    hi: float
    view: str


def generate_phantom(
    *,
    seed: int,
    size: int | None = None,
    findings: Sequence[str] | None = None,
    burn_in_text: bool = False,
    jpeg_quality: int | None = None,
    config: PhantomConfig | None = None,
) -> Phantom:
    """One phantom. `size` defaults to `config.size`; `findings=None` draws them with the config's
    probabilities and `()` is a normal study; `seed` is a non-negative int."""
    cfg = config or PhantomConfig()
    size = cfg.size if size is None else size
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    anat_ss, find_ss, text_ss, noise_ss = np.random.SeedSequence(seed).spawn(4)
    choose_ss, *per_finding = find_ss.spawn(1 + len(FINDINGS))  # adding a finding never moves another
    chosen = _choose_findings(findings, cfg, np.random.default_rng(choose_ss))
    rng = np.random.default_rng(anat_ss)
    lay = _sample_layout(rng, cfg, cardiomegaly="cardiomegaly" in chosen)
    scene = _Scene(lay, size, cfg)
    scene.vessels = _vessels(rng, lay, size)
    sentences = {
        name: FINDING_DRAWERS[name](np.random.default_rng(ss), scene)
        for name, ss in zip(FINDINGS, per_finding, strict=True)
        if name in chosen and name in FINDING_DRAWERS
    }
    clean = _expose(_attenuation(scene, rng), lay, cfg, np.random.default_rng(noise_ss))
    image, mask, boxes, labels = clean, np.zeros(clean.shape, bool), [], ()
    if burn_in_text:
        image, mask, boxes, labels = burn_in(clean, np.random.default_rng(text_ss), cfg, lay)
    if jpeg_quality is not None:
        _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        image = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return Phantom(
        image=image.copy() if image is clean else image,
        clean=clean,
        text_mask=mask,
        text_boxes=boxes,
        text_labels=labels,
        findings=chosen,
        report=_report(lay.view, chosen, sentences, scene.ctr),
        seed=seed,
        cardiothoracic_ratio=scene.ctr,
        view=lay.view,
    )


def generate_phantoms(n: int, *, seed: int, **kwargs: Any) -> Iterator[Phantom]:
    """`n` phantoms; the i-th equals `generate_phantom(seed=seed + i, **kwargs)`."""
    for i in range(n):
        yield generate_phantom(seed=seed + i, **kwargs)


def _choose_findings(findings: Sequence[str] | None, cfg: PhantomConfig, rng) -> tuple[str, ...]:
    if findings is None:
        draws = rng.uniform(size=len(FINDINGS))
        return tuple(n for n, u in zip(FINDINGS, draws, strict=True) if u < getattr(cfg, f"p_{n}"))
    if isinstance(findings, str):
        raise TypeError("findings must be a sequence of names, not a single string")
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; choose from {FINDINGS}")
    return tuple(n for n in FINDINGS if n in findings)


def _sample_layout(rng, cfg: PhantomConfig, *, cardiomegaly: bool) -> _Layout:
    u_ctr = rng.uniform()  # drawn either way, so cardiomegaly enlarges this patient's own heart
    dome_r = rng.uniform(0.62, 0.68)
    dome_l = dome_r + rng.uniform(0.01, 0.04)  # the liver holds the right hemidiaphragm higher
    return _Layout(
        cx=0.5 + rng.normal(0, 0.012),
        hw=rng.uniform(0.35, 0.40),
        apex=rng.uniform(0.12, 0.17),
        dome=(dome_r, dome_l),
        cp=(dome_r + rng.uniform(0.08, 0.11), dome_l + rng.uniform(0.08, 0.11)),
        ctr=0.56 + 0.1 * u_ctr if cardiomegaly else 0.40 + 0.08 * u_ctr,
        air=rng.uniform(0.40, 0.47),
        angle=rng.uniform(-3, 3),
        scale=rng.uniform(0.95, 1.04),
        gamma=rng.uniform(0.85, 1.2),
        lo=rng.uniform(-0.03, 0.03),
        hi=rng.uniform(0.86, 0.97),
        view="AP" if rng.uniform() < cfg.p_ap_view else "PA",
    )


# Drawing works on float32 maps in 0..1; shapes are rasterised anti-aliased on uint8 with 4 bits of
# sub-pixel precision, so small images keep smooth outlines.


class _Scene:
    """The maps that findings edit before the attenuation is summed."""

    def __init__(self, lay: _Layout, size: int, cfg: PhantomConfig) -> None:
        self.lay, self.size, self.cfg = lay, size, cfg
        self.ys, self.xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
        self.lungs = {s: fill(size, lung(lay, s)) for s in (-1, 1)}
        # Two half-ellipses meeting at the midline: a small right atrium and a left ventricle bulging
        # to the patient's left and lower down, so the silhouette leans to the image right.
        width, yc, dx = lay.ctr * 2 * lay.hw, min(lay.dome) - 0.05, self.xs - lay.cx
        tall = 0.13 + 0.3 * (width - 0.3)
        heart = np.where(
            dx < 0,
            (dx / (0.34 * width)) ** 2 + ((self.ys - yc) / tall) ** 2,
            (dx / (0.66 * width)) ** 2 + ((self.ys - yc - 0.02) / tall) ** 2,
        )
        self.heart = (heart <= 1).astype(np.float32)
        thorax = np.flatnonzero((self.lungs[-1] + self.lungs[1] > 0.5).any(axis=0))
        heart_cols = np.flatnonzero(self.heart[: int(min(lay.dome) * size)].any(axis=0))
        self.ctr = float((heart_cols[-1] - heart_cols[0] + 1) / (thorax[-1] - thorax[0] + 1))
        knob = ((self.xs - lay.cx - 0.055) / 0.032) ** 2 + ((self.ys - 0.31) / 0.03) ** 2 <= 1
        # Some lung stays behind the heart (retrocardiac), so the heart takes most, not all, of the air.
        self.aerated = {s: self.lungs[s] * (1 - 0.8 * self.heart) * (1 - 0.9 * knob) for s in (-1, 1)}
        self.vessels = np.zeros((size, size), np.float32)
        self.extra = np.zeros((size, size), np.float32)  # attenuation added by findings

    def zone(self, y: float) -> str:
        frac = (y - self.lay.apex) / (np.mean(self.lay.dome) - self.lay.apex)
        return "upper" if frac < 1 / 3 else "mid" if frac < 2 / 3 else "lower"

    def pick(self, rng, mask: np.ndarray) -> tuple[float, float]:
        idx = np.flatnonzero(mask.ravel())
        i = int(idx[rng.integers(idx.size)])
        return (i % self.size + 0.5) / self.size, (i // self.size + 0.5) / self.size


def _attenuation(sc: _Scene, rng) -> np.ndarray:
    lay, size, xs, ys = sc.lay, sc.size, sc.xs, sc.ys
    cx, hw, apex = lay.cx, lay.hw, lay.apex
    half = [(0.1, -0.05), (0.11, apex - 0.09), (0.3, apex - 0.06), (0.45, apex - 0.04), (0.53, apex + 0.01)]
    half += [(0.57, apex + 0.1), (0.58, 0.45), (hw + 0.08, 0.58), (hw + 0.07, 1.05)]
    body = fill(size, [(cx + x, y) for x, y in half] + [(cx - x, y) for x, y in half[::-1]]) > 0.5
    # Tissue thins towards the skin, so the body edge fades instead of ending in a step.
    depth = cv2.distanceTransform(body.astype(np.uint8), cv2.DIST_L2, 5) / size
    atten = 0.52 * np.minimum(depth / 0.09, 1) ** 0.7
    atten += 0.08 * np.clip((ys - max(lay.dome)) / 0.06, 0, 1) * body  # liver and bowel below the domes
    # Less air where the lung is thin: along the chest wall and at the apices, which muscle overlaps too;
    # not at the domes, where the posterior recesses keep it thick and the diaphragm edge sharp.
    low = replace(lay, dome=tuple(d + 0.3 for d in lay.dome), cp=tuple(c + 0.3 for c in lay.cp))
    walls = (fill(size, lung(low, -1), lung(low, 1)) > 0.5).astype(np.uint8)
    lung_depth = cv2.distanceTransform(walls, cv2.DIST_L2, 5) / size
    air = lay.air * np.minimum(lung_depth / 0.04, 1) ** 0.4 * (0.82 + 0.18 * np.clip((ys - apex) / 0.3, 0, 1))
    mottle = blur(rng.standard_normal((size, size)).astype(np.float32), 0.008)
    air *= 1 + 0.05 * mottle / (mottle.std() + 1e-6)  # parenchymal texture
    lung_air = blur(sc.aerated[-1] + sc.aerated[1], 0.004)
    atten += 0.08 * blur(sc.vessels, 0.003) * lung_air + sc.extra - air * lung_air
    atten += 0.1 * blur(((np.abs(xs - cx) < 0.07) & (ys < max(lay.dome))).astype(np.float32), 0.02)
    atten += _bones(rng, lay, xs, ys) * np.minimum(depth / 0.02, 1)
    airways = np.zeros((size, size), np.uint8)
    carina = (cx - 0.005, 0.34)
    draw_line(airways, [(cx, -0.02), (cx - 0.008, 0.22), carina], 0.034)
    draw_line(airways, [(cx - 0.07, 0.40), carina, (cx + 0.08, 0.415)], 0.02)
    atten -= 0.11 * blur(airways.astype(np.float32) / 255, 0.004)
    bubble = ((xs - cx - 0.17) / 0.05) ** 2 + ((ys - lay.dome[1] - 0.06) / 0.025) ** 2 <= 1
    return atten - 0.12 * blur(bubble.astype(np.float32), 0.006) * (rng.uniform() < 0.7)  # gastric air


def _vessels(rng, lay: _Layout, size: int) -> np.ndarray:
    """Pulmonary vessels branching out from each hilum, thinner and fainter at each generation."""
    canvas = np.zeros((size, size), np.uint8)
    for s in (-1, 1):
        stack = [(lay.cx + s * 0.1, 0.42, a, 0) for a in np.linspace(-1.2, 1.3, 5) + rng.normal(0, 0.1, 5)]
        while stack:
            x, y, a, gen = stack.pop()
            length = rng.uniform(0.05, 0.09) * 0.85**gen
            x1, y1 = x + s * length * np.cos(a), y + length * np.sin(a)
            draw_line(canvas, [(x, y), (x1, y1)], 0.008 - 0.0018 * gen, 255 - 45 * gen)
            if gen < 3:
                stack += [(x1, y1, a + d, gen + 1) for d in (-rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5))]
    return canvas.astype(np.float32) / 255


def _bones(rng, lay: _Layout, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    size, cx, hw, apex = xs.shape[0], lay.cx, lay.hw, lay.apex
    outer, inner, ant, solid = (np.zeros((size, size), np.uint8) for _ in range(4))
    spacing, t, u = (max(lay.cp) - apex + 0.02) / 9, np.linspace(0, 1, 40), np.linspace(0, 1, 24)
    heads = np.zeros((size, size), np.float32)
    for s in (-1, 1):
        for k in range(10):
            # Posterior ribs arch up from the spine and curve down at the wall; anterior ribs run back
            # down and medially, fainter because they lie further from the detector.
            y0 = apex - 0.03 + k * spacing + rng.normal(0, 0.004)
            reach = hw + 0.025 - 0.02 * max(0, 2 - k)
            x = cx + s * (0.045 + reach * (1 - (1 - t) ** 1.7))
            y = y0 - 0.04 * np.sin(np.pi * t * 0.8) + 0.06 * t**4
            width = 0.018 + 0.0015 * k
            draw_line(outer, np.stack([x, y], 1), width)
            draw_line(inner, np.stack([x, y], 1), width * 0.45)  # hollow middle: cortex is denser than marrow
            ax = x[-1] + (cx + s * 0.12 - x[-1]) * u
            draw_line(ant, np.stack([ax, y[-1] + 0.12 * u + 0.02 * np.sin(np.pi * u)], 1), width * 0.8)
        clav_y = apex + 0.055 - 0.1 * t + 0.018 * np.sin(2 * np.pi * t)
        draw_line(solid, np.stack([cx + s * (0.04 + 0.3 * t), clav_y], 1), 0.026)  # clavicle
        draw_line(solid, [(cx + s * 0.47, apex), (cx + s * 0.5, apex + 0.45)], 0.075)  # humerus
        heads += (xs - cx - s * 0.47) ** 2 + (ys - apex) ** 2 <= 0.06**2
    under_liver = 1 - 0.5 * (ys > max(lay.dome))
    ribs = (outer.astype(np.float32) - 0.5 * inner) / 255 * under_liver
    anterior = ant.astype(np.float32) / 255 * np.clip(np.abs(xs - cx) / 0.1 - 0.8, 0, 1)  # cartilage is clear
    box = np.array([(-0.032, 0), (0.032, 0), (0.032, 0.036), (-0.032, 0.036)])
    vertebrae = [box + (cx, y) for y in np.arange(-0.02, 1.05, 0.047)]
    spine = blur(fill(size, *vertebrae), 0.004)
    limbs = np.maximum(solid.astype(np.float32) / 255, heads)
    return blur(0.1 * ribs + 0.04 * anterior + 0.18 * limbs + 0.07 * spine, 0.002)


def _expose(atten: np.ndarray, lay: _Layout, cfg: PhantomConfig, rng) -> np.ndarray:
    size = atten.shape[0]
    atten = blur(atten.astype(np.float32), cfg.blur_sigma_px / REFERENCE_SIZE)
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), lay.angle, lay.scale)  # patient positioning
    atten = cv2.warpAffine(atten, turn, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    signal = np.clip((atten - lay.lo) / (lay.hi - lay.lo), 0, 1) ** lay.gamma
    grain = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.7)
    signal += cfg.noise_sigma * grain / (grain.std() + 1e-6)
    return np.clip(signal * 255 + 0.5, 0, 255).astype(np.uint8)


def _report(view: str, chosen: tuple[str, ...], sentences: dict[str, str], ctr: float) -> str:
    parts = ["AP portable chest radiograph." if view == "AP" else "PA chest radiograph."]
    if "cardiomegaly" in chosen:
        parts.append(f"The heart is enlarged (cardiothoracic ratio {ctr:.2f}), consistent with cardiomegaly.")
    else:
        parts.append("Heart size is normal.")
    parts += [sentences[n] for n in chosen if n in sentences]
    if not {"pneumothorax", "nodule", "consolidation"} & set(chosen):
        parts.append("The lungs are clear.")
    absent = [FINDING_TERMS[n] for n in ("pleural_effusion", "pneumothorax") if n not in chosen]
    if absent:
        parts.append(f"No {' or '.join(absent)}.")
    if chosen:
        parts.append("Impression: " + ", ".join(FINDING_TERMS[n] for n in chosen) + ".")
    else:
        parts.append("No acute cardiopulmonary abnormality.")
    return " ".join(parts)
