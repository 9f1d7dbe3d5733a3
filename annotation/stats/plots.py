"""Small, dependency-free SVG charts for dashboards and printable reports (no JS, no CDN, prints as vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

W, H = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 28, 52
PALETTE = ("#4da3ff", "#e3b341", "#56d364", "#ff7b72", "#bc8cff", "#39c5cf")


def _frame(title: str, y_max: float, y_ticks: Sequence[float], fmt: str = "{:.1f}", y_min: float = 0.0
           ) -> list[str]:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" class="chart" role="img" '
             f'aria-label="{escape(title)}">',
             f'<text x="{LEFT}" y="16" class="chart-title">{escape(title)}</text>']
    for tick in y_ticks:
        y = _y(tick, y_max, y_min)
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{fmt.format(tick)}</text>')
    return parts


def _y(value: float, y_max: float, y_min: float = 0.0) -> float:
    return TOP + (H - TOP - BOTTOM) * (1 - (max(y_min, min(value, y_max)) - y_min) / (y_max - y_min))


def bars_with_ci(rows: Sequence[tuple[str, float | None, float | None, float | None]], *, title: str,
                 y_max: float = 1.0, reference: float | None = 0.5) -> str:
    """One bar per row (label, value, ci_low, ci_high); undefined values are drawn as 'n/a'."""
    parts = _frame(title, y_max, [y_max * i / 4 for i in range(5)], "{:.2f}")
    if reference is not None:
        y = _y(reference, y_max)
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="reference"/>')
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
                     f'text-anchor="middle">{escape(label[:14])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def grouped_histogram(groups: dict[str, dict[int, int]], *, title: str, values: Sequence[int]) -> str:
    """Counts per value (e.g. rubric scores 1–5), one coloured bar per group."""
    peak = max([n for g in groups.values() for n in g.values()] or [1])
    parts = _frame(title, peak, [peak * i / 4 for i in range(5)], "{:.0f}")
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
    for gi, name in enumerate(groups):
        parts.append(f'<rect x="{LEFT + gi * 110}" y="{H - 18}" width="10" height="10" '
                     f'fill="{PALETTE[gi % len(PALETTE)]}"/><text x="{LEFT + gi * 110 + 14}" y="{H - 9}" '
                     f'class="tick">{escape(name[:14])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def lines(series: dict[str, Sequence[tuple[float, float]]], *, title: str, y_max: float | None = None) -> str:
    """One polyline per series of (x, y) points, e.g. accuracy per round or a loss curve."""
    points = [p for s in series.values() for p in s]
    if not points:
        return bars_with_ci([], title=f"{title} (no data yet)", reference=None)
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    top = y_max or max(p[1] for p in points) or 1.0
    parts = _frame(title, top, [top * i / 4 for i in range(5)], "{:.2f}")
    span = (x_max - x_min) or 1.0
    for i, (name, pts) in enumerate(series.items()):
        coords = " ".join(f"{LEFT + (W - LEFT - RIGHT) * (x - x_min) / span:.1f},{_y(y, top):.1f}" for x, y in pts)
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2">'
                     f'<title>{escape(name)}</title></polyline>')
        parts.append(f'<text x="{LEFT + i * 120}" y="{H - 9}" class="tick" fill="{colour}">{escape(name[:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def points_with_ci(series: dict[str, Sequence[tuple[float, float | None, float | None, float | None]]], *,
                   title: str, y_max: float = 1.0, reference: float | None = None) -> str:
    """Per series, (x, value, ci_low, ci_high) points joined by a line, with whiskers for the interval: a statistic
    across rounds. Missing values break nothing: they are left out."""
    present = {name: [p for p in pts if p[1] is not None] for name, pts in series.items()}
    xs = [p[0] for pts in present.values() for p in pts]
    if not xs:
        return bars_with_ci([], title=f"{title} (no data yet)", reference=None)
    x_min, x_max = min(xs), max(xs)
    span = (x_max - x_min) or 1.0
    parts = _frame(title, y_max, [y_max * i / 4 for i in range(5)], "{:.2f}")
    if reference is not None:
        y = _y(reference, y_max)
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="reference"/>')

    def x_of(x: float) -> float:
        pad = 18
        return LEFT + pad + (W - LEFT - RIGHT - 2 * pad) * ((x - x_min) / span if x_max > x_min else 0.5)

    for x in sorted(set(xs)):
        parts.append(f'<text x="{x_of(x):.1f}" y="{H - BOTTOM + 16}" class="tick" text-anchor="middle">'
                     f'{x:g}</text>')
    for i, (name, pts) in enumerate(present.items()):
        colour = PALETTE[i % len(PALETTE)]
        if len(pts) > 1:
            coords = " ".join(f"{x_of(x):.1f},{_y(v, y_max):.1f}" for x, v, _, _ in pts)
            parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, v, low, high in pts:
            cx, cy = x_of(x), _y(v, y_max)
            if low is not None and high is not None:
                parts.append(f'<path d="M{cx:.1f} {_y(low, y_max):.1f}V{_y(high, y_max):.1f}" stroke="{colour}" '
                             f'stroke-width="1.5"/>')
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{colour}"><title>{escape(name)} '
                         f'{x:g}: {v:.3f}</title></circle>')
        parts.append(f'<text x="{LEFT + i * 150}" y="{H - 9}" class="tick" fill="{colour}">{escape(name[:24])}</text>')
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
    current version). A value from fewer than 2 items is no statistic: its slot reads "too few (n=…)"; a missing
    value reads "n/a"; both break the line."""
    known = [v for _, value, low, high, n in points if value is not None and n >= 2
             for v in (value, low, high) if v is not None]
    if not known and not points:
        return bars_with_ci([], title=f"{title} (no data yet)", reference=None)
    y_min, y_max = y_range or (_nice_range(known) if known else (0.0, 1.0))
    ticks = [y_min + (y_max - y_min) * i / 4 for i in range(5)]
    parts = _frame(title, y_max, ticks, "{:.2f}" if y_max - y_min < 10 else "{:.0f}", y_min)
    if reference is not None and y_min <= reference <= y_max:
        y = _y(reference, y_max, y_min)
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="reference"/>')
    lines_at = len(parts)  # the joining lines go under the points
    slot = (W - LEFT - RIGHT) / max(1, len(points))
    segments: list[list[str]] = [[]]
    for i, (label, value, low, high, n) in enumerate(points):
        cx = LEFT + (i + 0.5) * slot
        bold = ' font-weight="bold"' if i == marked else ""
        parts.append(f'<text x="{cx:.1f}" y="{H - BOTTOM + 16}" class="tick" text-anchor="middle"{bold}>'
                     f'{escape(label[:16])}</text>')
        if value is None or n < 2:
            caption = "n/a" if value is None else f"too few (n={n})"
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
    parts.append("</svg>")
    return "".join(parts)
