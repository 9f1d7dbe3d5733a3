"""Small, dependency-free SVG charts for dashboards and printable reports (no JS, no CDN, prints as vectors)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from training.ml.reporting import MIN_ITEMS, too_few

W, H = 560, 252
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 28, 64
PALETTE = ("#4da3ff", "#e3b341", "#56d364", "#ff7b72", "#bc8cff", "#39c5cf")
#: The chance / reference line: a neutral dashed grey, never one of the series' colours.
REFERENCE = "#8b949e"
CHAR_W = 6.2  # px per character of an 11 px tick label, for fitting labels and laying out legends


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) from at or below `low` to at or above `high`, about
    `count` of them: 0.6/0.65/0.7, not 0.60/0.62/0.64/0.67/0.69."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_format(ticks: Sequence[float]) -> str:
    """The fewest decimals that tell the ticks apart (0.25 steps: 2; 0.5: 1; 5: 0)."""
    for decimals in range(0, 7):
        if all(abs(round(t, decimals) - t) < 1e-9 for t in ticks):
            return f"{{:.{decimals}f}}"
    return "{:.3g}"


def fit(label: str, width_px: float) -> str:
    """`label` cut with an ellipsis to fit `width_px` (the full label goes in the element's tooltip)."""
    most = max(3, int(width_px / CHAR_W))
    return label if len(label) <= most else label[: most - 1] + "…"


def legend(entries: Sequence[tuple[str, str, str]]) -> str:
    """A legend row under the plot: per entry (label, colour, mark) with mark "box" (bars), "dot" (points and
    lines) or "dash" (a reference line), a swatch then the label."""
    parts, x = [], float(LEFT)
    for label, colour, mark in entries:
        if mark == "box":
            parts.append(f'<rect x="{x:.1f}" y="{H - 18}" width="10" height="10" fill="{colour}" class="swatch"/>')
        elif mark == "dash":
            parts.append(f'<line x1="{x:.1f}" x2="{x + 12:.1f}" y1="{H - 13}" y2="{H - 13}" stroke="{colour}" '
                         f'stroke-width="2" stroke-dasharray="4 3" class="swatch"/>')
        else:
            parts.append(f'<line x1="{x:.1f}" x2="{x + 12:.1f}" y1="{H - 13}" y2="{H - 13}" stroke="{colour}" '
                         f'stroke-width="2" class="swatch"/><circle cx="{x + 6:.1f}" cy="{H - 13}" r="3" '
                         f'fill="{colour}"/>')
        parts.append(f'<text x="{x + 16:.1f}" y="{H - 9}" class="tick legend-label">{escape(label)}</text>')
        x += 16 + CHAR_W * len(label) + 14
    return "".join(parts)


def _frame(title: str, y_max: float, y_ticks: Sequence[float], fmt: str | None = None, y_min: float = 0.0
           ) -> list[str]:
    fmt = fmt or tick_format(y_ticks)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img" '
             f'aria-label="{escape(title)}">',
             f'<text x="{LEFT}" y="16" class="chart-title">{escape(title)}</text>']
    for tick in y_ticks:
        y = _y(tick, y_max, y_min)
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt.format(tick)}</text>')
    return parts


def _reference(value: float, y_max: float, y_min: float = 0.0) -> str:
    y = _y(value, y_max, y_min)
    return (f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="reference" stroke="{REFERENCE}" '
            f'stroke-dasharray="4 3"/>')


def _reference_label(value: float) -> str:
    return f"chance ({value:g})" if value == 0.5 else f"reference ({value:g})"


def _y(value: float, y_max: float, y_min: float = 0.0) -> float:
    return TOP + (H - TOP - BOTTOM) * (1 - (max(y_min, min(value, y_max)) - y_min) / (y_max - y_min))


def bars_with_ci(rows: Sequence[tuple[str, float | None, float | None, float | None]], *, title: str,
                 y_max: float = 1.0, reference: float | None = 0.5) -> str:
    """One bar per row (label, value, ci_low, ci_high); undefined values are drawn as 'n/a'."""
    ticks = nice_ticks(0.0, y_max)
    y_max = ticks[-1]
    parts = _frame(title, y_max, ticks)
    if reference is not None:
        parts.append(_reference(reference, y_max))
    slot = (W - LEFT - RIGHT) / max(1, len(rows))
    for i, (label, value, low, high) in enumerate(rows):
        x = LEFT + i * slot + slot * 0.2
        width = slot * 0.6
        if value is None:
            parts.append(f'<text x="{x + width / 2:.1f}" y="{H - BOTTOM - 6}" class="tick" '
                         f'text-anchor="middle">n/a</text>')
        else:
            y = _y(value, y_max)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{H - BOTTOM - y:.1f}" '
                         f'fill="{PALETTE[0]}"><title>{escape(label)}: {value:.3f}</title></rect>')
            if low is not None and high is not None:
                cx = x + width / 2
                y0, y1 = _y(low, y_max), _y(high, y_max)
                parts.append(f'<path d="M{cx - 6:.1f} {y0:.1f}H{cx + 6:.1f}M{cx:.1f} {y0:.1f}V{y1:.1f}'
                             f'M{cx - 6:.1f} {y1:.1f}H{cx + 6:.1f}" class="whisker"/>')
        parts.append(f'<text x="{x + width / 2:.1f}" y="{H - BOTTOM + 16}" class="tick" '
                     f'text-anchor="middle">{escape(fit(label, slot - 4))}<title>{escape(label)}</title></text>')
    if reference is not None and rows:
        parts.append(legend([(_reference_label(reference), REFERENCE, "dash")]))
    parts.append("</svg>")
    return "".join(parts)


def grouped_histogram(groups: dict[str, dict[int, int]], *, title: str, values: Sequence[int]) -> str:
    """Counts per value (e.g. rubric scores 1–5), one coloured bar per group, a legend with swatches."""
    peak = max([n for g in groups.values() for n in g.values()] or [1])
    ticks = [t for t in nice_ticks(0.0, peak) if t == int(t)] if peak >= 4 else list(range(0, int(peak) + 2))
    peak = ticks[-1]
    parts = _frame(title, peak, ticks, "{:.0f}")
    slot = (W - LEFT - RIGHT) / max(1, len(values))
    width = slot * 0.8 / max(1, len(groups))
    for vi, value in enumerate(values):
        for gi, (name, counts) in enumerate(groups.items()):
            n = counts.get(value, 0)
            x = LEFT + vi * slot + slot * 0.1 + gi * width
            y = _y(n, peak)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{H - BOTTOM - y:.1f}" '
                         f'fill="{PALETTE[gi % len(PALETTE)]}"><title>{escape(name)} {value}: {n}</title></rect>')
        parts.append(f'<text x="{LEFT + (vi + 0.5) * slot:.1f}" y="{H - BOTTOM + 16}" class="tick" '
                     f'text-anchor="middle">{value}</text>')
    parts.append(legend([(name, PALETTE[gi % len(PALETTE)], "box") for gi, name in enumerate(groups)]))
    parts.append("</svg>")
    return "".join(parts)


def lines(series: dict[str, Sequence[tuple[float, float]]], *, title: str, y_max: float | None = None) -> str:
    """One polyline per series of (x, y) points, e.g. accuracy per round or a loss curve."""
    points = [p for s in series.values() for p in s]
    if not points:
        return bars_with_ci([], title=f"{title} (no data yet)", reference=None)
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    ticks = nice_ticks(0.0, y_max or max(p[1] for p in points) or 1.0)
    top = ticks[-1]
    parts = _frame(title, top, ticks)
    span = (x_max - x_min) or 1.0
    for i, (name, pts) in enumerate(series.items()):
        coords = " ".join(f"{LEFT + (W - LEFT - RIGHT) * (x - x_min) / span:.1f},{_y(y, top):.1f}" for x, y in pts)
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2">'
                     f'<title>{escape(name)}</title></polyline>')
    parts.append(legend([(name, PALETTE[i % len(PALETTE)], "dot") for i, name in enumerate(series)]))
    parts.append("</svg>")
    return "".join(parts)


def points_with_ci(series: dict[str, Sequence[tuple]], *, title: str, y_max: float = 1.0,
                   reference: float | None = None) -> str:
    """A statistic across rounds: per series, (x, value, ci_low, ci_high[, caption]) points joined by a line, with
    whiskers for the interval; the series are set side by side at each x so that no interval hides another. A
    point without a value shows its caption (e.g. "too few (n=5)") at its x instead; with no value anywhere, the
    captions alone (or "no data yet")."""
    xs = sorted({p[0] for pts in series.values() for p in pts})
    present = {name: [p for p in pts if p[1] is not None] for name, pts in series.items()}
    captions = {(name, p[0]): p[4] for name, pts in series.items() for p in pts
                if p[1] is None and len(p) > 4 and p[4]}
    if not xs or (not any(present.values()) and not captions):
        return bars_with_ci([], title=f"{title} (no data yet)", reference=None)
    ticks = nice_ticks(0.0, y_max)
    y_max = ticks[-1]
    parts = _frame(title, y_max, ticks)
    if reference is not None:
        parts.append(_reference(reference, y_max))
    x_min, x_max = xs[0], xs[-1]
    span = (x_max - x_min) or 1.0
    dodge = 8.0 if len(series) > 1 else 0.0

    def x_of(x: float, i: int = 0) -> float:
        pad = 18 + dodge * len(series)
        centre = LEFT + pad + (W - LEFT - RIGHT - 2 * pad) * ((x - x_min) / span if x_max > x_min else 0.5)
        return centre + dodge * (i - (len(series) - 1) / 2)

    for x in xs:
        parts.append(f'<text x="{x_of(x):.1f}" y="{H - BOTTOM + 16}" class="tick" text-anchor="middle">'
                     f'{x:g}</text>')
    row = 0
    for i, name in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        pts = present[name]
        if len(pts) > 1:
            coords = " ".join(f"{x_of(p[0], i):.1f},{_y(p[1], y_max):.1f}" for p in pts)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in pts:
            x, v, low, high = p[:4]
            cx, cy = x_of(x, i), _y(v, y_max)
            interval = ""
            if low is not None and high is not None:
                parts.append(f'<path d="M{cx:.1f} {_y(low, y_max):.1f}V{_y(high, y_max):.1f}" stroke="{colour}" '
                             f'stroke-width="1.5"/>')
                interval = f" [{low:.3f}, {high:.3f}]"
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{colour}"><title>{escape(name)} '
                         f'{x:g}: {v:.3f}{interval}</title></circle>')
        for x in xs:
            caption = captions.get((name, x))
            if caption:  # said at its x, under the axis labels, one line per series that has one
                parts.append(f'<text x="{x_of(x):.1f}" y="{H - BOTTOM + 28 + 10 * row:.1f}" class="tick caption" '
                             f'text-anchor="middle" fill="{colour}">'
                             f'{escape(fit(f"{name}: {caption}" if len(series) > 1 else caption, 220))}'
                             f'<title>{escape(name)} {x:g}: {escape(caption)}</title></text>')
        row += any(captions.get((name, x)) for x in xs)
    entries = [(name, PALETTE[i % len(PALETTE)], "dot") for i, name in enumerate(series)]
    if reference is not None:
        entries.append((_reference_label(reference), REFERENCE, "dash"))
    parts.append(legend(entries))
    parts.append("</svg>")
    return "".join(parts)


def _nice_range(values: Sequence[float]) -> tuple[float, float]:
    """A padded [low, high] around `values` (any sign: a reward model's scores are not probabilities)."""
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or max(abs(high), 1.0) * 0.1
    return low - pad, high + pad


def line_with_ci(points: Sequence[tuple[str, float | None, float | None, float | None, int]], *, title: str,
                 marked: int | None = None, y_range: tuple[float, float] | None = None,
                 reference: float | None = None) -> str:
    """One point per category, in order (label, value, ci_low, ci_high, n), joined by a line, with whiskers for
    the interval: e.g. a score per model version. The category at index `marked` gets a ring and a bold label (the
    current version). A value from fewer than MIN_ITEMS items is no statistic: its slot reads "too few (n=…)"; a missing
    value reads "n/a"; both break the line."""
    known = [v for _, value, low, high, n in points if value is not None and n >= MIN_ITEMS
             for v in (value, low, high) if v is not None]
    if not known and not points:
        return bars_with_ci([], title=f"{title} (no data yet)", reference=None)
    ticks = nice_ticks(*(y_range or (_nice_range(known) if known else (0.0, 1.0))))
    y_min, y_max = ticks[0], ticks[-1]
    parts = _frame(title, y_max, ticks, None, y_min)
    shows_reference = reference is not None and y_min <= reference <= y_max
    if shows_reference:
        parts.append(_reference(reference, y_max, y_min))
    lines_at = len(parts)  # the joining lines go under the points
    slot = (W - LEFT - RIGHT) / max(1, len(points))
    segments: list[list[str]] = [[]]
    for i, (label, value, low, high, n) in enumerate(points):
        cx = LEFT + (i + 0.5) * slot
        bold = ' font-weight="bold"' if i == marked else ""
        parts.append(f'<text x="{cx:.1f}" y="{H - BOTTOM + 16}" class="tick" text-anchor="middle"{bold}>'
                     f'{escape(fit(label, slot - 4))}<title>{escape(label)}</title></text>')
        if value is None or n < MIN_ITEMS:
            caption = "n/a" if value is None else too_few(n)
            parts.append(f'<text x="{cx:.1f}" y="{H - BOTTOM + 30}" class="tick" text-anchor="middle">{caption}'
                         f'<title>{escape(label)}: {caption}</title></text>')
            segments.append([])
            continue
        cy = _y(value, y_max, y_min)
        segments[-1].append(f"{cx:.1f},{cy:.1f}")
        parts.append(f'<text x="{cx:.1f}" y="{H - BOTTOM + 30}" class="tick" text-anchor="middle">n={n}</text>')
        interval = ""
        if low is not None and high is not None:
            y0, y1 = _y(low, y_max, y_min), _y(high, y_max, y_min)
            parts.append(f'<path d="M{cx - 5:.1f} {y0:.1f}H{cx + 5:.1f}M{cx:.1f} {y0:.1f}V{y1:.1f}'
                         f'M{cx - 5:.1f} {y1:.1f}H{cx + 5:.1f}" class="whisker"/>')
            interval = f" [{low:.3f}, {high:.3f}]"
        tip = f"{escape(label)}: {value:.3f}{interval}, n={n}" + (" (current)" if i == marked else "")
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{PALETTE[0]}"><title>{tip}</title></circle>')
        if i == marked:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" stroke="{PALETTE[1]}" '
                         f'stroke-width="2" class="marked"/>')
    parts[lines_at:lines_at] = [f'<polyline points="{" ".join(seg)}" fill="none" stroke="{PALETTE[0]}" '
                                f'stroke-width="1.5" opacity="0.6"/>' for seg in segments if len(seg) > 1]
    if marked is not None:
        parts.append(f'<circle cx="{W - RIGHT - 118}" cy="12" r="6" fill="none" stroke="{PALETTE[1]}" '
                     f'stroke-width="2"/><text x="{W - RIGHT - 108}" y="16" class="tick">current version</text>')
    if shows_reference:
        parts.append(legend([(_reference_label(reference), REFERENCE, "dash")]))
    parts.append("</svg>")
    return "".join(parts)
