"""python manage.py reader_stats FILE.csv [--json] [--margin M]
python manage.py reader_stats FILE.csv --mrmc [--covariance jackknife|delong] [--json]
                                       [--effect D [--readers J] [--cases K] [--target-power P]]

Reader statistics for reads gathered outside the platform. The plain CSV has the header
``case_id,truth,call,reader`` (any order) and optionally ``confidence`` (1-5); truth and call are real/synthetic.
With ``--mrmc`` the CSV is ``treatment,reader,case,truth,rating`` (truth 0/1 or real/synthetic, rating numeric, higher
= more confident of 1; fully crossed) and the output is the Obuchowski-Rockette MRMC analysis
(``annotation.stats.mrmc.analysis``), with power and cases needed when ``--effect`` is given.
Every malformed row is reported with its line number (line 1 = header) and nothing else is printed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.stats.mrmc.analysis import COVARIANCES, MRMCError
from annotation.stats.mrmc.ratings_csv import ratings_from_csv
from annotation.stats.mrmc.report import format_mrmc, mrmc_report
from annotation.stats.reader_report import reader_report
from annotation.stats.reads import CALLS, CONFIDENCE_RANGE, DEFAULT_MARGIN, Read

CSV_COLUMNS = ("case_id", "truth", "call", "reader")
CSV_OPTIONAL = ("confidence",)
METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")


class ReadsCSVError(ValueError):
    """All problems of a reads CSV, as (line number, message)."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = errors
        super().__init__("; ".join(f"line {line}: {msg}" for line, msg in errors))


def reads_from_csv(text: str) -> list[Read]:
    """Every read of the file, or ReadsCSVError listing every malformed row: all of the file or nothing."""
    rows = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(rows, [])]
    allowed = (set(CSV_COLUMNS), set(CSV_COLUMNS) | set(CSV_OPTIONAL))
    if len(header) != len(set(header)) or set(header) not in allowed:
        got = ",".join(header) or "nothing"
        raise ReadsCSVError([(1, f"header must be {','.join(CSV_COLUMNS)}[,confidence], got {got}")])
    errors: list[tuple[int, str]] = []
    reads: list[Read] = []
    end = rows.line_num
    for fields in rows:
        line, end = (
            end + 1,
            rows.line_num,
        )  # physical line where the record starts (quoted fields may span lines)
        if not fields:
            continue
        if len(fields) != len(header):
            errors.append((line, f"expected {len(header)} fields, got {len(fields)}"))
            continue
        row = {k: v.strip() for k, v in zip(header, fields, strict=True)}
        problems = [f"{k} is empty" for k in ("case_id", "reader") if not row[k]]
        problems += [
            f"{k} must be real or synthetic, got {row[k]!r}" for k in ("truth", "call") if row[k] not in CALLS
        ]
        lo, hi = CONFIDENCE_RANGE
        confidence = row.get("confidence") or None  # an empty cell is a missing confidence
        if confidence is not None and confidence not in {str(i) for i in range(lo, hi + 1)}:
            problems.append(f"confidence must be an integer from {lo} to {hi}, got {confidence!r}")
        errors.extend((line, p) for p in problems)
        if not problems:
            reads.append(
                Read(
                    case_id=row["case_id"],
                    reader=row["reader"],
                    truth=row["truth"],
                    call=row["call"],
                    confidence=None if confidence is None else int(confidence),
                )
            )
    if errors:
        raise ReadsCSVError(errors)
    return reads


def _cell(stat: dict[str, Any]) -> str:
    if stat["value"] is None:
        return "n/a"
    return f"{stat['value']:.3f} [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]"


def _number(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table: per reader and pooled, then agreement and notes."""
    rows = [*report["readers"].items(), ("pooled", report["pooled"])]
    width = max(len(name) for name, _ in rows)
    lines = [
        f"{report['n_reads']} reads, {len(report['readers'])} reader(s). Positive class: synthetic. "
        "Proportions with Wilson 95% CIs; p: exact two-sided binomial test of accuracy vs 0.5.",
        "",
        f"{'reader':<{width}} {'n':>5}  "
        + "  ".join(f"{m:<20}" for m in METRICS)
        + f"  {'p':>8}  {'AUC':>5}",
    ]
    undefined = []
    for name, s in rows:
        cells = "  ".join(f"{_cell(s[m]):<20}" for m in METRICS)
        lines.append(
            f"{name:<{width}} {s['n']:>5}  {cells}  {_number(s['binomial_p'], '.3g'):>8}  "
            f"{_number(s['auc']['value']):>5}"
        )
        undefined += [f"{name} {m}: {s[m]['reason']}" for m in (*METRICS, "auc") if s[m]["value"] is None]
    tost = report["pooled"]["tost"]
    verdict = {True: "yes", False: "no", None: "n/a"}[tost["indistinguishable"]]
    lines += [
        "",
        f"Indistinguishable from chance (TOST, margin ±{report['margin']:.2f}, alpha 0.05): {verdict} "
        f"(pooled p = {_number(tost['p'], '.3g')})",
        _agreement("Fleiss' kappa", report["fleiss_kappa"]),
        "Cohen's kappa:" if report["cohen_kappa"] else "Cohen's kappa: n/a (fewer than two readers)",
    ]
    lines += [_agreement(f"  {pair}", k) for pair, k in report["cohen_kappa"].items()]
    if report["intra_reader"]["pooled"]["n_pairs"]:
        lines.append(_agreement("Intra-reader kappa (pooled)", report["intra_reader"]["pooled"]["kappa"]))
    if undefined:
        lines += ["", "Undefined:", *(f"  {u}" for u in undefined)]
    if report["notes"]:
        lines += ["", "Notes:", *(f"  {n}" for n in report["notes"])]
    return "\n".join(lines)


def _agreement(label: str, stat: dict[str, Any]) -> str:
    n = stat.get("n", stat.get("n_cases"))
    if stat["value"] is None:
        return f"{label}: n/a ({stat['reason']})"
    note = f"; {stat['note']}" if stat.get("note") else ""
    return f"{label}: {stat['value']:.3f} ({n} cases{note})"


class Command(BaseCommand):
    help = "Reader statistics (accuracy, sensitivity, specificity, PPV, NPV, kappas) from a CSV of reads."
    requires_system_checks = []  # reads one file and touches no model

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="CSV with case_id,truth,call,reader[,confidence]")
        parser.add_argument("--json", action="store_true", help="Print one JSON object")
        parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="TOST equivalence margin")
        mrmc = parser.add_argument_group("MRMC (treatment,reader,case,truth,rating)")
        mrmc.add_argument("--mrmc", action="store_true", help="Obuchowski-Rockette MRMC analysis of AUCs")
        mrmc.add_argument("--covariance", choices=COVARIANCES, default=None, help="AUC covariance (default jackknife)")
        mrmc.add_argument("--effect", type=float, default=None, help="AUC difference to plan for (adds power)")
        mrmc.add_argument("--readers", type=int, default=None, help="Readers of the planned study (default: the file's)")
        mrmc.add_argument("--cases", type=int, default=None, help="Cases of the planned study (default: the file's)")
        mrmc.add_argument("--target-power", type=float, default=None, help="Power to find cases for (default 0.8)")

    def handle(self, *args, path: Path, margin: float, **options):
        planning = {k: options[k] for k in ("effect", "readers", "cases", "target_power") if options[k] is not None}
        if not options["mrmc"] and (planning or options["covariance"]):
            raise CommandError("--covariance, --effect, --readers, --cases and --target-power need --mrmc.")
        if planning and "effect" not in planning:
            raise CommandError("--readers, --cases and --target-power plan a study: give the effect with --effect D.")
        for key, low in (("readers", 2), ("cases", 2)):
            if planning.get(key) is not None and planning[key] < low:
                raise CommandError(f"--{key} must be at least {low}, got {planning[key]}.")
        if not 0 < planning.get("target_power", 0.8) < 1:
            raise CommandError(f"--target-power must lie between 0 and 1, got {planning['target_power']}.")
        if not 0 <= margin < 0.5:
            raise CommandError(f"--margin must lie in [0, 0.5), got {margin}.")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
        except UnicodeDecodeError as exc:
            raise CommandError(f"{path} is not UTF-8 text.") from exc
        if options["mrmc"]:
            return self._mrmc(path, text, margin, options["covariance"] or "jackknife", options["json"], planning)
        try:
            reads = reads_from_csv(text)
        except ReadsCSVError as exc:
            for line, message in exc.errors:
                self.stderr.write(f"line {line}: {message}")
            raise CommandError(f"{path}: {len(exc.errors)} problem(s); no statistics computed.") from exc
        if not reads:
            raise CommandError(f"{path} holds no reads.")
        try:
            report = reader_report(reads, margin=margin)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(report, allow_nan=False))
        else:
            self.stdout.write(format_report(report))

    def _mrmc(self, path: Path, text: str, margin: float, covariance: str, as_json: bool, planning: dict):
        try:
            report = mrmc_report(ratings_from_csv(text), covariance=covariance, margin=margin, **planning)
        except MRMCError as exc:
            for line, message in exc.errors:
                self.stderr.write(message if line is None else f"line {line}: {message}")
            raise CommandError(f"{path}: {len(exc.errors)} problem(s); no statistics computed.") from exc
        self.stdout.write(json.dumps(report, allow_nan=False) if as_json else format_mrmc(report))
