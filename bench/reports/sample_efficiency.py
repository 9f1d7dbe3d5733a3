"""Sample efficiency's statistics over seeds and its report: the table, the paired contrasts, the SVG plot and the
bench/RESULTS.md section (`bench/sample_efficiency.py` runs the rounds)."""

from __future__ import annotations

import math
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MD_BEGIN, MD_END = "<!-- sample_efficiency:begin -->", "<!-- sample_efficiency:end -->"

def _t95(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def over_seeds(values: list[float], single: dict | None = None) -> dict:
    """Mean over seeds with a 95% t-interval over seeds; one seed: its own panel-bootstrap CI (`single`)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "ci_low": None, "ci_high": None, "n_seeds": 0, "ci": None}
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        low, high = (single or {}).get("ci_low"), (single or {}).get("ci_high")
        return {"mean": mean, "ci_low": low, "ci_high": high, "n_seeds": 1,
                "ci": "panel bootstrap (one seed)" if low is not None else None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = _t95(len(vals) - 1) * sd / math.sqrt(len(vals))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n_seeds": len(vals),
            "ci": "t-interval over seeds"}


def summarise(seeds: list[dict], args) -> tuple[list[dict], list[dict]]:
    rows = [r for s in seeds for r in s["rows"]]
    cells = []
    for objective in args.objectives:
        for sel in args.selections:
            for budget in args.budgets:
                cell = [r for r in rows if (r["objective"], r["selection"], r["budget"]) == (objective, sel, budget)]
                ok = [r for r in cell if r["status"] == "done" and r["preference_gain"]]
                # a round whose reward model failed its check ships the base: gain 0, counted (not dropped)
                blocked = [r for r in cell if r["status"] == "done" and r.get("blocked")]
                gains = [r["preference_gain"]["mean"] for r in ok] + [0.0] * len(blocked)
                fools = [(r["fooling_rate_gain"] or {}).get("mean") for r in ok] + [0.0] * len(blocked)
                per100 = ([100 * r["preference_gain"]["mean"] / r["labels"] for r in ok if r["labels"]]
                          + [0.0] * len(blocked))
                one = ok[0] if len(ok) == 1 and not blocked else None
                scale = 100 / one["labels"] if one and one["labels"] else None
                single100 = ({k: one["preference_gain"][k] * scale for k in ("ci_low", "ci_high")
                              if one["preference_gain"].get(k) is not None} if scale else None)
                labels = [r["labels"] for r in cell]
                cells.append({
                    "objective": objective, "selection": sel, "budget": budget,
                    "seeds": len(cell), "failed": len(cell) - len(ok) - len(blocked), "blocked": len(blocked),
                    "labels": sum(labels) / len(labels) if labels else None,
                    "synthetic_read": sum(r["synthetic_read"] for r in cell) / max(len(cell), 1),
                    "pairs": (sum(r["pairs"] or 0 for r in cell) / len(cell)) if cell else None,
                    "preference_gain": over_seeds(gains, one and one["preference_gain"]),
                    "gain_per_100_labels": over_seeds(per100, single100),
                    "fooling_rate_gain": over_seeds(fools, one and one["fooling_rate_gain"]),
                    "seeds_positive": sum(1 for g in gains if g > 0),
                    "seeds_p_below_0.05": sum(1 for r in ok if r["p_value"] is not None and r["p_value"] < 0.05),
                    "seconds_mean": round(sum(r["seconds"] for r in cell) / max(len(cell), 1), 1),
                    "cpu_s_mean": round(sum(r["cpu_s"] for r in cell) / max(len(cell), 1), 1),
                })
    contrasts = []
    flat = [c for s in seeds for c in s["contrasts"]]
    keys = sorted({(c["contrast"], c["score"], c["budget"], c["objective"] or "", c["selection"] or "")
                   for c in flat})
    for what, score, budget, objective, sel in keys:
        group = [c for c in flat if (c["contrast"], c["score"], c["budget"], c["objective"] or "",
                                     c["selection"] or "") == (what, score, budget, objective, sel)]
        diffs = [c["difference"]["mean"] for c in group]
        contrasts.append({"contrast": what, "score": score, "budget": budget, "objective": objective or None,
                          "selection": sel or None,
                          "difference": over_seeds(diffs, group[0]["difference"] if len(group) == 1 else None),
                          "p_values": [c["p_value"] for c in group]})
    return cells, contrasts


def _ci(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("ci_low") is None:
        return f"{stat['mean']:+.{digits}f}"
    return f"{stat['mean']:+.{digits}f} [{stat['ci_low']:+.{digits}f}, {stat['ci_high']:+.{digits}f}]"


def table_lines(cells: list[dict]) -> list[str]:
    lines = ["| objective | selection | synthetic / round | labels / round | pairs | preference gain [95% CI] | "
             "seeds > 0 | blocked | gain per 100 labels [95% CI] | fooling-rate gain [95% CI] | seeds p < 0.05 | "
             "s / round (CPU) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in cells:
        failed = f" ({c['failed']} failed)" if c["failed"] else ""
        counted = c["seeds"] - c["failed"]
        lines.append(f"| {c['objective']} | {c['selection']} | {c['budget']} | {c['labels']:.0f} | "
                     f"{c['pairs']:.0f} | {_ci(c['preference_gain'])} | {c.get('seeds_positive', '—')}/{counted} | "
                     f"{c.get('blocked', 0)}/{counted} | {_ci(c['gain_per_100_labels'])} | "
                     f"{_ci(c['fooling_rate_gain'])} | {c['seeds_p_below_0.05']}/{counted}"
                     f"{failed} | {c['seconds_mean']} ({c['cpu_s_mean']}) |")
    return lines


def contrast_lines(contrasts: list[dict]) -> list[str]:
    lines = ["| contrast | within | synthetic / round | preference difference [95% CI] | fooling-rate difference "
             "[95% CI] | per-seed p (preference) |", "| --- | --- | --- | --- | --- | --- |"]
    by = {}
    for c in contrasts:
        by.setdefault((c["contrast"], c["objective"] or c["selection"], c["budget"]), {})[c["score"]] = c
    for (what, within, budget), pair in by.items():
        pref, fool = pair.get("preference_gain"), pair.get("fooling_rate_gain")
        ps = ", ".join("n/a" if p is None else f"{p:.2g}" for p in (pref or {}).get("p_values", []))
        lines.append(f"| {what} | {within} | {budget} | {_ci((pref or {}).get('difference'))} | "
                     f"{_ci((fool or {}).get('difference'))} | {ps} |")
    return lines


def svg_plot(cells: list[dict], path: Path, title: str) -> None:
    """Preference gain over the base against labels per round, one line per objective × selection, 95% CI bars."""
    w, h, left, right, top, bottom = 660, 320, 76, 170, 34, 44
    pts = [c for c in cells if c["preference_gain"]["mean"] is not None and c["labels"]]
    if not pts:
        return
    xs = [c["labels"] for c in pts]
    ys = [v for c in pts for v in (c["preference_gain"]["mean"], c["preference_gain"]["ci_low"],
                                   c["preference_gain"]["ci_high"]) if v is not None] + [0.0]
    x0, x1 = 0.0, max(xs) * 1.08
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.08 or 0.01
    lo, hi = lo - pad, hi + pad

    def x(v):
        return left + (w - left - right) * (v - x0) / (x1 - x0)

    def y(v):
        return top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))

    colours = {"reward_weighted": "#1f77b4", "dpo": "#d62728"}
    dashes = {"random": "", "active": ' stroke-dasharray="6,4"'}
    offsets = {("reward_weighted", "random"): -3, ("reward_weighted", "active"): -1, ("dpo", "random"): 1,
               ("dpo", "active"): 3}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" font-family="sans-serif" '
             f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="18" font-size="13">{title}</text>']
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e4e4e4"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:+.3f}</text>')
    parts.append(f'<line x1="{left}" x2="{w - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#888"/>')
    step = 10 ** math.floor(math.log10(max(x1, 1)))
    step = step * 5 if x1 / step > 10 else step * 2 if x1 / step > 5 else step
    tick = 0.0
    while tick <= x1:
        parts.append(f'<text x="{x(tick):.1f}" y="{h - bottom + 16}" text-anchor="middle">{tick:.0f}</text>')
        tick += step
    parts.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 8}" text-anchor="middle">labels collected in '
                 f'the round</text><text x="14" y="{(top + h - bottom) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + h - bottom) / 2:.0f})">panel preference gain over the base'
                 f'</text>')
    legend = 0
    for objective in colours:
        for sel in dashes:
            line = sorted((c for c in pts if (c["objective"], c["selection"]) == (objective, sel)),
                          key=lambda c: c["labels"])
            if not line:
                continue
            colour, off = colours[objective], offsets[(objective, sel)]
            poly = " ".join(f"{x(c['labels']) + off:.1f},{y(c['preference_gain']['mean']):.1f}" for c in line)
            parts.append(f'<polyline points="{poly}" fill="none" stroke="{colour}" stroke-width="2"'
                         f'{dashes[sel]}/>')
            for c in line:
                px, st = x(c["labels"]) + off, c["preference_gain"]
                parts.append(f'<circle cx="{px:.1f}" cy="{y(st["mean"]):.1f}" r="3" fill="{colour}"/>')
                if st.get("ci_low") is not None:
                    parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y(st["ci_low"]):.1f}" '
                                 f'y2="{y(st["ci_high"]):.1f}" stroke="{colour}"/>')
            ly = top + 10 + 18 * legend
            parts.append(f'<line x1="{w - right + 12}" x2="{w - right + 42}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                         f'stroke-width="2"{dashes[sel]}/><text x="{w - right + 48}" y="{ly + 4}">'
                         f'{objective.replace("_", "-")}, {sel}</text>')
            legend += 1
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def markdown(result: dict, cells: list[dict], contrasts: list[dict], plot: Path | None) -> str:
    s, m = result["settings"], result["machine"]
    try:
        plot_ref = f"![sample efficiency]({os.path.relpath(plot, ROOT / 'bench')})" if plot else ""
    except ValueError:
        plot_ref = ""
    lines = [MD_BEGIN, "", "## Sample efficiency (`bench/sample_efficiency.py`)", "",
             f"`bench/results/{Path(s['out']).name}` — {result['date']}; {m['platform']}, {m['cpus']} CPUs, "
             f"Python {m['python']}{'; **pilot (--quick)**' if s['quick'] else ''}", "",
             f"Command: `{result['command']}`. Wall {result['wall_s'] / 60:.1f} min, child CPU "
             f"{result['cpu_s'] / 60:.1f} min (user + system; load average {result['load_avg_start']:.1f} at the "
             f"start).", "",
             f"Seeds {', '.join(str(x) for x in s['seeds'])}; per seed one study per objective × selection "
             "(reward-weighted: realism + rubric tasks; DPO: + pairwise preference tasks) on the same phantoms, tiny "
             f"domain-adapted base, simulated readers ({s['readers']} per image) and evaluation panel ({s['panel']} "
             "items); the active studies run one warm-up round (smallest budget, random) whose reward model scores "
             "every active selection of the study; every cell "
             f"is one round from the base with only its own labels (`feedback_rounds: this`), oversample "
             f"{s['oversample']} for both selections (same candidates), real images = synthetic / 3, "
             f"{s['reward_steps']} reward and {s['finetune_steps']} finetune steps (DPO: {s.get('dpo_batch', 4)} "
             f"pairs a batch; the loop preset's recipe otherwise), torch threads {s.get('threads') or 'default'}. "
             "Gain: produced version − base on the panel's simulated-reader preference (paired over "
             "items); a round whose reward model failed its check (the `blocked` column) trains nothing and ships "
             "the base: gain 0, counted. CI: 95% t-interval over seeds (one seed: that seed's panel bootstrap). "
             "Labels: every answer "
             "stored in the round (warm-up labels, "
             f"{', '.join(f'{k} {v:.0f}' for k, v in result['warmup_labels'].items())} per study, not included).",
             "", *table_lines(cells), "", "Paired contrasts on the same panel items (per seed, then over seeds):",
             "", *contrast_lines(contrasts), ""]
    if plot_ref:
        lines += [plot_ref, ""]
    lines += [MD_END, ""]
    return "\n".join(lines)


def markdown_write(path: Path, block: str) -> None:
    """Replace this benchmark's own block of RESULTS.md (between its markers), or append it; nothing else."""
    text = path.read_text() if path.exists() else ""
    if MD_BEGIN in text and MD_END in text:
        head, rest = text.split(MD_BEGIN, 1)
        tail = rest.split(MD_END, 1)[1].lstrip("\n")
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
