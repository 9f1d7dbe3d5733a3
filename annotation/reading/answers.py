"""The one rule that validates a reader's answer, for the portal, the API, imports and simulated readers."""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import ValidationError

from annotation.stats.reads import CONFIDENCE_RANGE

MAX_COMMENT = 2000
MAX_BOXES = 50
CANNOT_ASSESS_REASONS = {"unreadable", "not_a_cxr", "technical", "other"}


def _cannot_assess(answer: dict) -> dict | None:
    if answer.get("cannot_assess") is not True:
        return None
    reason = answer.get("reason", "other")
    if reason not in CANNOT_ASSESS_REASONS:
        raise ValidationError(f"reason must be one of {sorted(CANNOT_ASSESS_REASONS)}.")
    comment = answer.get("comment", "")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise ValidationError(f"comment must be text of at most {MAX_COMMENT} characters.")
    return {"cannot_assess": True, "reason": reason, "comment": comment}


def number_in(value: Any, low: float, high: float, name: str, *, whole: bool = True) -> float:
    """`value` if it is a finite number (a whole one when `whole`) within [low, high]; else a ValidationError that
    says so (booleans are not numbers here)."""
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not low <= value <= high:
        raise ValidationError(f"{name} must be {'a whole number' if whole else 'a number'} from {low} to {high}.")
    return value


def _boxes(value: Any) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_BOXES:
        raise ValidationError(f"boxes must be a list of at most {MAX_BOXES} boxes.")
    out = []
    for box in value:
        if not isinstance(box, dict):
            raise ValidationError("Each box needs x, y, w, h as fractions of the image.")
        try:
            x, y, w, h = (float(box[k]) for k in ("x", "y", "w", "h"))
        except (KeyError, TypeError, ValueError):
            raise ValidationError("Each box needs x, y, w, h as fractions of the image.") from None
        if not (0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 - x + 1e-9 and 0 < h <= 1 - y + 1e-9):
            raise ValidationError("A box must lie inside the image (fractions 0–1, positive size).")
        out.append({"x": x, "y": y, "w": w, "h": h})
    return out


def validate_answer(kind: str, answer: Any, *, rubric: list[dict]) -> dict:
    """Return the normalised answer, or raise ValidationError with a sentence a reader can act on.

    Preference answers are in display terms ("left"/"right"/"none"); the service maps them to images.
    """
    if not isinstance(answer, dict):
        raise ValidationError("The answer must be an object.")
    unassessable = _cannot_assess(answer)
    if unassessable:
        return unassessable
    if kind == "realism":
        if answer.get("call") not in ("real", "synthetic"):
            raise ValidationError("Choose Real or Synthetic, or mark the case as cannot assess.")
        return {"call": answer["call"], "confidence": number_in(answer.get("confidence"), *CONFIDENCE_RANGE, "confidence")}
    if kind == "rubric":
        scores = answer.get("scores")
        if not isinstance(scores, dict):
            raise ValidationError("scores must give a score for each rubric criterion.")
        keys = [c["key"] for c in rubric]
        extra = set(scores) - set(keys)
        if extra:
            raise ValidationError(f"Unknown rubric criteria: {', '.join(sorted(extra))}.")
        clean = {c["key"]: number_in(scores.get(c["key"]), c["min"], c["max"], c["label"]) for c in rubric}
        comment = answer.get("comment", "")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise ValidationError(f"comment must be text of at most {MAX_COMMENT} characters.")
        return {"scores": clean, "comment": comment, "boxes": _boxes(answer.get("boxes"))}
    if kind == "preference":
        if answer.get("choice") not in ("left", "right", "none"):
            raise ValidationError("choice must be 'left', 'right' or 'none'.")
        return {"choice": answer["choice"]}
    raise ValidationError(f"Unknown task kind {kind!r}.")
