"""Procedural chest-radiograph phantoms: demo "real" images and data for the text-cleaning benchmark.

The generator works in a normalised frame (0..1 across the image; the patient's right is on the image
left, as radiographs are read) and builds an attenuation map from smooth layers: body soft tissue minus
the air in the lungs, heart and mediastinum, bones, vessels and the chosen findings. The map is blurred,
slightly rotated, exposed and given detector noise. Burned-in text is drawn last onto a copy, so `clean`
and `image` differ only inside `text_mask`.

Randomness comes from independent streams spawned from the seed (anatomy, findings, text, noise): the same
seed with different `findings` is the same patient with only the findings changed, and turning on
burned-in text never changes the anatomy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from inference.ml.config import option

FINDINGS: tuple[str, ...] = ("cardiomegaly", "pleural_effusion", "pneumothorax", "nodule", "consolidation")
#: The words the report uses for each finding, for label parsers and tests.
FINDING_TERMS: dict[str, str] = {
    "cardiomegaly": "cardiomegaly",
    "pleural_effusion": "pleural effusion",
    "pneumothorax": "pneumothorax",
    "nodule": "nodule",
    "consolidation": "consolidation",
}
_REFERENCE_SIZE = 512  # text heights and blur are given at this size and scaled with the image
_SIDE = {-1: "right", 1: "left"}  # the patient's side; -1 is the image's left half


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
        name: _FINDING_DRAWERS[name](np.random.default_rng(ss), scene)
        for name, ss in zip(FINDINGS, per_finding, strict=True)
        if name in chosen and name in _FINDING_DRAWERS
    }
    clean = _expose(_attenuation(scene, rng), lay, cfg, np.random.default_rng(noise_ss))
    image, mask, boxes, labels = clean, np.zeros(clean.shape, bool), [], ()
    if burn_in_text:
        image, mask, boxes, labels = _burn_in(clean, np.random.default_rng(text_ss), cfg, lay)
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


def _fill(size: int, *polys) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.round(np.asarray(p) * size * 16).astype(np.int32) for p in polys]
    cv2.fillPoly(canvas, pts, 255, cv2.LINE_AA, 4)
    return canvas.astype(np.float32) / 255


def _line(canvas: np.ndarray, pts, width: float, value: int = 255) -> None:
    size = canvas.shape[0]
    pts = [np.round(np.asarray(pts) * size * 16).astype(np.int32)]
    cv2.polylines(canvas, pts, False, value, max(1, round(width * size)), cv2.LINE_AA, 4)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """`sigma` is a fraction of the image size, so the look does not depend on resolution."""
    return cv2.GaussianBlur(img, (0, 0), max(sigma * img.shape[0], 0.4))


def _lung(lay: _Layout, s: int) -> np.ndarray:
    """Outline of one lung: the lateral wall from the apex down to the costophrenic angle, then the dome."""
    dome, cp = lay.dome[(s + 1) // 2], lay.cp[(s + 1) // 2]
    t = np.linspace(0, 1, 48)
    rise, fall = np.sin(np.pi / 2 * np.minimum(t / 0.72, 1)) ** 0.55, 1 - 0.05 * ((t - 0.72) / 0.28) ** 2
    bulge = np.where(t < 0.72, rise, fall)
    wall_x, wall_y = 0.06 + (lay.hw - 0.06) * bulge, lay.apex + (cp - lay.apex) * t
    u = np.linspace(0, 1, 32)
    # Steep at the wall so the costophrenic angle is sharp, highest halfway in, dipping medially.
    dia_x = wall_x[-1] + (0.045 - wall_x[-1]) * u
    dia_y = dome + (cp - dome) * np.clip(1 - 2 * u, 0, None) ** 1.6 + 0.05 * np.clip(2 * u - 1, 0, None) ** 2
    return np.stack([lay.cx + s * np.concatenate([wall_x, dia_x]), np.concatenate([wall_y, dia_y])], axis=1)


class _Scene:
    """The maps that findings edit before the attenuation is summed."""

    def __init__(self, lay: _Layout, size: int, cfg: PhantomConfig) -> None:
        self.lay, self.size, self.cfg = lay, size, cfg
        self.ys, self.xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
        self.lungs = {s: _fill(size, _lung(lay, s)) for s in (-1, 1)}
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
    body = _fill(size, [(cx + x, y) for x, y in half] + [(cx - x, y) for x, y in half[::-1]]) > 0.5
    # Tissue thins towards the skin, so the body edge fades instead of ending in a step.
    depth = cv2.distanceTransform(body.astype(np.uint8), cv2.DIST_L2, 5) / size
    atten = 0.52 * np.minimum(depth / 0.09, 1) ** 0.7
    atten += 0.08 * np.clip((ys - max(lay.dome)) / 0.06, 0, 1) * body  # liver and bowel below the domes
    # Less air where the lung is thin: along the chest wall and at the apices, which muscle overlaps too;
    # not at the domes, where the posterior recesses keep it thick and the diaphragm edge sharp.
    low = replace(lay, dome=tuple(d + 0.3 for d in lay.dome), cp=tuple(c + 0.3 for c in lay.cp))
    walls = (_fill(size, _lung(low, -1), _lung(low, 1)) > 0.5).astype(np.uint8)
    lung_depth = cv2.distanceTransform(walls, cv2.DIST_L2, 5) / size
    air = lay.air * np.minimum(lung_depth / 0.04, 1) ** 0.4 * (0.82 + 0.18 * np.clip((ys - apex) / 0.3, 0, 1))
    mottle = _blur(rng.standard_normal((size, size)).astype(np.float32), 0.008)
    air *= 1 + 0.05 * mottle / (mottle.std() + 1e-6)  # parenchymal texture
    lung_air = _blur(sc.aerated[-1] + sc.aerated[1], 0.004)
    atten += 0.08 * _blur(sc.vessels, 0.003) * lung_air + sc.extra - air * lung_air
    atten += 0.1 * _blur(((np.abs(xs - cx) < 0.07) & (ys < max(lay.dome))).astype(np.float32), 0.02)
    atten += _bones(rng, lay, xs, ys) * np.minimum(depth / 0.02, 1)
    airways = np.zeros((size, size), np.uint8)
    carina = (cx - 0.005, 0.34)
    _line(airways, [(cx, -0.02), (cx - 0.008, 0.22), carina], 0.034)
    _line(airways, [(cx - 0.07, 0.40), carina, (cx + 0.08, 0.415)], 0.02)
    atten -= 0.11 * _blur(airways.astype(np.float32) / 255, 0.004)
    bubble = ((xs - cx - 0.17) / 0.05) ** 2 + ((ys - lay.dome[1] - 0.06) / 0.025) ** 2 <= 1
    return atten - 0.12 * _blur(bubble.astype(np.float32), 0.006) * (rng.uniform() < 0.7)  # gastric air


def _vessels(rng, lay: _Layout, size: int) -> np.ndarray:
    """Pulmonary vessels branching out from each hilum, thinner and fainter at each generation."""
    canvas = np.zeros((size, size), np.uint8)
    for s in (-1, 1):
        stack = [(lay.cx + s * 0.1, 0.42, a, 0) for a in np.linspace(-1.2, 1.3, 5) + rng.normal(0, 0.1, 5)]
        while stack:
            x, y, a, gen = stack.pop()
            length = rng.uniform(0.05, 0.09) * 0.85**gen
            x1, y1 = x + s * length * np.cos(a), y + length * np.sin(a)
            _line(canvas, [(x, y), (x1, y1)], 0.008 - 0.0018 * gen, 255 - 45 * gen)
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
            _line(outer, np.stack([x, y], 1), width)
            _line(inner, np.stack([x, y], 1), width * 0.45)  # hollow middle: cortex is denser than marrow
            ax = x[-1] + (cx + s * 0.12 - x[-1]) * u
            _line(ant, np.stack([ax, y[-1] + 0.12 * u + 0.02 * np.sin(np.pi * u)], 1), width * 0.8)
        clav_y = apex + 0.055 - 0.1 * t + 0.018 * np.sin(2 * np.pi * t)
        _line(solid, np.stack([cx + s * (0.04 + 0.3 * t), clav_y], 1), 0.026)  # clavicle
        _line(solid, [(cx + s * 0.47, apex), (cx + s * 0.5, apex + 0.45)], 0.075)  # humerus
        heads += (xs - cx - s * 0.47) ** 2 + (ys - apex) ** 2 <= 0.06**2
    under_liver = 1 - 0.5 * (ys > max(lay.dome))
    ribs = (outer.astype(np.float32) - 0.5 * inner) / 255 * under_liver
    anterior = ant.astype(np.float32) / 255 * np.clip(np.abs(xs - cx) / 0.1 - 0.8, 0, 1)  # cartilage is clear
    box = np.array([(-0.032, 0), (0.032, 0), (0.032, 0.036), (-0.032, 0.036)])
    vertebrae = [box + (cx, y) for y in np.arange(-0.02, 1.05, 0.047)]
    spine = _blur(_fill(size, *vertebrae), 0.004)
    limbs = np.maximum(solid.astype(np.float32) / 255, heads)
    return _blur(0.1 * ribs + 0.04 * anterior + 0.18 * limbs + 0.07 * spine, 0.002)


def _effusion(rng, sc: _Scene) -> str:
    s, lay = int(rng.choice([-1, 1])), sc.lay
    moderate = rng.uniform() < 0.4
    level = lay.cp[(s + 1) // 2] - (rng.uniform(0.15, 0.24) if moderate else rng.uniform(0.07, 0.11))
    lateral = np.clip(s * (sc.xs - lay.cx) / lay.hw, 0, 1)
    # Fluid climbs the lateral wall (the meniscus) and its upper edge is hazy, not a sharp line.
    fluid = _blur((sc.ys > level - 0.1 * lateral**2).astype(np.float32), 0.012) * sc.lungs[s]
    sc.aerated[s] *= 1 - 0.92 * fluid
    side = _SIDE[s]
    amount = "Moderate" if moderate else "Small"
    return f"{amount} {side} pleural effusion with blunting of the {side} costophrenic angle."


def _pneumothorax(rng, sc: _Scene) -> str:
    s, f = int(rng.choice([-1, 1])), rng.uniform(0.76, 0.9)
    anchor = np.array([sc.lay.cx + s * 0.05, sc.lay.cp[(s + 1) // 2]])
    edge = anchor + f * (_lung(sc.lay, s) - anchor)  # the lung shrinks away from the apex and the wall
    gap = sc.lungs[s] * (1 - _fill(sc.size, edge))
    sc.vessels *= 1 - gap  # no lung markings beyond the visceral pleural line
    pleura = np.zeros((sc.size, sc.size), np.uint8)
    _line(pleura, edge, 0.003)
    sc.extra += 0.1 * pleura.astype(np.float32) / 255 * sc.lungs[s] - 0.08 * gap
    return f"{'Large' if f < 0.83 else 'Small'} {_SIDE[s]} pneumothorax with a visible visceral pleural line."


def _nodule(rng, sc: _Scene) -> str:
    s, r = int(rng.choice([-1, 1])), rng.uniform(0.012, 0.025)
    kernel, steps = np.ones((3, 3), np.uint8), max(1, round(2 * r * sc.size))
    # Keep the nodule off the lung edges so it reads as a nodule, not a bump on the border.
    inside = cv2.erode((sc.aerated[s] > 0.9).astype(np.uint8), kernel, iterations=steps)
    x, y = sc.pick(rng, inside if inside.any() else sc.aerated[s] > 0.5)
    # Solid tissue replaces air, so the nodule can reach but never exceed soft-tissue density.
    sc.aerated[s] *= 1 - _blur(((sc.xs - x) ** 2 + (sc.ys - y) ** 2 <= r**2).astype(np.float32), r / 4)
    mm = round(2 * r * sc.cfg.field_of_view_mm)
    return f"Pulmonary nodule measuring {mm} mm in the {_SIDE[s]} {sc.zone(y)} zone."


def _consolidation(rng, sc: _Scene) -> str:
    s, lay = int(rng.choice([-1, 1])), sc.lay
    lower = (sc.aerated[s] > 0.9) & (sc.ys > lay.apex + 0.35 * (np.mean(lay.dome) - lay.apex))
    x, y = sc.pick(rng, lower if lower.any() else sc.aerated[s] > 0.5)
    rx, ry = rng.uniform(0.07, 0.12), rng.uniform(0.05, 0.09)
    wobble = _blur(rng.standard_normal((sc.size, sc.size)).astype(np.float32), 0.02)
    wobble /= wobble.std() + 1e-6
    # Perturb the radius, not the level, so the centre stays filled (no ring-shaped "cavities").
    patch = ((sc.xs - x) / rx) ** 2 + ((sc.ys - y) / ry) ** 2 < (1 + 0.35 * wobble) ** 2
    sc.aerated[s] *= 1 - 0.85 * _blur(patch.astype(np.float32), 0.01)  # fluid-filled alveoli lose their air
    where = f"{_SIDE[s]} {sc.zone(y)} zone"
    return (
        f"Patchy consolidation in the {where}, compatible with pneumonia in the appropriate clinical setting."
    )


_FINDING_DRAWERS = {
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "nodule": _nodule,
    "consolidation": _consolidation,
}


def _expose(atten: np.ndarray, lay: _Layout, cfg: PhantomConfig, rng) -> np.ndarray:
    size = atten.shape[0]
    atten = _blur(atten.astype(np.float32), cfg.blur_sigma_px / _REFERENCE_SIZE)
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


class _Overlay:
    """Scanner annotations, drawn aliased (LINE_8) as real overlays are, so the mask is exactly the
    changed pixels with no dilation; JPEG ringing around them is left for cleaners to cope with."""

    def __init__(self, clean: np.ndarray, rng, cfg: PhantomConfig) -> None:
        self.image, self.mask, self.rng, self.cfg = clean.copy(), np.zeros(clean.shape, bool), rng, cfg
        self.boxes: list[tuple[int, int, int, int]] = []
        self.labels: list[str] = []
        self.taken: list[tuple[int, int, int, int]] = []

    def place(self, w: int, h: int, corners) -> tuple[int, int] | None:
        """Top-left of a free w x h spot in one of `corners` (0 TL, 1 TR, 2 BL, 3 BR), stacking inwards."""
        size = self.image.shape[0]
        margin = max(2, round(self.rng.uniform(0.015, 0.05) * size))
        for corner in self.rng.permutation(corners):
            for step in range(4):
                x0 = margin if corner in (0, 2) else size - margin - w
                y0 = margin + step * (h + 3) if corner < 2 else size - margin - h - step * (h + 3)
                box = (x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 2)
                if x0 >= 0 and 0 <= y0 <= size - h and not any(_overlap(box, b) for b in self.taken):
                    self.taken.append(box)
                    return x0, y0
        return None

    def stamp(self, layer: np.ndarray, label: str) -> None:
        hit = layer > 0
        if hit.any():
            self.image[hit] = self.rng.integers(self.cfg.text_intensity[0], self.cfg.text_intensity[1] + 1)
            self.mask |= hit
            rows, cols = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
            self.boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
            self.labels.append(label)


def _burn_in(clean: np.ndarray, rng, cfg: PhantomConfig, lay: _Layout):
    """Strings and a laterality marker near the corners, maybe ECG leads; (image, mask, boxes, labels)."""
    size, ov = clean.shape[0], _Overlay(clean, rng, cfg)
    lo_h = max(cfg.min_text_height_px, round(cfg.text_height_px[0] * size / _REFERENCE_SIZE))
    hi_h = max(lo_h, round(cfg.text_height_px[1] * size / _REFERENCE_SIZE))
    words = ("PORTABLE", "AP", "AP SUPINE", "SEMI-ERECT") if lay.view == "AP" else ("PA", "ERECT", "PA ERECT")
    for _ in range(rng.integers(1, cfg.max_text_items + 1)):
        text = (
            str(rng.choice(words)),
            f"ID {rng.integers(10000, 100000)}",
            f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}",
            f"20{rng.integers(15, 26)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
        )[rng.integers(4)]
        font = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX)[rng.integers(3)]
        h = int(rng.integers(lo_h, hi_h + 1))
        thick = 2 if h >= 16 else 1
        scale = _font_scale(text, font, h, thick)
        spot = ov.place(cv2.getTextSize(text, font, scale, thick)[0][0], h, [0, 1, 2, 3])
        if spot is not None:
            layer = np.zeros_like(clean)
            cv2.putText(layer, text, (spot[0], spot[1] + h), font, scale, 255, thick, cv2.LINE_8)
            ov.stamp(layer, text)
    if rng.uniform() < cfg.p_marker:
        s = int(rng.choice([-1, 1]))
        letter, font = "R" if s < 0 else "L", cv2.FONT_HERSHEY_DUPLEX  # "R" sits on the patient's right
        h = int(rng.integers(lo_h, max(lo_h, min(hi_h, round(16 * size / _REFERENCE_SIZE))) + 1))
        pad, scale = max(1, h // 4), _font_scale(letter, font, h, 1)
        w = cv2.getTextSize(letter, font, scale, 1)[0][0] + 2 * pad
        spot = ov.place(w, h + 2 * pad, [0, 2] if s < 0 else [1, 3])
        if spot is not None:
            (x0, y0), layer = spot, np.zeros_like(clean)
            cv2.rectangle(layer, (x0, y0), (x0 + w, y0 + h + 2 * pad), 255, 1, cv2.LINE_8)
            cv2.putText(layer, letter, (x0 + pad, y0 + pad + h), font, scale, 255, 1, cv2.LINE_8)
            ov.stamp(layer, f"MARKER {letter}")
    if rng.uniform() < cfg.p_ecg_leads:
        for _ in range(rng.integers(1, 4)):
            pad = np.array([lay.cx + rng.uniform(-0.35, 0.35), rng.uniform(0.15, 0.5)])
            end = np.array([float(pad[0] > lay.cx), rng.uniform(0.0, 0.3)])  # wires leave over a shoulder
            sag = np.array([(pad[0] + end[0]) / 2, max(pad[1], end[1]) + rng.uniform(0.02, 0.08)])
            t = np.linspace(0, 1, 30)[:, None]
            wire = np.round(((1 - t) ** 2 * pad + 2 * t * (1 - t) * sag + t**2 * end) * size).astype(np.int32)
            layer, r, centre = np.zeros_like(clean), max(2, round(0.012 * size)), tuple(map(int, wire[0]))
            cv2.polylines(layer, [wire], False, 255, max(1, round(size / 340)), cv2.LINE_8)
            cv2.circle(layer, centre, r, 255, max(1, round(size / 256)), cv2.LINE_8)
            cv2.circle(layer, centre, max(1, r // 3), 255, -1, cv2.LINE_8)
            ov.stamp(layer, "ECG")
    return ov.image, ov.mask, ov.boxes, tuple(ov.labels)


def _font_scale(text: str, font: int, height: int, thick: int) -> float:
    """Font scale at which `text` renders `height` px tall, stroke included; OpenCV's
    getFontScaleFromHeight is off by a few px either way, depending on font and stroke."""

    def rendered(scale: float) -> int:
        canvas = np.zeros((4 * height + 8, 8 * height * len(text) + 8), np.uint8)
        cv2.putText(canvas, text, (4, 3 * height), font, scale, 255, thick, cv2.LINE_8)
        rows = np.flatnonzero(canvas.any(1))
        return rows[-1] - rows[0] + 1

    lo, hi = 0.0, 2 * cv2.getFontScaleFromHeight(font, height, thick)
    for _ in range(12):  # bisect for the largest scale not taller than asked
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rendered(mid) <= height else (lo, mid)
    return lo


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
