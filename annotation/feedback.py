"""The feedback dataset a training run learns from: per-image targets from the readers' current answers, frozen
as a JSON snapshot in storage with content hashes, so a run can be repeated exactly."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from annotation import selectors
from annotation.models import Image, ReadingTask, Round, TaskStatus
from annotation.stats import CatchRule, catch_summary

SNAPSHOT_VERSION = 1


def excluded_readers(*, round: Round) -> set[str]:
    """Readers the study's catch rule excludes (action "exclude"); flagged-only readers stay in."""
    rule = CatchRule(**round.study.catch_rule) if round.study.catch_rule else None
    if rule is None or rule.action != "exclude":
        return set()
    reads, _ = selectors.reads_for_round(round=round)
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
    """Per image: realism = confidence-weighted share of readers who called it real; each rubric criterion as a
    normalised mean in [0, 1]; preference pairs from pairwise tasks and from rubric gaps ≥ `rubric_gap` points
    between images of the same prompt."""
    realism: dict[int, list[tuple[float, float]]] = defaultdict(list)
    scores: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    raw_means: dict[int, list[float]] = defaultdict(list)
    pairs: list[dict] = []
    excluded_all: set[str] = set()
    for rnd in rounds:
        rubric = {c["key"]: c for c in rnd.study.rubric}
        excluded = excluded_readers(round=rnd)
        excluded_all |= excluded
        for task in _answered(rnd, excluded):
            answer = task.current_label.answer
            if answer.get("cannot_assess"):
                continue
            if task.kind == "realism":
                weight = float(answer.get("confidence") or 1)
                realism[task.image_id].append((weight, 1.0 if answer["call"] == "real" else 0.0))
            elif task.kind == "rubric":
                for key, value in answer["scores"].items():
                    c = rubric[key]
                    scores[task.image_id][key].append((value - c["min"]) / (c["max"] - c["min"]))
                raw_means[task.image_id].append(sum(answer["scores"].values()) / len(answer["scores"]))
            elif task.kind == "preference" and answer.get("preferred") in ("a", "b"):
                chosen, rejected = ((task.image_id, task.image_b_id) if answer["preferred"] == "a"
                                    else (task.image_b_id, task.image_id))
                pairs.append({"chosen": chosen, "rejected": rejected, "source": "preference"})
    ids = set(realism) | set(scores) | {p[k] for p in pairs for k in ("chosen", "rejected")}
    images = {i.pk: i for i in Image.objects.filter(pk__in=ids)}
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for pk in raw_means:
        if images[pk].source == "synthetic":
            by_prompt[images[pk].prompt].append(pk)
    for members in by_prompt.values():
        for a, b in combinations(sorted(members), 2):
            ma, mb = (sum(raw_means[x]) / len(raw_means[x]) for x in (a, b))
            if abs(ma - mb) >= rubric_gap:
                chosen, rejected = (a, b) if ma > mb else (b, a)
                pairs.append({"chosen": chosen, "rejected": rejected, "source": "rubric_gap"})
    items = []
    for pk in sorted(ids):
        image = images[pk]
        reads = realism.get(pk, [])
        total = sum(w for w, _ in reads)
        items.append({
            "image": pk, "key": image.storage_key, "sha256": image.sha256, "source": image.source,
            "prompt": image.prompt, "findings": image.findings, "reads": len(reads),
            "realism": sum(w * v for w, v in reads) / total if total else None,
            "criteria": {k: sum(v) / len(v) for k, v in scores.get(pk, {}).items()},
            "model_version": image.model_version_id,
        })
    prompt_of = {pk: images[pk].prompt for pk in images}
    for pair in pairs:
        pair["prompt"] = prompt_of[pair["chosen"]]
        pair["chosen_key"], pair["rejected_key"] = images[pair["chosen"]].storage_key, images[
            pair["rejected"]].storage_key
    return {"version": SNAPSHOT_VERSION, "rounds": [r.pk for r in rounds], "items": items, "pairs": pairs,
            "excluded_readers": sorted(excluded_all)}


def feedback_snapshot_freeze(*, rounds: Sequence[Round]) -> tuple[str, str, dict]:
    """Write the dataset as JSON to storage; returns (storage key, sha256 of the file, summary counts)."""
    data = feedback_items(rounds=rounds)
    payload = json.dumps(data, sort_keys=True).encode()
    digest = hashlib.sha256(payload).hexdigest()
    key = default_storage.save(f"snapshots/{uuid.uuid4().hex}.json", ContentFile(payload))
    summary = {"items": len(data["items"]), "pairs": len(data["pairs"]),
               "excluded_readers": len(data["excluded_readers"])}
    return key, digest, summary


def domain_snapshot_freeze(*, study) -> tuple[str, str, dict]:
    """The study's real image–report pairs (what domain adaptation learns from) as a frozen snapshot."""
    from annotation.models import Source

    images = Image.objects.filter(study=study, source=Source.REAL, is_catch=False).exclude(prompt="").order_by("pk")
    data = {"version": SNAPSHOT_VERSION, "rounds": [], "pairs": [], "excluded_readers": [], "items": [
        {"image": i.pk, "key": i.storage_key, "sha256": i.sha256, "source": "real", "prompt": i.prompt,
         "findings": i.findings, "reads": 0, "realism": None, "criteria": {}, "model_version": None}
        for i in images]}
    payload = json.dumps(data, sort_keys=True).encode()
    key = default_storage.save(f"snapshots/{uuid.uuid4().hex}.json", ContentFile(payload))
    return key, hashlib.sha256(payload).hexdigest(), {"items": len(data["items"])}
