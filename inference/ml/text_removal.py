"""Text removal's second half: box prompts refined by SAM, SD2 inpainting (OpenCV Telea without a pipeline), and
`clean_image`, the whole detect (`inference.ml.cleaning.detect_text`) → refine → inpaint with per-stage timings.
Models arrive built and placed on their device by the caller; nothing here picks a device. No Django here."""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np

from inference.ml.cleaning import (
    Box,
    CleaningConfig,
    CleaningResult,
    TextDetector,
    as_gray,
    detect_text,
    disk,
    image_scale,
    scaled_px,
)

# --- SAM refinement -------------------------------------------------------------------------------------------------


def resolve_refine(cfg: CleaningConfig, predictor: Any | None) -> str:
    """The refinement `clean_image` will use; raises if SAM is asked for without a predictor."""
    if cfg.refine == "auto":
        model = getattr(predictor, "model", None)
        spec = getattr(model, "cxr_spec", None)
        trained = getattr(model, "cxr_checkpoint", None) is not None and getattr(spec, "name", "") != "tiny"
        return "sam_and_classical" if trained else "classical"
    if cfg.refine not in ("classical", "sam", "sam_and_classical"):
        raise ValueError(f"unknown refine {cfg.refine!r}")
    if cfg.refine != "classical" and predictor is None:
        raise ValueError(f"refine={cfg.refine!r} needs a SamPredictor (predictor=...)")
    return cfg.refine


def refine_with_sam(image: np.ndarray, boxes: list[Box], predictor: Any, *, batch: int = 64) -> np.ndarray:
    """Union of SAM's single-mask answers to one box prompt per box, each clipped to its own box."""
    import torch

    h, w = image.shape[:2]
    mask = np.zeros((h, w), bool)
    if not boxes:
        return mask
    rgb = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    predictor.set_image(np.ascontiguousarray(rgb), image_format="RGB")
    prompts = torch.tensor([list(b) for b in boxes], dtype=torch.float32, device=predictor.device)
    with torch.inference_mode():
        for start in range(0, len(boxes), batch):
            chunk = predictor.transform.apply_boxes_torch(prompts[start : start + batch], (h, w))
            masks, _, _ = predictor.predict_torch(None, None, boxes=chunk, multimask_output=False)
            for b, m in zip(boxes[start : start + batch], masks[:, 0].cpu().numpy(), strict=True):
                mask[b.y0 : b.y1, b.x0 : b.x1] |= m[b.y0 : b.y1, b.x0 : b.x1]
    predictor.reset_image()
    return mask


# --- inpainting -----------------------------------------------------------------------------------------------------


def inpaint(
    image: np.ndarray, mask: np.ndarray, cfg: CleaningConfig | None = None, sd_inpaint_pipe: Any = None
) -> np.ndarray:
    """`image` with the pixels under `mask` filled in; every pixel outside the mask is returned unchanged."""
    cfg = cfg or CleaningConfig()
    as_gray(image)  # validates dtype and shape
    mask = np.asarray(mask, bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    if not mask.any():
        return image.copy()
    if sd_inpaint_pipe is None:
        flag = cv2.INPAINT_TELEA if cfg.inpaint_method == "telea" else cv2.INPAINT_NS
        filled = cv2.inpaint(image, mask.astype(np.uint8) * 255, cfg.inpaint_radius_px, flag)
    else:
        filled = _sd_fill(image, mask, cfg, sd_inpaint_pipe)
    out = image.copy()
    out[mask] = filled[mask]
    return out


def _sd_fill(image: np.ndarray, mask: np.ndarray, cfg: CleaningConfig, pipe: Any) -> np.ndarray:
    """SD2-inpainting of the whole frame at a multiple-of-8 size; the caller composites inside the mask."""
    import torch
    from PIL import Image

    h, w = image.shape[:2]
    rgb = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    m = mask.astype(np.uint8) * 255
    if cfg.sd_resolution is None:  # pad with reflected content, so no pixel is resampled
        ph, pw = -h % 8, -w % 8
        rgb_in = cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
        m_in = cv2.copyMakeBorder(m, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
    else:
        k = cfg.sd_resolution / max(h, w)
        size = (max(8, round(w * k / 8) * 8), max(8, round(h * k / 8) * 8))
        rgb_in = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        m_in = np.where(cv2.resize(m, size, interpolation=cv2.INTER_AREA) > 0, 255, 0).astype(
            np.uint8
        )  # any cover
    generator = torch.Generator("cpu").manual_seed(cfg.sd_seed)
    result = pipe(
        prompt=cfg.sd_prompt,
        negative_prompt=cfg.sd_negative_prompt or None,
        image=Image.fromarray(rgb_in),
        mask_image=Image.fromarray(m_in),
        height=rgb_in.shape[0],
        width=rgb_in.shape[1],
        num_inference_steps=cfg.sd_steps,
        guidance_scale=cfg.sd_guidance_scale,
        strength=cfg.sd_strength,
        generator=generator,
        output_type="np",
    ).images[0]
    out = np.clip(np.asarray(result, np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    out = out[:h, :w] if cfg.sd_resolution is None else cv2.resize(out, (w, h), interpolation=cv2.INTER_CUBIC)
    return out if image.ndim == 3 else cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)


# --- the whole pipeline ---------------------------------------------------------------------------------------------


def clean_image(
    image: np.ndarray,
    cfg: CleaningConfig | None = None,
    *,
    predictor: Any = None,
    sd_inpaint_pipe: Any = None,
    ocr: TextDetector | None = None,
) -> CleaningResult:
    """Detect, refine and inpaint burned-in text. `predictor` is a SamPredictor and `sd_inpaint_pipe` a
    StableDiffusionInpaintPipeline, both already on their device; without them the classical mask and OpenCV
    inpainting are used."""
    cfg = cfg or CleaningConfig()
    refine = resolve_refine(cfg, predictor)
    timings: dict[str, float] = {}
    start = t = time.perf_counter()

    boxes, mask = detect_text(image, cfg, ocr=ocr)
    now = time.perf_counter()
    timings["detect"], t = (now - t) * 1e3, now

    if refine != "classical":
        sam_mask = refine_with_sam(image, boxes, predictor, batch=cfg.sam_batch)
        if refine == "sam_and_classical":
            d = scaled_px(cfg.sam_classical_dilate_px, image_scale(mask, cfg), odd=True)
            sam_mask &= cv2.dilate(mask.astype(np.uint8), disk(d)) > 0
        mask = sam_mask
    now = time.perf_counter()
    timings["refine"], t = (now - t) * 1e3, now

    grow = scaled_px(cfg.inpaint_dilate_px, image_scale(mask, cfg), least=0)
    to_fill = cv2.dilate(mask.astype(np.uint8), disk(2 * grow + 1)) > 0 if grow else mask.copy()
    cleaned = inpaint(image, to_fill, cfg, sd_inpaint_pipe)
    now = time.perf_counter()
    timings["inpaint"] = (now - t) * 1e3
    timings["total"] = (now - start) * 1e3
    inpainter = "sd" if sd_inpaint_pipe is not None else cfg.inpaint_method
    return CleaningResult(cleaned, mask, boxes, timings, to_fill, refine, inpainter)
