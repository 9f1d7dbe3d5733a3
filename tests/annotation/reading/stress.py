"""Many readers claiming and answering at once, then the invariants checked in the database.

Used in-process by the PostgreSQL test and as a script (`python stress.py`) in a subprocess for SQLite, where the
database must be a file shared by the threads' connections.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import uuid
from collections import Counter, defaultdict


def run_stress(*, readers: int = 8, images: int = 40, k: int = 2) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from annotation.models import Image, Label, ReadingCase, ReadingTask, Role
    from annotation.reading import assignment
    from annotation.rounds.services import round_create, round_open_labeling
    from annotation.studies.services import membership_add, study_create

    User = get_user_model()
    study = study_create(name=f"stress-{uuid.uuid4().hex[:6]}", title="stress", readers_per_image=k,
                                  task_kinds=["realism"], display_size=64)
    rnd = round_create(study=study)
    Image.objects.bulk_create([
        Image(study=study, round=rnd, source="real" if i % 2 else "synthetic", storage_key=f"k{i}",
              display_key=f"d{i}", sha256=f"{rnd.pk}-{i}", width=64, height=64) for i in range(images)
    ])
    rnd = round_open_labeling(round=rnd)
    users = []
    for i in range(readers):
        user = User.objects.create_user(username=f"{study.name}-r{i}", password="x")
        membership_add(study=study, user=user, role=Role.READER)
        users.append(user)

    handed: dict[int, list[int]] = defaultdict(list)
    errors: list[str] = []
    barrier = threading.Barrier(readers)

    def work(user) -> None:
        try:
            queue = assignment.queue_for_reader(round=rnd, reader=user)
            barrier.wait()
            for _ in range(images + 5):
                task = assignment.tasks_next_for_reader(queue=queue)
                if task is None:
                    break
                handed[user.pk].append(task.image_id)
                sid = uuid.uuid4()
                answer = {"call": "real", "confidence": 3}
                assignment.label_submit(reader=user, task_token=task.token, answer=answer, submission_id=sid)
                assignment.label_submit(reader=user, task_token=task.token, answer=answer, submission_id=sid)
        except Exception as exc:  # reported, not swallowed: the test asserts there were none
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)

    per_image = Counter(Label.objects.filter(task__round=rnd).values_list("task__image_id", flat=True))
    return {
        "errors": errors,
        "labels": Label.objects.filter(task__round=rnd).count(),
        "expected_labels": images * k,
        "max_labels_per_image": max(per_image.values(), default=0),
        "images_fully_read": sum(1 for n in per_image.values() if n == k),
        "over_capacity_cases": ReadingCase.objects.filter(round=rnd, taken__gt=k).count(),
        "duplicate_reads_by_one_reader": sum(len(v) - len(set(v)) for v in handed.values()),
        "open_claims": ReadingTask.objects.filter(round=rnd, status="claimed").count(),
        "tasks_per_reader": sorted(len(v) for v in handed.values()),
    }


if __name__ == "__main__":
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..")))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(json.dumps(run_stress(readers=int(sys.argv[1]), images=int(sys.argv[2]), k=int(sys.argv[3]))))
