"""A labelled round shared by the export and API tests: two people and a simulated reader, one revision."""

import uuid

import pytest

from training.ml.simulated_reader import SimulatedReader


@pytest.fixture
def labelled(make_study, add_reader, stored_round, add_admin):
    from annotation.reading import assignment
    from annotation.reading.simulated import (
        round_simulate_readers,
        simulated_readers_ensure,
    )

    study = make_study("exp", readers_per_image=3, task_kinds=["realism", "rubric", "preference"])
    rnd = stored_round(study, real=4, synthetic=4)
    readers = [add_reader(study, "alice"), add_reader(study, "bob")]
    for reader in readers:
        queue = assignment.queue_for_reader(round=rnd, reader=reader)
        while (task := assignment.tasks_next_for_reader(queue=queue)) is not None:
            if task.kind == "realism":
                answer = {"call": "real" if task.image.source == "real" else "synthetic", "confidence": 4}
            elif task.kind == "rubric":
                answer = {"scores": {"anatomy": 4, "style": 3, "artifacts": 5}, "comment": "ok, \"quoted\"\nline"}
            else:
                answer = {"choice": "left"}
            assignment.label_submit(reader=reader, task_token=task.token, answer=answer, submission_id=uuid.uuid4(),
                                    time_spent_ms=1500)
    first = readers[0].reading_tasks.filter(kind="realism").order_by("position").first()
    assignment.label_submit(reader=readers[0], task_token=first.token, answer={"call": "synthetic", "confidence": 2},
                            submission_id=uuid.uuid4())  # a revision: the first label is now superseded
    simulated_readers_ensure(study=study, count=1, readers=[SimulatedReader(accuracy=1.0)])
    round_simulate_readers(round=rnd)
    admin = add_admin(study, "studyadmin")
    return {"study": study, "round": rnd, "readers": readers, "admin": admin}


@pytest.fixture
def world(labelled, make_user):
    """`labelled` seen by six callers (anonymous, reader A/B, the study admin's session, export and admin tokens
    of the study admin) next to another study with its own round, image, webhook and admin ("stranger")."""
    import numpy as np
    from django.contrib.auth.models import Permission
    from rest_framework.test import APIClient

    from annotation.api.auth import token_issue
    from annotation.images.storage import image_store
    from annotation.models import ExportJob, Image, ImportJob, Label, Round, Webhook
    from annotation.reading import assignment
    from annotation.rounds.services import round_create
    from annotation.studies.services import membership_add, study_create
    from inference.models import GeneratedImage, GenerationBatch, ModelVersion

    study, rnd = labelled["study"], labelled["round"]
    alice, bob = labelled["readers"]
    study_admin = labelled["admin"]
    study_admin.is_staff = True  # study admins use the Django admin too (scoped to their studies)
    study_admin.save()
    study_admin.user_permissions.set(Permission.objects.filter(content_type__app_label="annotation"))
    version = ModelVersion.objects.create(name="tiny-v1", base_path="/models/tiny")
    Image.objects.filter(study=study, source="synthetic").update(model_version=version)
    batch = GenerationBatch.objects.create(model_version=version, count=1)
    generated = GeneratedImage.objects.create(batch=batch, index=0, seed=0, prompt="p",
                                              raw_key=rnd.images.first().storage_key)
    Round.objects.filter(pk=rnd.pk).update(generation_batch=batch, model_version=version,
                                           metrics={"report": {"reader": {}}})
    export = ExportJob.objects.create(study=study, requested_by=study_admin, format="jsonl")
    import_job = ImportJob.objects.create(study=study, requested_by=study_admin, source="upload",
                                          upload_name="batch.zip")
    hook = Webhook.objects.create(study=study, url="http://127.0.0.1:9/hook", secret="s", created_by=study_admin)
    other = study_create(name="elsewhere", title="Elsewhere")
    other_round = round_create(study=other)
    other_image = image_store(study=other, round=other_round, source="real",
                                       pixels=np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)).image
    other_hook = Webhook.objects.create(study=other, url="http://127.0.0.1:9/other", secret="s")
    stranger = make_user("stranger")
    membership_add(study=other, user=stranger, role="admin", actor=stranger)  # an audit event of `other`
    token_issue(user=stranger, name="stranger's", scope="admin")
    queue = assignment.queue_for_reader(round=rnd, reader=alice)
    task = alice.reading_tasks.filter(kind="realism").order_by("position").first()
    tokens = {"export_token": token_issue(user=study_admin, name="e", scope="export")[1],
              "admin_token": token_issue(user=study_admin, name="a", scope="admin")[1]}
    users = {"reader_a": alice, "reader_b": bob, "study_admin": study_admin}
    from annotation.models import PracticeCase, StudyMembership
    from annotation.studies.members import invitation_create

    practice = PracticeCase.objects.create(study=study, display_key=rnd.images.first().display_key, answer="real")
    invite_token = invitation_create(study=study, role="reader", actor=study_admin)[1]
    member = StudyMembership.objects.get(study=study, user=bob, role="reader")

    def client(who: str) -> APIClient:
        c = APIClient()
        if who in users:
            c.force_login(users[who])
        elif who in tokens:
            c.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens[who]}")
        return c

    return {"study": study, "round": rnd, "other": other, "other_round": other_round, "other_image": other_image,
            "other_hook": other_hook, "queue": queue,
            "task": task, "image": rnd.images.filter(source="synthetic").first(), "version": version,
            "generated": generated, "export": export, "import_job": import_job, "hook": hook, "label": Label.objects.filter(
                task__round=rnd).first(), "client": client, "practice": practice, "invite_token": invite_token,
            "member": member}
