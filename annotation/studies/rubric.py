"""A study's quality rubric: the criteria readers score (key, label, whole-number min–max)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError


def validate_rubric_definition(rubric: Any) -> list[dict]:
    if not isinstance(rubric, list) or not rubric:
        raise ValidationError("The rubric must be a non-empty list of criteria.")
    seen: set[str] = set()
    for item in rubric:
        if not isinstance(item, dict) or not {"key", "label", "min", "max"} <= item.keys():
            raise ValidationError("Each rubric criterion needs key, label, min and max.")
        if not isinstance(item["key"], str) or not item["key"].isidentifier():
            raise ValidationError(f"Rubric key {item['key']!r} must be a plain identifier.")
        if item["key"] in seen:
            raise ValidationError(f"Rubric key {item['key']!r} appears twice.")
        if not (isinstance(item["min"], int) and isinstance(item["max"], int) and 1 <= item["min"] < item["max"] <= 9):
            # 1–9 so that every score is one key press in the portal
            raise ValidationError(f"Rubric criterion {item['key']!r} needs whole-number scores with 1 ≤ min < max ≤ 9.")
        seen.add(item["key"])
    return rubric
