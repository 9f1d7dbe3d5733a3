"""The feedback dataset a training run learns from: per-image targets from the readers' current answers, frozen
as a JSON snapshot in storage with content hashes, so a run can be repeated exactly."""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from itertools import combinations

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from annotation.models import Image, ReadingTask, Round, RoundStatus, Source, TaskStatus
from annotation.reading.aggregation import Aggregation
from annotation.rounds.config import round_config, round_seed
from annotation.rounds.report import reads_for_round
from annotation.stats.reader_report import catch_summary
from annotation.stats.reads import CatchRule
from inference.ml.report_text import report_prompt
from training.ml.snapshot import Snapshot, SnapshotItem, SnapshotPair


def excluded_readers(*, round: Round) -> set[str]:
    """Readers the study's catch rule excludes (action "exclude"); flagged-only readers stay in."""
    rule = CatchRule(**round.study.catch_rule) if round.study.catch_rule else None
    if rule is None or rule.action != "exclude":
        return set()
    reads, _ = reads_for_round(round=round)
    readers = sorted({r.reader for r in reads})
    return {row["reader"] for row in catch_summary([r for r in reads if r.is_catch], readers, rule)["excluded"]}


def _answered(round: Round, excluded: set[str]):
    return (
        ReadingTask.objects.filter(round=round, status=TaskStatus.DONE, current_label__isnull=False, is_catch=False,
                                   repeat_of__isnull=True)
        .exclude(reader__username__in=excluded)
        .select_related("current_label", "reader")
    )


def feedback_items(*, rounds: Sequence[Round], rubric_gap: float = 1.0) -> dict:
    """Per image, the readers' answers aggregated by `reading.aggregation` (realism: the confidence-weighted share
    called real; each rubric criterion: its mean normalised to 0–1); preference pairs from pairwise tasks and from
    rubric gaps ≥ `rubric_gap` points between images of the same prompt."""
    agg = Aggregation(rounds[0].study.rubric if rounds else [])
    pairs: list[dict] = []
    excluded_all: set[str] = set()
    for rnd in rounds:
        excluded = excluded_readers(round=rnd)
        excluded_all |= excluded
        for task in _answered(rnd, excluded):
            pair = agg.add(task.kind, task.current_label.answer, task.image_id, task.image_b_id)
            if pair is not None:
                pairs.append({"chosen": pair[0], "rejected": pair[1], "source": "preference"})
    ids = set(agg.images)
    images = {i.pk: i for i in Image.objects.filter(pk__in=ids)}
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for pk in ids:
        if agg.images[pk].answer_means and images[pk].source == "synthetic":
            by_prompt[images[pk].prompt].append(pk)
    for members in by_prompt.values():
        for a, b in combinations(sorted(members), 2):
            ma, mb = (sum(m) / len(m) for m in (agg.images[a].answer_means, agg.images[b].answer_means))
            if abs(ma - mb) >= rubric_gap:
                chosen, rejected = (a, b) if ma > mb else (b, a)
                pairs.append({"chosen": chosen, "rejected": rejected, "source": "rubric_gap"})
    items = [SnapshotItem(image=pk, key=images[pk].storage_key, sha256=images[pk].sha256, source=images[pk].source,
                          prompt=images[pk].prompt, findings=images[pk].findings, reads=agg.images[pk].reads,
                          realism=agg.images[pk].realism, criteria=agg.normalised(pk),
                          model_version=images[pk].model_version_id, patient=images[pk].patient_pseudonym)
             for pk in sorted(ids)]
    return Snapshot(items=items, rounds=[r.pk for r in rounds], excluded_readers=sorted(excluded_all), pairs=[
        SnapshotPair(chosen=p["chosen"], rejected=p["rejected"], chosen_key=images[p["chosen"]].storage_key,
                     rejected_key=images[p["rejected"]].storage_key, prompt=images[p["chosen"]].prompt,
                     source=p["source"])
        for p in pairs])


def _store(snapshot: Snapshot) -> tuple[str, str]:
    payload = snapshot.dumps()
    key = default_storage.save(f"snapshots/{uuid.uuid4().hex}.json", ContentFile(payload))
    return key, hashlib.sha256(payload).hexdigest()


def feedback_permuted(snapshot: Snapshot, *, seed: int) -> Snapshot:
    """The negative control's feedback: the labelled items' answers (reads, realism, criteria) shuffled across the
    images, and each preference pair's order flipped by a coin, so the targets keep their distribution but say
    nothing about the images they are attached to."""
    rng = np.random.default_rng(seed)
    labelled = [i for i, item in enumerate(snapshot.items) if item.labelled]
    order = rng.permutation(len(labelled))
    items = list(snapshot.items)
    for at, source in zip(labelled, order, strict=True):
        donor = snapshot.items[labelled[source]]
        items[at] = replace(items[at], reads=donor.reads, realism=donor.realism, criteria=dict(donor.criteria))
    pairs = [replace(p, chosen=p.rejected, rejected=p.chosen, chosen_key=p.rejected_key, rejected_key=p.chosen_key)
             if flip else p for p, flip in zip(snapshot.pairs, rng.random(len(snapshot.pairs)) < 0.5, strict=True)]
    return replace(snapshot, items=items, pairs=pairs)


def feedback_snapshot_freeze(*, rounds: Sequence[Round], permute_seed: int | None = None) -> tuple[str, str, dict]:
    """Write the dataset to storage (permuted first when `permute_seed` is given: a control round); returns
    (storage key, sha256 of the file, summary counts)."""
    snapshot = feedback_items(rounds=rounds)
    if permute_seed is not None:
        snapshot = feedback_permuted(snapshot, seed=permute_seed)
    key, digest = _store(snapshot)
    return key, digest, snapshot.summary()


def snapshot_rounds(rnd: Round) -> list[Round]:
    """The rounds whose labels this round trains on: itself, and with `feedback_rounds: all` every finished round
    of the study before it."""
    rounds = [rnd]
    if round_config(rnd).feedback_rounds == "all":
        rounds = list(Round.objects.filter(study=rnd.study, number__lt=rnd.number, status=RoundStatus.DONE,
                                           labeling_closed_at__isnull=False).order_by("number")) + [rnd]
    return rounds


def round_snapshot_freeze(rnd: Round) -> dict:
    """The round's one snapshot: the feedback its training reads, frozen once when labeling closes and recorded as
    `metrics.snapshot` ({key, sha256, items, pairs, excluded_readers, rounds, permuted, frozen_at}; a control round's
answers are permuted across images first). Safe to call any number
    of times and concurrently: the round's row is locked while it is written, and a repeat returns the record."""
    with transaction.atomic():
        locked = Round.objects.select_for_update().select_related("study").get(pk=rnd.pk)
        if (locked.metrics or {}).get("snapshot", {}).get("sha256"):
            return locked.metrics["snapshot"]
        rounds = snapshot_rounds(locked)
        permuted = round_config(locked).control == "permuted"
        key, digest, summary = feedback_snapshot_freeze(rounds=rounds,
                                                        permute_seed=round_seed(locked) if permuted else None)
        record = {"key": key, "sha256": digest, **summary, "rounds": [r.number for r in rounds],
                  "permuted": permuted, "frozen_at": timezone.now().isoformat()}
        locked.metrics = {**locked.metrics, "snapshot": record, "feedback": summary}
        locked.save(update_fields=["metrics"])
    return record


def domain_snapshot_freeze(*, study) -> tuple[str, str, dict]:
    """The study's real image–report pairs (what domain adaptation learns from) as a frozen snapshot."""
    images = Image.objects.filter(study=study, source=Source.REAL, is_catch=False).exclude(prompt="").order_by("pk")
    snapshot = Snapshot(items=[SnapshotItem(image=i.pk, key=i.storage_key, sha256=i.sha256, source="real",
                                            prompt=report_prompt(i.prompt), findings=i.findings,
                                            patient=i.patient_pseudonym)
                                for i in images])
    key, digest = _store(snapshot)
    return key, digest, {"items": len(snapshot.items)}
