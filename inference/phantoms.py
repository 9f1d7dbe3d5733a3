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
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

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


def _opt(default, help_text: str):
    """A config field whose help text (with units) travels with it, e.g. into a job's stored JSON schema."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that shapes a phantom except the seed and the per-call switches."""

    size: int = _opt(512, "Output width and height, px.")
    p_cardiomegaly: float = _opt(0.2, "Chance of cardiomegaly when findings=None.")
    p_pleural_effusion: float = _opt(0.15, "Chance of a pleural effusion when findings=None.")
    p_pneumothorax: float = _opt(0.08, "Chance of a pneumothorax when findings=None.")
    p_nodule: float = _opt(0.12, "Chance of a solitary pulmonary nodule when findings=None.")
    p_consolidation: float = _opt(0.15, "Chance of a patch of consolidation when findings=None.")
    p_ap_view: float = _opt(0.25, "Chance of an AP portable study instead of a PA one.")
    text_height_px: tuple[int, int] = _opt((8, 24), "Min and max height of burned-in text at 512 px, px.")
    min_text_height_px: int = _opt(
        5, "Floor on the size-scaled text height, so small images stay legible, px."
    )
    max_text_items: int = _opt(4, "Most burned-in strings; at least one when text is on.")
    p_marker: float = _opt(0.85, "Chance of a boxed R/L laterality marker besides the strings.")
    p_ecg_leads: float = _opt(0.3, "Chance of ECG electrodes with lead wires (part of the text mask).")
    text_intensity: tuple[int, int] = _opt((200, 255), "Grey-level range of burned-in pixels, 0-255.")
    noise_sigma: float = _opt(0.012, "Detector noise std, fraction of full scale.")
    blur_sigma_px: float = _opt(1.0, "Gaussian blur of the anatomy at 512 px, px; scaled with size.")
    field_of_view_mm: float = _opt(380.0, "Physical width the image spans, mm; sizes nodules in the report.")

    @classmethod
    def tiny(cls) -> PhantomConfig:
        return cls(size=64)


@dataclass(frozen=True, eq=False)
class Phantom:
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
    cx: float
    hw: float  # half the inner thorax width
    apex: float
    dome: tuple[float, float]  # (patient right, patient left) hemidiaphragm tops
    cp: tuple[float, float]  # costophrenic angle heights, below the domes
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
    """One phantom. `size` defaults to `config.size`; `findings=None` draws them with the config
    probabilities, `()` is a normal study. `seed` must be a non-negative int."""
    cfg = config or PhantomConfig()
    size = cfg.size if size is None else size
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    anat_ss, find_ss, text_ss, noise_ss = np.random.SeedSequence(seed).spawn(4)
    # One stream per finding, so adding a finding never moves another one.
    choose_ss, *per_finding = find_ss.spawn(1 + len(FINDINGS))
    chosen = _choose_findings(findings, cfg, np.random.default_rng(choose_ss))
    rng = np.random.default_rng(anat_ss)
    u_ctr = rng.uniform()  # the same patient gets a proportionally bigger heart with cardiomegaly
    ctr = 0.56 + 0.1 * u_ctr if "cardiomegaly" in chosen else 0.40 + 0.08 * u_ctr
    dome_r = rng.uniform(0.62, 0.68)
    dome_l = dome_r + rng.uniform(0.01, 0.04)  # the liver holds the right hemidiaphragm higher
    layout = _Layout(
        cx=0.5 + rng.normal(0, 0.012),
        hw=rng.uniform(0.35, 0.40),
        apex=rng.uniform(0.12, 0.17),
        dome=(dome_r, dome_l),
        cp=(dome_r + rng.uniform(0.08, 0.11), dome_l + rng.uniform(0.08, 0.11)),
        ctr=ctr,
        air=rng.uniform(0.40, 0.47),
        angle=rng.uniform(-3, 3),
        scale=rng.uniform(0.95, 1.04),
        gamma=rng.uniform(0.85, 1.2),
        lo=rng.uniform(-0.03, 0.03),
        hi=rng.uniform(0.86, 0.97),
        view="AP" if rng.uniform() < cfg.p_ap_view else "PA",
    )
    frgs = {name: np.random.default_rng(ss) for name, ss in zip(FINDINGS, per_finding, strict=True)}
    atten, measured_ctr, sentences = _attenuation(layout, size, rng, chosen, frgs, cfg)
    clean = _expose(atten, layout, size, cfg, np.random.default_rng(noise_ss))
    image, mask, boxes, labels = clean.copy(), np.zeros(clean.shape, bool), [], ()
    if burn_in_text:
        image, mask, boxes, labels = _burn_in(clean, np.random.default_rng(text_ss), cfg, layout)
    if jpeg_quality is not None:
        _, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        image = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return Phantom(
        image=image,
        clean=clean,
        text_mask=mask,
        text_boxes=boxes,
        text_labels=labels,
        findings=chosen,
        report=_report(layout.view, chosen, sentences, measured_ctr),
        seed=seed,
        cardiothoracic_ratio=measured_ctr,
        view=layout.view,
    )


def generate_phantoms(n: int, *, seed: int, **kwargs) -> Iterator[Phantom]:
    """`n` phantoms; the i-th equals `generate_phantom(seed=seed + i, **kwargs)`."""
    for i in range(n):
        yield generate_phantom(seed=seed + i, **kwargs)


def _choose_findings(findings: Sequence[str] | None, cfg: PhantomConfig, rng: np.random.Generator):
    if findings is None:
        draws = rng.uniform(size=len(FINDINGS))
        return tuple(n for n, u in zip(FINDINGS, draws, strict=True) if u < getattr(cfg, f"p_{n}"))
    if isinstance(findings, str):
        raise TypeError("findings must be a sequence of names, not a single string")
    unknown = set(findings) - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; choose from {FINDINGS}")
    return tuple(n for n in FINDINGS if n in findings)


# --- drawing helpers: masks are float32 in 0..1, drawn anti-aliased on uint8 with sub-pixel shift ---


def _fill(size: int, pts) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [np.round(np.asarray(pts) * size * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    return canvas.astype(np.float32) / 255


def _line(canvas: np.ndarray, pts, width: float, value: int = 255) -> None:
    size = canvas.shape[0]
    thick = max(1, round(width * size))
    cv2.polylines(
        canvas, [np.round(np.asarray(pts) * size * 16).astype(np.int32)], False, value, thick, cv2.LINE_AA, 4
    )


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """`sigma` is a fraction of the image size, so the look does not depend on resolution."""
    return cv2.GaussianBlur(img, (0, 0), max(sigma * img.shape[0], 0.4))


def _lung(lay: _Layout, s: int) -> np.ndarray:
    """Outline of one lung: lateral wall from the apex down to the costophrenic angle, then the dome."""
    i = (s + 1) // 2
    dome, cp = lay.dome[i], lay.cp[i]
    t = np.linspace(0, 1, 48)
    g = np.where(
        t < 0.72, np.sin(np.pi / 2 * np.minimum(t / 0.72, 1)) ** 0.55, 1 - 0.05 * ((t - 0.72) / 0.28) ** 2
    )
    wall_x, wall_y = 0.06 + (lay.hw - 0.06) * g, lay.apex + (cp - lay.apex) * t
    u = np.linspace(0, 1, 32)
    # Steep near the wall so the costophrenic angle is sharp, highest about halfway in.
    dia_x = wall_x[-1] + (0.045 - wall_x[-1]) * u
    dia_y = (
        dome + (cp - dome) * np.clip(1 - u / 0.5, 0, None) ** 1.6 + 0.05 * np.clip(u / 0.5 - 1, 0, None) ** 2
    )
    xo, yo = np.concatenate([wall_x, dia_x]), np.concatenate([wall_y, dia_y])
    return np.stack([lay.cx + s * xo, yo], axis=1)


def _heart(lay: _Layout, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Two half-ellipses meeting at the midline: the right atrium small, the left ventricle bulging
    towards the patient's left and lower, so the silhouette leans to the image right."""
    width = lay.ctr * 2 * lay.hw
    right, left = 0.34 * width, 0.66 * width
    b = 0.13 + 0.3 * (width - 0.3)
    yc = min(lay.dome) - 0.05
    dx = xs - lay.cx
    inside = np.where(
        dx < 0, (dx / right) ** 2 + ((ys - yc) / b) ** 2, (dx / left) ** 2 + ((ys - yc - 0.02) / b) ** 2
    )
    return (inside <= 1).astype(np.float32)


def _attenuation(lay, size, rng, chosen, frgs, cfg):
    ys, xs = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    cx, hw, apex = lay.cx, lay.hw, lay.apex
    half = [(0.1, -0.05), (0.11, apex - 0.09), (0.3, apex - 0.06), (0.45, apex - 0.04), (0.53, apex + 0.01)]
    half += [(0.57, apex + 0.1), (0.58, 0.45), (hw + 0.08, 0.58), (hw + 0.07, 1.05)]
    outline = [(cx + x, y) for x, y in half] + [(cx - x, y) for x, y in reversed(half)]
    body_u8 = (_fill(size, outline) > 0.5).astype(np.uint8)
    # Tissue thins towards the skin line, so the body edge darkens gradually.
    depth = cv2.distanceTransform(body_u8, cv2.DIST_L2, 5) / size
    atten = 0.52 * np.minimum(depth / 0.09, 1) ** 0.7
    atten += 0.08 * np.clip((ys - max(lay.dome)) / 0.06, 0, 1) * body_u8  # liver and bowel below the domes

    lungs = {s: _fill(size, _lung(lay, s)) for s in (-1, 1)}
    thorax = np.flatnonzero(((lungs[-1] + lungs[1]) > 0.5).any(axis=0))
    heart = _heart(lay, xs, ys)
    knob = ((xs - cx - 0.055) / 0.032) ** 2 + ((ys - 0.31) / 0.03) ** 2 <= 1  # the aortic knob
    heart_cols = np.flatnonzero(heart[: int(min(lay.dome) * size)].any(axis=0))
    ctr = (heart_cols[-1] - heart_cols[0] + 1) / (thorax[-1] - thorax[0] + 1)
    # Lung stays behind the heart (retrocardiac), so the heart only takes most of the air away.
    aerated = {s: lungs[s] * (1 - 0.8 * heart) * (1 - 0.9 * knob) for s in (-1, 1)}

    vessels = _vessels(rng, lay, size)
    # Less air where the lung is thin: along the chest wall and at the apices, which muscle overlaps too.
    # Not at the domes: the posterior recesses keep the lung thick there, so the diaphragm edge stays sharp.
    low = replace(lay, dome=tuple(d + 0.3 for d in lay.dome), cp=tuple(c + 0.3 for c in lay.cp))
    walls = sum(_fill(size, _lung(low, s)) for s in (-1, 1)) > 0.5
    lung_depth = cv2.distanceTransform(walls.astype(np.uint8), cv2.DIST_L2, 5) / size
    air = lay.air * np.minimum(lung_depth / 0.04, 1) ** 0.4 * (0.82 + 0.18 * np.clip((ys - apex) / 0.3, 0, 1))
    mottle = _blur(rng.standard_normal((size, size)).astype(np.float32), 0.008)
    air *= 1 + 0.05 * mottle / (mottle.std() + 1e-6)  # parenchymal texture
    extra = np.zeros_like(atten)
    sentences: dict[str, str] = {}
    for name in chosen:
        if name != "cardiomegaly":
            sentences[name] = _FINDING_DRAWERS[name](
                frgs[name], lay, size, xs, ys, lungs, aerated, vessels, extra, cfg
            )
    lung_air = _blur(aerated[-1] + aerated[1], 0.004)
    atten -= air * lung_air
    atten += 0.08 * _blur(vessels, 0.003) * lung_air + extra
    atten += 0.1 * _blur(((np.abs(xs - cx) < 0.07) & (ys < max(lay.dome))).astype(np.float32), 0.02)
    atten += _bones(rng, lay, size, xs, ys) * np.minimum(depth / 0.02, 1)
    atten -= 0.11 * _airways(lay, size)
    bubble = ((xs - cx - 0.17) / 0.05) ** 2 + ((ys - lay.dome[1] - 0.06) / 0.025) ** 2 <= 1
    atten -= 0.12 * _blur(bubble.astype(np.float32), 0.006) * (rng.uniform() < 0.7)  # gastric air
    return atten, float(ctr), sentences


def _vessels(rng, lay: _Layout, size: int) -> np.ndarray:
    """Branching pulmonary vessels fanning out from each hilum, thinner at each generation."""
    canvas = np.zeros((size, size), np.uint8)
    for s in (-1, 1):
        stack = [(lay.cx + s * 0.1, 0.42, a, 0) for a in np.linspace(-1.2, 1.3, 5) + rng.normal(0, 0.1, 5)]
        while stack:
            x, y, a, gen = stack.pop()
            length = rng.uniform(0.05, 0.09) * 0.85**gen
            x1, y1 = x + s * length * np.cos(a), y + length * np.sin(a)
            _line(canvas, [(x, y), (x1, y1)], 0.008 - 0.0018 * gen, 255 - 45 * gen)  # fade to the periphery
            if gen < 3:
                stack += [(x1, y1, a + d, gen + 1) for d in (-rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5))]
    return canvas.astype(np.float32) / 255


def _bones(rng, lay: _Layout, size: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    cx, hw, apex = lay.cx, lay.hw, lay.apex
    outer, inner, ant, solid = (np.zeros((size, size), np.uint8) for _ in range(4))
    spacing = (max(lay.cp) - apex + 0.02) / 9
    t = np.linspace(0, 1, 40)
    for s in (-1, 1):
        for k in range(10):
            # Posterior ribs arch up from the spine and curve down at the lateral wall; anterior ribs
            # run back down and medially, fainter because they are further from the detector.
            y0 = apex - 0.03 + k * spacing + rng.normal(0, 0.004)
            reach = hw + 0.025 - 0.04 * max(0, 2 - k) / 2
            x = cx + s * (0.045 + reach * (1 - (1 - t) ** 1.7))
            y = y0 - 0.04 * np.sin(np.pi * t * 0.8) + 0.06 * t**4
            width = 0.018 + 0.0015 * k
            _line(outer, np.stack([x, y], 1), width)
            _line(inner, np.stack([x, y], 1), width * 0.45)
            u = np.linspace(0, 1, 24)
            ax = x[-1] + (cx + s * 0.12 - x[-1]) * u
            _line(ant, np.stack([ax, y[-1] + 0.12 * u + 0.02 * np.sin(np.pi * u)], 1), width * 0.8)
        clav_t = np.linspace(0, 1, 30)
        clav_y = apex + 0.055 - 0.1 * clav_t + 0.018 * np.sin(2 * np.pi * clav_t)
        _line(solid, np.stack([cx + s * (0.04 + 0.3 * clav_t), clav_y], 1), 0.026)
        head = (cx + s * 0.47, apex - 0.005)
        cv2.circle(solid, _px(head, size), round(0.06 * size * 16), 255, -1, cv2.LINE_AA, 4)
        _line(solid, [head, (cx + s * 0.5, apex + 0.45)], 0.075)
    ribs = (
        (outer.astype(np.float32) - 0.5 * inner) / 255 * (1 - 0.5 * (ys > max(lay.dome)))
    )  # liver hides them
    anterior = (
        ant.astype(np.float32) / 255 * np.clip(np.abs(xs - cx) / 0.1 - 0.8, 0, 1)
    )  # cartilage is invisible
    vert = np.zeros((size, size), np.uint8)
    for k in range(25):
        y = -0.02 + k * 0.047
        cv2.rectangle(
            vert, _px((cx - 0.032, y), size), _px((cx + 0.032, y + 0.036), size), 255, -1, cv2.LINE_AA, 4
        )
    spine = _blur(vert.astype(np.float32) / 255, 0.004)
    return _blur(0.1 * ribs + 0.04 * anterior + 0.18 * solid.astype(np.float32) / 255 + 0.07 * spine, 0.002)


def _px(pt, size: int) -> tuple[int, int]:
    return round(pt[0] * size * 16), round(pt[1] * size * 16)


def _airways(lay: _Layout, size: int) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    carina = (lay.cx - 0.005, 0.34)
    _line(canvas, [(lay.cx, -0.02), (lay.cx - 0.008, 0.22), carina], 0.034)
    _line(canvas, [carina, (lay.cx - 0.07, 0.40)], 0.02)
    _line(canvas, [carina, (lay.cx + 0.08, 0.415)], 0.018)
    return _blur(canvas.astype(np.float32) / 255, 0.004)


def _zone(lay: _Layout, y: float) -> str:
    frac = (y - lay.apex) / (np.mean(lay.dome) - lay.apex)
    return "upper" if frac < 1 / 3 else "mid" if frac < 2 / 3 else "lower"


def _pick(rng, mask: np.ndarray) -> tuple[float, float]:
    idx = np.flatnonzero(mask.ravel())
    i = int(idx[rng.integers(idx.size)])
    size = mask.shape[0]
    return (i % size + 0.5) / size, (i // size + 0.5) / size


def _effusion(rng, lay, size, xs, ys, lungs, aerated, vessels, extra, cfg):
    s = int(rng.choice([-1, 1]))
    i = (s + 1) // 2
    moderate = rng.uniform() < 0.4
    level = lay.cp[i] - (rng.uniform(0.15, 0.24) if moderate else rng.uniform(0.07, 0.11))
    lateral = np.clip(s * (xs - lay.cx) / lay.hw, 0, 1)
    # Fluid climbs the lateral wall (meniscus) and its upper edge is hazy, not a sharp line.
    fluid = _blur((ys > level - 0.1 * lateral**2).astype(np.float32), 0.012) * lungs[s]
    aerated[s] *= 1 - 0.92 * fluid
    size_word = "Moderate" if moderate else "Small"
    side = _SIDE[s]
    return f"{size_word} {side} pleural effusion with blunting of the {side} costophrenic angle."


def _pneumothorax(rng, lay, size, xs, ys, lungs, aerated, vessels, extra, cfg):
    s = int(rng.choice([-1, 1]))
    f = rng.uniform(0.76, 0.9)
    anchor = np.array([lay.cx + s * 0.05, lay.cp[(s + 1) // 2]])
    collapsed_pts = anchor + f * (_lung(lay, s) - anchor)  # shrinks away from the apex and lateral wall
    collapsed = _fill(size, collapsed_pts)
    gap = lungs[s] * (1 - collapsed)
    vessels *= 1 - gap  # no lung markings beyond the pleural line
    pleura = np.zeros((size, size), np.uint8)
    _line(pleura, collapsed_pts, 0.003)
    extra -= 0.08 * gap
    extra += 0.1 * pleura.astype(np.float32) / 255 * lungs[s]
    return f"{'Large' if f < 0.83 else 'Small'} {_SIDE[s]} pneumothorax with a visible visceral pleural line."


def _nodule(rng, lay, size, xs, ys, lungs, aerated, vessels, extra, cfg):
    s = int(rng.choice([-1, 1]))
    r = rng.uniform(0.012, 0.025)
    inner = cv2.erode(
        (aerated[s] > 0.9).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, round(2 * r * size))
    )
    x, y = _pick(rng, inner if inner.any() else aerated[s] > 0.5)
    blob = ((xs - x) ** 2 + (ys - y) ** 2 <= r**2).astype(np.float32)
    extra += 0.2 * _blur(blob, r / 4)
    mm = round(2 * r * cfg.field_of_view_mm)
    return f"Pulmonary nodule measuring {mm} mm in the {_SIDE[s]} {_zone(lay, y)} zone."


def _consolidation(rng, lay, size, xs, ys, lungs, aerated, vessels, extra, cfg):
    s = int(rng.choice([-1, 1]))
    low = (aerated[s] > 0.9) & (ys > lay.apex + 0.35 * (np.mean(lay.dome) - lay.apex))
    x, y = _pick(rng, low if low.any() else aerated[s] > 0.5)
    rx, ry = rng.uniform(0.05, 0.09), rng.uniform(0.04, 0.07)
    wobble = _blur(rng.standard_normal((size, size)).astype(np.float32), 0.02)
    wobble /= wobble.std() + 1e-6
    patch = (((xs - x) / rx) ** 2 + ((ys - y) / ry) ** 2 + 0.35 * wobble < 1).astype(np.float32)
    extra += 0.26 * _blur(patch, 0.008) * lungs[s]
    return f"Patchy consolidation in the {_SIDE[s]} {_zone(lay, y)} zone, compatible with pneumonia in the appropriate clinical setting."


_FINDING_DRAWERS = {
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "nodule": _nodule,
    "consolidation": _consolidation,
}


def _expose(atten, lay: _Layout, size: int, cfg: PhantomConfig, rng) -> np.ndarray:
    atten = _blur(atten.astype(np.float32), cfg.blur_sigma_px / _REFERENCE_SIZE)
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), lay.angle, lay.scale)
    atten = cv2.warpAffine(atten, turn, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    signal = np.clip((atten - lay.lo) / (lay.hi - lay.lo), 0, 1) ** lay.gamma
    grain = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.7)
    grain /= grain.std() + 1e-6
    return np.clip((signal + cfg.noise_sigma * grain) * 255 + 0.5, 0, 255).astype(np.uint8)


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


def _burn_in(clean: np.ndarray, rng, cfg: PhantomConfig, lay: _Layout):
    """Scanner annotations near the edges, drawn aliased (LINE_8) like real overlays, so the mask is exactly
    the changed pixels. Returns (image, mask, boxes, labels)."""
    size = clean.shape[0]
    scale = size / _REFERENCE_SIZE
    lo_h = max(cfg.min_text_height_px, round(cfg.text_height_px[0] * scale))
    hi_h = max(lo_h, round(cfg.text_height_px[1] * scale))
    image, mask = clean.copy(), np.zeros(clean.shape, bool)
    boxes, labels, taken = [], [], []

    def stamp(layer: np.ndarray, label: str) -> None:
        hit = layer > 0
        if not hit.any():
            return
        image[hit] = rng.integers(cfg.text_intensity[0], cfg.text_intensity[1] + 1)
        mask[hit] = True
        rows, cols = np.flatnonzero(hit.any(1)), np.flatnonzero(hit.any(0))
        boxes.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
        labels.append(label)

    def place(w: int, h: int, corners) -> tuple[int, int] | None:
        margin = max(2, round(rng.uniform(0.015, 0.05) * size))
        for corner in rng.permutation(corners):
            for step in range(4):  # stack away from the edge if the spot is taken
                x0 = margin if corner in (0, 2) else size - margin - w
                y0 = margin + step * (h + 3) if corner < 2 else size - margin - h - step * (h + 3)
                box = (x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 2)
                if x0 >= 0 and 0 <= y0 <= size - h and not any(_overlap(box, b) for b in taken):
                    taken.append(box)
                    return x0, y0
        return None

    view_words = (
        ("PORTABLE", "AP", "AP SUPINE", "SEMI-ERECT") if lay.view == "AP" else ("PA", "ERECT", "PA ERECT")
    )
    for _ in range(rng.integers(1, cfg.max_text_items + 1)):
        choices = (
            str(rng.choice(view_words)),
            f"ID {rng.integers(10000, 100000)}",
            f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}",
            f"20{rng.integers(15, 26)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
        )
        text = choices[rng.integers(len(choices))]
        font = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX)[rng.integers(3)]
        h = int(rng.integers(lo_h, hi_h + 1))
        thick = 2 if h >= 16 else 1
        fs = _font_scale(text, font, h, thick)
        (w, _), _ = cv2.getTextSize(text, font, fs, thick)
        spot = place(w, h, [0, 1, 2, 3])
        if spot is not None:
            layer = np.zeros_like(clean)
            cv2.putText(layer, text, (spot[0], spot[1] + h), font, fs, 255, thick, cv2.LINE_8)
            stamp(layer, text)
    if rng.uniform() < cfg.p_marker:
        s = int(rng.choice([-1, 1]))  # "R" sits on the patient's right, the image left
        letter = "R" if s < 0 else "L"
        h = int(rng.integers(lo_h, max(lo_h, min(hi_h, round(16 * scale))) + 1))
        pad, fs = max(1, h // 4), _font_scale(letter, cv2.FONT_HERSHEY_DUPLEX, h, 1)
        (w, _), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_DUPLEX, fs, 1)
        spot = place(w + 2 * pad, h + 2 * pad, [0, 2] if s < 0 else [1, 3])
        if spot is not None:
            layer = np.zeros_like(clean)
            x0, y0 = spot
            cv2.rectangle(layer, (x0, y0), (x0 + w + 2 * pad, y0 + h + 2 * pad), 255, 1, cv2.LINE_8)
            cv2.putText(
                layer, letter, (x0 + pad, y0 + pad + h), cv2.FONT_HERSHEY_DUPLEX, fs, 255, 1, cv2.LINE_8
            )
            stamp(layer, f"MARKER {letter}")
    if rng.uniform() < cfg.p_ecg_leads:
        for _ in range(rng.integers(1, 4)):
            layer = np.zeros_like(clean)
            pad_x, pad_y = lay.cx + rng.uniform(-0.35, 0.35), rng.uniform(0.15, 0.5)
            end = (0.0 if pad_x < lay.cx else 1.0, rng.uniform(0.0, 0.3))  # wires leave over the shoulder
            sag = ((pad_x + end[0]) / 2, max(pad_y, end[1]) + rng.uniform(0.02, 0.08))
            t = np.linspace(0, 1, 30)[:, None]
            curve = (
                (1 - t) ** 2 * np.array([pad_x, pad_y])
                + 2 * t * (1 - t) * np.array(sag)
                + t**2 * np.array(end)
            )
            cv2.polylines(
                layer,
                [np.round(curve * size).astype(np.int32)],
                False,
                255,
                max(1, round(size / 340)),
                cv2.LINE_8,
            )
            r = max(2, round(0.012 * size))
            centre = (round(pad_x * size), round(pad_y * size))
            cv2.circle(layer, centre, r, 255, max(1, round(size / 256)), cv2.LINE_8)
            cv2.circle(layer, centre, max(1, r // 3), 255, -1, cv2.LINE_8)
            stamp(layer, "ECG")
    return image, mask, boxes, tuple(labels)


def _font_scale(text: str, font: int, height: int, thick: int) -> float:
    """Font scale at which `text` renders `height` px tall, stroke included; OpenCV's
    getFontScaleFromHeight is off by a few px either way, depending on font and stroke."""

    def rendered(scale: float) -> int:
        canvas = np.zeros((4 * height + 8, 8 * height * len(text) + 8), np.uint8)
        cv2.putText(canvas, text, (4, 3 * height), font, scale, 255, thick, cv2.LINE_8)
        rows = np.flatnonzero(canvas.any(1))
        return rows[-1] - rows[0] + 1

    lo, hi = 0.0, 2 * cv2.getFontScaleFromHeight(font, height, thick)
    for _ in range(12):  # bisect for the largest scale that is not taller than asked
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rendered(mid) <= height else (lo, mid)
    return lo


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
