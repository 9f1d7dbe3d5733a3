"""Burned-in text on phantoms: acquisition strings, a laterality marker and ECG leads near the corners, drawn
aliased onto a copy of the clean image so the mask is exactly the changed pixels. No Django here."""

from __future__ import annotations

import cv2
import numpy as np

REFERENCE_SIZE = 512  # text heights and blur are given at this size and scaled with the image


class _Overlay:
    """Scanner annotations, drawn aliased (LINE_8) as real overlays are, so the mask is exactly the
    changed pixels with no dilation; JPEG ringing around them is left for cleaners to cope with."""

    def __init__(self, clean: np.ndarray, rng, cfg) -> None:
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


def burn_in(clean: np.ndarray, rng, cfg, lay):
    """Strings and a laterality marker near the corners, maybe ECG leads; (image, mask, boxes, labels). `cfg` is
    the phantom's `PhantomConfig`, `lay` its layout (view, centre line)."""
    size, ov = clean.shape[0], _Overlay(clean, rng, cfg)
    lo_h = max(cfg.min_text_height_px, round(cfg.text_height_px[0] * size / REFERENCE_SIZE))
    hi_h = max(lo_h, round(cfg.text_height_px[1] * size / REFERENCE_SIZE))
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
        h = int(rng.integers(lo_h, max(lo_h, min(hi_h, round(16 * size / REFERENCE_SIZE))) + 1))
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
