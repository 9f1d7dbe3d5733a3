"""Template filters that write figures the way the rest of the platform does (`{% load figures %}`)."""

from __future__ import annotations

from django import template

from training.ml.reporting import too_few as _too_few

register = template.Library()


@register.filter
def too_few(n) -> str:
    """`{{ s.n|too_few }}` → "too few (n=5)": the same caption as the charts, the metrics and the model card."""
    return _too_few(n or 0)
