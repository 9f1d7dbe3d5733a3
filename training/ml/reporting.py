"""How a figure that is not a statistic is written, in one place for every surface that shows one: the metrics a
run records, the dashboard's tables and charts, the printable report and the model card. Django-free and torch-free
so that the trainers (which record the reason) and the pages (which show it) share it."""

from __future__ import annotations

#: The fewest items a mean with a confidence interval is shown for.
MIN_ITEMS = 2


def too_few(n: int) -> str:
    """The caption of a figure computed from too few items to be a statistic: "too few (n=5)"."""
    return f"too few (n={int(n)})"
