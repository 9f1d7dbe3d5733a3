"""The MRMC export: one round's realism reads as the ``treatment,reader,case,truth,rating`` CSV that
``reader_stats FILE --mrmc`` (and iMRMC, RJafroc, MRMCaov after renaming columns) reads. Built by the rule the
round report uses (`stats.mrmc.round_reads`), so the CLI run on the export gives the report's MRMC analysis when the
selection holds the same readers (simulated readers only with ``include_simulated``)."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from annotation.exports.rows import label_rows
from annotation.exports.selection import Selection, selection_scope
from annotation.models import Round, Study
from annotation.rounds.report import round_treatments
from annotation.stats.mrmc.ratings_csv import ratings_to_csv
from annotation.stats.mrmc.round_reads import mrmc_case, mrmc_ratings
from annotation.stats.reads import Read


def mrmc_round(sel: Selection) -> Round:
    """The one round an MRMC export holds, or a ValidationError saying how to pick it."""
    study = Study.objects.get(name=sel.study)
    rounds, _ = selection_scope(sel, study)
    if len(rounds) != 1:
        raise ValidationError(
            f"An MRMC export holds one round (one reader-study design); this selection has {len(rounds)} rounds "
            "of the study: choose one with round=N (--round N).")
    return Round.objects.get(pk=next(iter(rounds)))


def mrmc_csv(sel: Selection) -> tuple[str, int]:
    """The CSV text and its number of ratings. Current answers only; catch trials, deliberate re-reads and
    cannot-assess answers are left out."""
    rnd = mrmc_round(sel)
    reads = []
    for row in label_rows(sel):
        answer = row["answer"] or {}
        if (row["kind"] != "realism" or row["superseded"] or row["is_catch"] or row["repeat_of"] is not None
                or answer.get("cannot_assess") or answer.get("call") is None):
            continue
        reads.append(Read(case_id=f"realism:{row['image_id']}", reader=row["reader"], truth=row["source"],
                          call=answer["call"], confidence=answer.get("confidence"),
                          model_version=row["model_version"],
                          item=mrmc_case(source=row["source"], image_id=row["image_id"], prompt=row["prompt"],
                                         seed=row["seed"])))
    ratings = mrmc_ratings(reads, treatments=round_treatments(rnd))
    return ratings_to_csv(ratings), len(ratings)
