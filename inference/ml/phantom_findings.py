"""Drawing primitives of the phantoms (filled polygons, lines, blur, the lung outline) and the findings drawn into
a scene: pleural effusion, pneumothorax, nodule, consolidation — each changes the scene's layers and returns its
report sentence. `sc` is the phantom's scene (layout, coordinate grids, lung masks, aerated fraction). No Django."""

from __future__ import annotations

import cv2
import numpy as np

SIDE = {-1: "right", 1: "left"}  # the patient's side; -1 is the image's left half


def fill(size: int, *polys) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.round(np.asarray(p) * size * 16).astype(np.int32) for p in polys]
    cv2.fillPoly(canvas, pts, 255, cv2.LINE_AA, 4)
    return canvas.astype(np.float32) / 255


def draw_line(canvas: np.ndarray, pts, width: float, value: int = 255) -> None:
    size = canvas.shape[0]
    pts = [np.round(np.asarray(pts) * size * 16).astype(np.int32)]
    cv2.polylines(canvas, pts, False, value, max(1, round(width * size)), cv2.LINE_AA, 4)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """`sigma` is a fraction of the image size, so the look does not depend on resolution."""
    return cv2.GaussianBlur(img, (0, 0), max(sigma * img.shape[0], 0.4))


def lung(lay, s: int) -> np.ndarray:
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


def _effusion(rng, sc) -> str:
    s, lay = int(rng.choice([-1, 1])), sc.lay
    moderate = rng.uniform() < 0.4
    level = lay.cp[(s + 1) // 2] - (rng.uniform(0.15, 0.24) if moderate else rng.uniform(0.07, 0.11))
    lateral = np.clip(s * (sc.xs - lay.cx) / lay.hw, 0, 1)
    # Fluid climbs the lateral wall (the meniscus) and its upper edge is hazy, not a sharp line.
    fluid = blur((sc.ys > level - 0.1 * lateral**2).astype(np.float32), 0.012) * sc.lungs[s]
    sc.aerated[s] *= 1 - 0.92 * fluid
    side = SIDE[s]
    amount = "Moderate" if moderate else "Small"
    return f"{amount} {side} pleural effusion with blunting of the {side} costophrenic angle."


def _pneumothorax(rng, sc) -> str:
    s, f = int(rng.choice([-1, 1])), rng.uniform(0.76, 0.9)
    anchor = np.array([sc.lay.cx + s * 0.05, sc.lay.cp[(s + 1) // 2]])
    edge = anchor + f * (lung(sc.lay, s) - anchor)  # the lung shrinks away from the apex and the wall
    gap = sc.lungs[s] * (1 - fill(sc.size, edge))
    sc.vessels *= 1 - gap  # no lung markings beyond the visceral pleural line
    pleura = np.zeros((sc.size, sc.size), np.uint8)
    draw_line(pleura, edge, 0.003)
    sc.extra += 0.1 * pleura.astype(np.float32) / 255 * sc.lungs[s] - 0.08 * gap
    return f"{'Large' if f < 0.83 else 'Small'} {SIDE[s]} pneumothorax with a visible visceral pleural line."


def _nodule(rng, sc) -> str:
    s, r = int(rng.choice([-1, 1])), rng.uniform(0.012, 0.025)
    kernel, steps = np.ones((3, 3), np.uint8), max(1, round(2 * r * sc.size))
    # Keep the nodule off the lung edges so it reads as a nodule, not a bump on the border.
    inside = cv2.erode((sc.aerated[s] > 0.9).astype(np.uint8), kernel, iterations=steps)
    x, y = sc.pick(rng, inside if inside.any() else sc.aerated[s] > 0.5)
    # Solid tissue replaces air, so the nodule can reach but never exceed soft-tissue density.
    sc.aerated[s] *= 1 - blur(((sc.xs - x) ** 2 + (sc.ys - y) ** 2 <= r**2).astype(np.float32), r / 4)
    mm = round(2 * r * sc.cfg.field_of_view_mm)
    return f"Pulmonary nodule measuring {mm} mm in the {SIDE[s]} {sc.zone(y)} zone."


def _consolidation(rng, sc) -> str:
    s, lay = int(rng.choice([-1, 1])), sc.lay
    lower = (sc.aerated[s] > 0.9) & (sc.ys > lay.apex + 0.35 * (np.mean(lay.dome) - lay.apex))
    x, y = sc.pick(rng, lower if lower.any() else sc.aerated[s] > 0.5)
    rx, ry = rng.uniform(0.07, 0.12), rng.uniform(0.05, 0.09)
    wobble = blur(rng.standard_normal((sc.size, sc.size)).astype(np.float32), 0.02)
    wobble /= wobble.std() + 1e-6
    # Perturb the radius, not the level, so the centre stays filled (no ring-shaped "cavities").
    patch = ((sc.xs - x) / rx) ** 2 + ((sc.ys - y) / ry) ** 2 < (1 + 0.35 * wobble) ** 2
    sc.aerated[s] *= 1 - 0.85 * blur(patch.astype(np.float32), 0.01)  # fluid-filled alveoli lose their air
    where = f"{SIDE[s]} {sc.zone(y)} zone"
    return (
        f"Patchy consolidation in the {where}, compatible with pneumonia in the appropriate clinical setting."
    )


FINDING_DRAWERS = {
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "nodule": _nodule,
    "consolidation": _consolidation,
}
