"""A round's reading cases: every image of the round becomes one case per task kind (a pair of same-prompt synthetic
images for preference), with a capacity of K readers; catch trials are shown to every reader once."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from django.db import connection

from annotation.models import Image, ReadingCase, Round, Source, TaskKind


def cases_table_analyze() -> None:
    """After a bulk insert the planner's row estimates are stale and it may scan the round instead of using the
    (round, kind, slot, idx) index; ANALYZE keeps next-task flat from 1k to 100k cases (bench/portal.py)."""
    with connection.cursor() as cursor:
        cursor.execute(f'ANALYZE "{ReadingCase._meta.db_table}"')


def cases_build(rnd: Round, images: Sequence[Image]) -> dict:
    """Create the cases of `images` in the round; returns the pool sizes {kind: {slot: n}} stored on the round."""
    study = rnd.study
    catch_capacity = 1_000_000  # catch trials are shown to every reader, at most once each
    cases: list[ReadingCase] = []
    pools: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(kind: str, slot: str, image: Image, image_b: Image | None = None, catch: bool = False) -> None:
        key = f"catch:{slot}" if catch else slot
        cases.append(ReadingCase(
            round=rnd, kind=kind, slot=slot, is_catch=catch, idx=pools[kind][key], image=image, image_b=image_b,
            capacity=catch_capacity if catch else study.readers_per_image,
        ))
        pools[kind][key] += 1

    for kind in study.task_kinds:
        if kind == TaskKind.PREFERENCE:
            by_prompt: dict[str, list[Image]] = defaultdict(list)
            for image in images:
                if image.source == Source.SYNTHETIC and not image.is_catch:
                    by_prompt[image.prompt].append(image)
            for group in by_prompt.values():
                for a, b in zip(group[0::2], group[1::2], strict=False):
                    add(kind, "pair", a, b)
        else:
            for image in images:
                add(kind, image.source, image, catch=image.is_catch)
    ReadingCase.objects.bulk_create(cases, batch_size=2000)
    return {kind: dict(slots) for kind, slots in pools.items()}
