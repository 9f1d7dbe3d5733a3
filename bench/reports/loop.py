"""`bench/loop.py`'s statistics over loop seeds and its report: per seed the first → current gain and feedback −
control after each round, over seeds the mean with a t-CI, a sign test and the share of rounds whose finetune
improved the preference; markdown tables and an SVG plot.

The unit of replication is the loop seed: the claim "feedback improves the generator" is about the procedure.
Per-item CIs on the panel (kept in the JSON) measure the panel's precision only.
"""

from __future__ import annotations

import math
from pathlib import Path


def over_seeds(values: list[float]) -> dict:
    """Mean with a 95 % t-interval over seeds, how many are positive and the one-sided sign-test p (> 0)."""
    from scipy.stats import binomtest, t

    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    out = {"mean": None, "ci_low": None, "ci_high": None, "n_seeds": n, "positive": sum(v > 0 for v in vals),
           "sign_p": None, "values": vals}
    if not n:
        return out
    mean = sum(vals) / n
    out["mean"] = mean
    if n > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(ci_low=mean - half, ci_high=mean + half)
    nonzero = [v for v in vals if v != 0]
    if nonzero:
        out["sign_p"] = float(binomtest(sum(v > 0 for v in nonzero), len(nonzero), alternative="greater").pvalue)
    return out


def _mean(side: dict | None, key: str = "preference") -> float | None:
    stat = (side or {}).get(key) or {}
    return stat.get("mean")


def arm_trace(rounds: list[dict], key: str = "preference") -> dict:
    """The arm's first version's score, its current version's score after each round (the produced version when
    promoted, else the parent stays), and per round whether its finetune improved the score (child − parent > 0;
    a round that produced nothing, e.g. a blocked one, did not)."""
    first = _mean((rounds[0].get("panel") or {}).get("parent"), key)
    current, improved, value = [], [], first
    for r in rounds:
        panel = r.get("panel") or {}
        parent, child = _mean(panel.get("parent"), key), _mean(panel.get("produced"), key)
        improved.append(child is not None and parent is not None and child > parent)
        if r.get("promoted") and child is not None:
            value = child
        current.append(value)
    return {"first": first, "current": current, "improved": improved}


def seed_row(seed: int, out: dict) -> dict:
    fb, ctl = arm_trace(out["rounds"]), arm_trace(out["control"]["rounds"])
    fb_fool = arm_trace(out["rounds"], "realism_only_fooling_rate")
    return {
        "seed": seed, "wall_s": out.get("wall_s"), "cpu_s": out.get("cpu_s"),
        "gain": [c - fb["first"] for c in fb["current"]],
        "feedback_minus_control": [f - c for f, c in zip(fb["current"], ctl["current"], strict=True)],
        "control_gain": [c - ctl["first"] for c in ctl["current"]],
        "realism_only_fooling_gain": [None if c is None or fb_fool["first"] is None else c - fb_fool["first"]
                                      for c in fb_fool["current"]],
        "improved": {"feedback": fb["improved"], "control": ctl["improved"]},
        "blocked": [bool((r.get("reward_valid") or {}).get("valid") is False) for r in out["rounds"]],
        "promoted": {"feedback": [r["promoted"] for r in out["rounds"]],
                     "control": [r["promoted"] for r in out["control"]["rounds"]]},
        "summary": out["summary"], "control_summary": out["control"]["summary"],
        "feedback_vs_control_panel": out["feedback_vs_control"],
        "rounds": {"feedback": out["rounds"], "control": out["control"]["rounds"]},
    }


def over_seeds_report(rows: list[dict], rounds: int) -> dict:
    per_round = []
    for r in range(rounds):
        per_round.append({
            "round": r + 1,
            "gain": over_seeds([row["gain"][r] for row in rows]),
            "feedback_minus_control": over_seeds([row["feedback_minus_control"][r] for row in rows]),
            "control_gain": over_seeds([row["control_gain"][r] for row in rows]),
            "realism_only_fooling_gain": over_seeds([row["realism_only_fooling_gain"][r] for row in rows]),
        })
    improved = {}
    for arm in ("feedback", "control"):
        flags = [row["improved"][arm] for row in rows]
        k, n = sum(sum(f) for f in flags), sum(len(f) for f in flags)
        # rounds are clustered within a seed: the CI is over the seeds' shares, not over pooled rounds
        improved[arm] = {"k": k, "n": n, "share": k / n if n else None,
                         "per_seed": over_seeds([sum(f) / len(f) for f in flags if f])}
    improved["feedback_minus_control"] = over_seeds(
        [sum(row["improved"]["feedback"]) / len(row["improved"]["feedback"])
         - sum(row["improved"]["control"]) / len(row["improved"]["control"]) for row in rows
         if row["improved"]["feedback"] and row["improved"]["control"]])
    return {"per_round": per_round, "rounds_improved": improved,
            "blocked_rounds": sum(sum(row["blocked"]) for row in rows),
            "note": "only the feedback arm can be blocked by the reward check (a blocked round counts as not "
                    "improved); the control arm always finetunes"}


def acceptance(report: dict, rounds: int) -> dict:
    """For 2 and R rounds: gain and feedback − control each with a t-CI above 0 and ≥ 7 of 8 seeds positive
    (≥ n − 1 of n); the feedback arm's finetune improved the preference in ≥ 80 % of its rounds."""
    checks = {}
    for r in sorted({min(2, rounds), rounds}):
        for name in ("gain", "feedback_minus_control"):
            stat = report["per_round"][r - 1][name]
            ok = (stat["ci_low"] is not None and stat["ci_low"] > 0 and stat["positive"] >= stat["n_seeds"] - 1)
            checks[f"{name} after {r} rounds"] = ok
    share = report["rounds_improved"]["feedback"]["share"]
    checks["feedback finetunes improved >= 80% of rounds"] = share is not None and share >= 0.8
    return {"checks": checks, "passed": all(checks.values())}


def _ci(stat: dict) -> str:
    if stat.get("mean") is None:
        return "n/a"
    ci = f" [{stat['ci_low']:+.3f}, {stat['ci_high']:+.3f}]" if stat.get("ci_low") is not None else ""
    return f"{stat['mean']:+.3f}{ci}"


def markdown(taste: str, alignment: dict | None, rows: list[dict], report: dict, verdict: dict) -> str:
    lines = [f"**Taste `{taste}`**" + (f" (alignment with the real images: {alignment['toward_real']:+.0f}, real − "
                                        f"base {alignment['shift_sd']:+.2f} base SDs)" if alignment else ""), "",
             "| round | first → current gain (seeds > 0) | feedback − control (seeds > 0) | control's own gain | "
             "realism-only fooling-rate gain |", "|---|---|---|---|---|"]
    for r in report["per_round"]:
        g, d = r["gain"], r["feedback_minus_control"]
        lines.append(f"| {r['round']} | {_ci(g)} ({g['positive']}/{g['n_seeds']}, sign p {g['sign_p'] or 1:.2g}) | "
                     f"{_ci(d)} ({d['positive']}/{d['n_seeds']}, sign p {d['sign_p'] or 1:.2g}) | "
                     f"{_ci(r['control_gain'])} | {_ci(r['realism_only_fooling_gain'])} |")
    imp = report["rounds_improved"]

    def share(arm: str) -> str:
        a = imp[arm]
        return f"{a['k']}/{a['n']}" + (f" ({a['share']:.0%}; per-seed mean {_ci(a['per_seed'])})" if a["n"] else "")

    lines += ["", f"Rounds whose finetune improved the preference: feedback {share('feedback')}, control "
              f"{share('control')}; feedback − control per seed {_ci(imp['feedback_minus_control'])}; blocked by "
              f"the reward check: {report['blocked_rounds']}.", "",
              "| seed | gain per round | feedback − control per round | promoted (feedback) | blocked |",
              "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['seed']} | {', '.join(f'{v:+.3f}' for v in row['gain'])} | "
                     f"{', '.join(f'{v:+.3f}' for v in row['feedback_minus_control'])} | "
                     f"{''.join('P' if p else '.' for p in row['promoted']['feedback'])} | "
                     f"{''.join('B' if b else '.' for b in row['blocked'])} |")
    lines += ["", "Acceptance: " + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in verdict["checks"].items())]
    return "\n".join(lines)


def svg(reports: dict[str, dict], path: Path) -> None:
    """Per taste, the seed-level mean (95 % t-CI) of feedback − control and of the first → current gain by round."""
    w, h, left, right, top, bottom = 760, 300, 56, 250, 30, 40
    rounds = max(len(r["per_round"]) for r in reports.values())
    stats = [s for r in reports.values() for pr in r["per_round"] for s in (pr["gain"], pr["feedback_minus_control"])]
    values = [v for s in stats for v in (s["ci_low"], s["ci_high"], s["mean"]) if v is not None] + [0.0]
    lo, hi = min(values) - 0.02, max(values) + 0.02

    def x(i: float) -> float:
        return left + (w - left - right) * i / max(rounds, 1)

    def y(v: float) -> float:
        return top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))

    n = max(s["n_seeds"] for s in stats) if stats else 0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" font-family="sans-serif" '
             f'font-size="11"><rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{left}" y="18" font-size="13">Loop seeds (n = {n}): mean and 95% t-CI over seeds</text>',
             f'<line x1="{left}" x2="{w - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#888"/>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:+.2f}</text>')
    for i in range(rounds + 1):
        parts.append(f'<text x="{x(i):.1f}" y="{h - bottom + 16}" text-anchor="middle">round {i}</text>')
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    legend = 0
    for t, (taste, report) in enumerate(reports.items()):
        for name, dash in (("feedback_minus_control", ""), ("gain", ' stroke-dasharray="5,4"')):
            colour = colours[t % len(colours)]
            dx = 5 * (legend - 1.5)  # a small offset per series, so CI bars at one round do not hide each other
            pts = [(x(0), {"mean": 0.0})] + [(x(pr["round"]) + dx, pr[name]) for pr in report["per_round"]]
            line = " ".join(f"{px:.1f},{y(s['mean']):.1f}" for px, s in pts if s["mean"] is not None)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
            for px, s in pts:
                if s.get("ci_low") is not None:
                    parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y(s["ci_low"]):.1f}" '
                                 f'y2="{y(s["ci_high"]):.1f}" stroke="{colour}"{dash}/>')
            label = "feedback − control" if name == "feedback_minus_control" else "first → current"
            parts.append(f'<line x1="{w - right + 8}" x2="{w - right + 30}" y1="{top + 16 * legend + 8}" '
                         f'y2="{top + 16 * legend + 8}" stroke="{colour}" stroke-width="2"{dash}/>'
                         f'<text x="{w - right + 34}" y="{top + 16 * legend + 12}">{taste}: {label}</text>')
            legend += 1
    parts.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
