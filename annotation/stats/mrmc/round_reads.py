"""A round's realism reads as an MRMC design: which case each read is, which treatment it counts for, and whether
the design is fully crossed. One rule for the round report and for ``export_dataset --format mrmc``, so the CLI
run on the export gives the report. No Django here.

- A read is one rating on the 10-point realism scale (`reads.realism_rating`: real-and-sure 1 … synthetic-and-sure
  10), truth 1 for a synthetic image.
- The treatment is the model version that made the synthetic image (its name with "-" as "_": "-" names the
  differences). A real image is one case read once per reader
  and counts for every treatment (in a comparison round its rating is the same in each).
- A synthetic image's case is its prompt and seed, so the images two versions made from one prompt and seed are one
  case (the paired design); a real image (or a synthetic one without a seed) is its own case.
- Catch trials and deliberate re-reads are left out: a reader reads a case once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from annotation.stats.mrmc.analysis import MRMCError, Rating
from annotation.stats.mrmc.report import mrmc_report
from annotation.stats.reads import DEFAULT_MARGIN, REAL, SYNTHETIC, UNSPECIFIED_VERSION, Read, realism_rating


def mrmc_case(*, source: str, image_id: int, prompt: str | None, seed: int | None) -> str:
    """The MRMC case of an image: "seed<seed>-<prompt digest>" for a synthetic image with a seed, else
    "image<id>"."""
    if source == SYNTHETIC and seed is not None:
        return f"seed{seed}-{hashlib.sha256((prompt or '').encode()).hexdigest()[:10]}"
    return f"image{image_id}"


def _version(read: Read) -> str:
    return read.model_version or UNSPECIFIED_VERSION


def treatment_names(versions: Sequence[str]) -> dict[str, str]:
    """Version name → treatment name: "-" names the differences ("A-B"), so it becomes "_" (a clash gets "_2")."""
    out: dict[str, str] = {}
    for version in versions:
        name = base = version.replace("-", "_")
        n = 1
        while name in out.values():
            n += 1
            name = f"{base}_{n}"
        out[version] = name
    return out


def _versions(reads: Sequence[Read], treatments: Sequence[str] | None) -> list[str]:
    return list(treatments) if treatments else sorted({_version(r) for r in reads if r.truth == SYNTHETIC})


def mrmc_ratings(reads: Iterable[Read], *, treatments: Sequence[str] | None = None) -> list[Rating]:
    """The ratings of the design: treatments (the versions, named by `treatment_names`) in the order given
    (default: the synthetic images' versions by name), then by reader and case, so the same reads give the same
    list in any order."""
    reads = [r for r in reads if not r.is_catch and r.repeat_of is None]
    names = treatment_names(_versions(reads, treatments))
    out = []
    for version, name in names.items():
        rows = [Rating(name, r.reader, r.item or r.case_id, int(r.truth == SYNTHETIC),
                       float(realism_rating(r.call, r.confidence)))
                for r in reads if r.truth == REAL or _version(r) == version]
        out += sorted(rows, key=lambda x: (x.reader, x.case))
    return out


def crossing_gap(ratings: Sequence[Rating]) -> str | None:
    """Why the ratings are not a fully crossed design (every reader rated every case in every treatment), or None."""
    treatments = {r.treatment for r in ratings}
    readers = {r.reader for r in ratings}
    cases = {r.case for r in ratings}
    cells = len(treatments) * len(readers) * len(cases)
    missing = cells - len({(r.treatment, r.reader, r.case) for r in ratings})
    if not missing:
        return None
    of = f"{len(treatments)} treatments × " if len(treatments) > 1 else ""
    return (f"not fully crossed: {missing} of {cells} ratings missing ({of}{len(readers)} readers × {len(cases)} "
            "cases); the MRMC analysis needs every reader to read every case")


def round_mrmc(reads: Iterable[Read], *, treatments: Sequence[str] | None = None,
               margin: float = DEFAULT_MARGIN) -> dict[str, Any]:
    """The round's OR analysis (`mrmc.report.mrmc_report`) when its design is fully crossed: {"value": report or None,
    "reason": why not, or None, "versions": {treatment: model version}}."""
    reads = list(reads)
    ratings = mrmc_ratings(reads, treatments=treatments)
    versions = {name: version for version, name in treatment_names(_versions(reads, treatments)).items()}
    out: dict[str, Any] = {"value": None, "reason": None, "versions": versions}
    if not ratings:
        return {**out, "reason": "no realism reads"}
    gap = crossing_gap(ratings)
    if gap:
        return {**out, "reason": gap}
    try:
        return {**out, "value": mrmc_report(ratings, margin=margin)}
    except MRMCError as exc:
        return {**out, "reason": str(exc)}
