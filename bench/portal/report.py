"""The Markdown report of bench/portal.py: our runs next to Label Studio's figures from the peer's harness."""

from __future__ import annotations

import glob
import json
from collections import defaultdict
from pathlib import Path

from .labelstudio import HARNESS


def load_ls():
    """Label Studio figures from the peer's results-*.json (in its harness, beside the checkout or where
    CXR_PEERS_DIR points): {db: [(label, {size: result})]}."""
    runs = defaultdict(list)
    for path in sorted(glob.glob(str(HARNESS / "results-*.json"))):
        name = Path(path).stem[len("results-"):]
        db = name.split("-")[0]
        server = "gunicorn-4" if "gunicorn" in name else "runserver"
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        runs[db].append((f"LS {db}/{server}", {int(k): v for k, v in data.get("sizes", {}).items()}))
    return runs


def f(x, nd=0):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def trio(s, keys=("p50", "p95", "p99"), nd=1):
    return " / ".join(f(s.get(k), nd) for k in keys)


def cpu_cell(c):
    if not c:
        return "-"
    return f"{f(c['busy_pct'])} ({f(c['server_pct'])} / {f(c['client_pct'])} / {f(c['other_pct'])})"


def rng(values):
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def side_by_side_lines(runs) -> list[str]:
    """One table per database from one run (`--with-labelstudio`): ours, Label Studio's and the ratio per metric."""
    out = []
    for db in sorted({r["db"] for r in runs if r.get("side_by_side")}):
        rows = [r for r in runs if r["db"] == db and r.get("side_by_side")]
        out += [f"### Side by side in one run: {db} (ours / Label Studio; latency ratios < 1 and throughput "
                "ratios > 1 favour us)\n", "| cases | metric | ours | Label Studio | ratio |", "|---:|---|---:|---:|---:|"]
        for r in rows:
            for name, m in r["side_by_side"].items():
                out.append(f"| {r['cases']} | {name} | {m['ours']} | {m['labelstudio']} | "
                           f"{'—' if m['ratio'] is None else m['ratio']} |")
        out.append("")
    return out


SIDE_BEGIN, SIDE_END = "<!-- labelstudio_side_by_side:begin -->", "<!-- labelstudio_side_by_side:end -->"


def side_by_side_write(path, results) -> None:
    """bench/RESULTS.md's side-by-side section (between its markers; nothing else touched) from one run."""
    lines = side_by_side_lines(results["runs"])
    if not lines:
        return
    ls = results["settings"].get("labelstudio") or {}
    head = ["## Label Studio side by side (`bench/portal.py --with-labelstudio`)", "",
            f"`bench/results/portal.json` — {results['date']}; one run, ours and Label Studio {ls.get('version', '')} "
            "interleaved by size on the same machine (2 cores, client and server together); ours: gunicorn "
            f"{results['settings']['gunicorn']}; Label Studio: {ls.get('server', '')}, its harness's client "
            f"({ls.get('client', '')}). {results['settings']['seq_n']} sequential pairs, then "
            f"{results['settings']['threads']} clients × {results['settings']['iters']} pairs.", ""]
    block = "\n".join([SIDE_BEGIN, "", *head, *lines, SIDE_END, ""])
    text = path.read_text() if path.exists() else ""
    if SIDE_BEGIN in text and SIDE_END in text:
        before, rest = text.split(SIDE_BEGIN, 1)
        text = before + block + rest.split(SIDE_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def render(results, target_ms):
    ls = load_ls()
    runs = results["runs"]
    label = f"ours {{db}}/gunicorn {results['settings']['server']}"
    if results["settings"].get("analyze_after_setup"):
        label += " +ANALYZE"
    if results["settings"].get("sqlite_hold_connection"):
        label = label.replace("{db}/", "{db}{held}/")

    def ours_label(r):
        return label.format(db=r["db"], held=" (+held conn)" if r["db"] == "sqlite" else "")
    sizes = sorted({r["cases"] for r in runs})
    order = []
    for size in sizes:
        for r in runs:
            if r["cases"] == size and "error" not in r:
                order.append(("ours", r))
                for lab, data in ls.get(r["db"], []):
                    if size in data:
                        order.append((lab, {"db": r["db"], "cases": size, "ls": data[size]}))
    out = side_by_side_lines(runs)
    w = out.append
    w(f"### Sequential next + submit (1 reader, keep-alive; target p99 < {target_ms} ms)\n")
    w("| run | cases | setup s: images + open (LS: import) | next p50/p95/p99 ms | submit p50/p95/p99 ms "
      "| p99 target met | errors | CPU % busy (server / client / other) |")
    w("|---|---:|---:|---:|---:|---|---|---:|")
    for kind, r in order:
        if kind == "ours":
            s, t = r["seq"], r["setup"]["timings_s"]
            met = all((s[k].get("p99") or 1e9) < target_ms for k in ("next_ms", "submit_ms"))
            w(f"| {ours_label(r)} | {r['cases']} | {f(t['images'], 1)} + {f(t['open_labeling'], 1)} | "
              f"{trio(s['next_ms'])} | {trio(s['submit_ms'])} | {'yes' if met else 'NO'} | {s['errors'] or 0} | "
              f"{cpu_cell(s.get('cpu'))} |")
        else:
            x = r["ls"]
            s, im = x["seq"], x.get("import", {})
            w(f"| {kind} | {r['cases']} | {f(im.get('import_total_s'), 1)} | {trio(s['next_ms'])} | "
              f"{trio(s['submit_ms'])} | - | {s['errors'] or 0} | - |")

    w("\n### Concurrent readers (each thread its own reader, next + submit loop)\n")
    w("| run | cases | clients x iters | wall s | labels/s | next p50/p99 ms | submit p50/p99 ms | HTTP errors "
      "| duplicate hand-outs | DB: cases taken>cap / images >K labels / cases >K readers "
      "| CPU % busy (server / client / other) |")
    w("|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|")
    for kind, r in order:
        if kind == "ours":
            c, d = r["conc"], r["check"]["db"]
            w(f"| {ours_label(r)} | {r['cases']} | {c['threads']}x{c['iters_per_thread']} | "
              f"{f(c['wall_s'], 1)} | {f(c['labels_per_s'], 1)} | {trio(c['next_ms'], ('p50', 'p99'))} | "
              f"{trio(c['submit_ms'], ('p50', 'p99'))} | {c['errors'] or 0} | {c['duplicate_handouts']} | "
              f"{d['cases_taken_over_capacity']} / {d['images_more_than_k_labels']} / "
              f"{d['cases_more_than_k_readers']} | {cpu_cell(c.get('cpu'))} |")
        else:
            c = r["ls"]["conc"]
            locked = (c.get("server_log") or {}).get("db_locked_exceptions")
            err = c["errors"] or 0
            if locked:
                err = f"{err} (server db-locked retries: {locked})"
            w(f"| {kind} | {r['cases']} | {c['threads']}x{c['iters_per_thread']} | {f(c['wall_s'], 1)} | "
              f"{f(c['annotations_per_s'], 1)} | {trio(c['next_ms'], ('p50', 'p99'))} | "
              f"{trio(c['submit_ms'], ('p50', 'p99'))} | {err} | {c['duplicate_handouts']} | - | - |")

    w("\n### SQL statements and in-process time per call (probe account, same database, before HTTP)\n")
    w("Statements = data statements (BEGIN/COMMIT/SAVEPOINT/RELEASE counted separately in the JSON); "
      "service = annotation.reading.assignment function alone; view = whole Django request via django.test.Client "
      "(session + auth middleware included); HTTP = client-side p50 of the sequential phase; HTTP floor = "
      "client-side p50 of GET of a static file served by WhiteNoise through the same gunicorn (no view, no DB).\n")
    w("| run | cases | next stmts: service / view | submit stmts: service / view | next p50 ms: "
      "service / view / HTTP | submit p50 ms: service / view / HTTP | HTTP floor p50 ms | new DB connection ms |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        if "error" in r or "probe" not in r:
            continue
        pr = r["probe"]
        sv, vw = pr["service"], pr["view"]
        w(f"| ours {r['db']} | {r['cases']} | {rng(sv['next_queries'])} / {rng(vw['next_queries'])} | "
          f"{rng(sv['submit_queries'])} / {rng(vw['submit_queries'])} | "
          f"{f(sv['next_ms']['p50'], 2)} / {f(vw['next_ms']['p50'], 2)} / {f(r['seq']['next_ms'].get('p50'), 2)} | "
          f"{f(sv['submit_ms']['p50'], 2)} / {f(vw['submit_ms']['p50'], 2)} / "
          f"{f(r['seq']['submit_ms'].get('p50'), 2)} | {f((r.get('http_floor') or {}).get('ms', {}).get('p50'), 2)} | "
          f"{f(pr['new_connection_ms'].get('p50'), 2)} (CONN_MAX_AGE={pr.get('conn_max_age')}) |")

    w("\n### Setup and storage\n")
    w("| run | cases | migrate s | users + memberships s | images bulk_create s | round_open_labeling s "
      "| 9 logins s | server RSS start -> end MB | DB size MB |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        if "error" in r:
            w(f"| ours {r['db']} | {r['cases']} | FAILED: {r['error'][:200]} | | | | | | |")
            continue
        t = r["setup"]["timings_s"]
        w(f"| ours {r['db']} | {r['cases']} | {f(r['migrate_s'], 1)} | {f(t['users'], 1)} | {f(t['images'], 1)} | "
          f"{f(t['open_labeling'], 1)} | {f(r.get('login_s'), 1)} | {f(r.get('rss_start_mb'))} -> "
          f"{f(r.get('rss_end_mb'))} | {f(r.get('db_file_mb'), 1)} |")
    return "\n".join(out) + "\n"

