"""MRMC ratings as CSV (``treatment,reader,case,truth,rating``): what ``reader_stats --mrmc`` reads and
``export_dataset --format mrmc`` writes. No Django here."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable

from annotation.stats.mrmc.analysis import MRMCError, Rating
from annotation.stats.reads import REAL, SYNTHETIC

MRMC_COLUMNS = ("treatment", "reader", "case", "truth", "rating")
TRUTHS = {"0": 0, "1": 1, REAL: 0, SYNTHETIC: 1}


def ratings_from_csv(text: str) -> list[Rating]:
    """Every rating of the file, or MRMCError listing every malformed row with its line (1 = header)."""
    rows = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(rows, [])]
    if len(header) != len(set(header)) or set(header) != set(MRMC_COLUMNS):
        raise MRMCError([(1, f"header must be {','.join(MRMC_COLUMNS)} (any order), got {','.join(header) or 'nothing'}")])
    errors: list[tuple[int | None, str]] = []
    out: list[Rating] = []
    end = rows.line_num
    for fields in rows:
        line, end = end + 1, rows.line_num
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            errors.append((line, f"expected {len(header)} fields, got {len(fields)}"))
            continue
        row = {k: v.strip() for k, v in zip(header, fields, strict=True)}
        problems = [f"{k} is empty" for k in ("treatment", "reader", "case") if not row[k]]
        truth = TRUTHS.get(row["truth"].lower())
        if truth is None:
            problems.append(f"truth must be 0, 1, real or synthetic, got {row['truth']!r}")
        try:
            rating = float(row["rating"])
            if not math.isfinite(rating):
                raise ValueError
        except ValueError:
            problems.append(f"rating must be a finite number, got {row['rating']!r}")
        errors.extend((line, p) for p in problems)
        if not problems:
            out.append(Rating(row["treatment"], row["reader"], row["case"], truth, rating, line))
    if errors:
        raise MRMCError(errors)
    return out


def ratings_to_csv(ratings: Iterable[Rating]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MRMC_COLUMNS)
    for r in ratings:
        writer.writerow([r.treatment, r.reader, r.case, r.truth, repr(float(r.rating)) if r.rating % 1 else int(r.rating)])
    return buf.getvalue()
