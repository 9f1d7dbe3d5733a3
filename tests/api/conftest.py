"""A labelled round shared by the export and API tests: two people and a simulated reader, one revision."""

import uuid

import pytest


@pytest.fixture
def labelled(make_study, add_reader, stored_round, make_user):
    from annotation import assignment, services
    from annotation.simulated import SimulatedProfile, round_simulate_readers, simulated_readers_ensure

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
    simulated_readers_ensure(study=study, count=1, profiles=[SimulatedProfile(accuracy=1.0)])
    round_simulate_readers(round=rnd)
    admin = make_user("studyadmin")
    services.membership_add(study=study, user=admin, role="admin")
    return {"study": study, "round": rnd, "readers": readers, "admin": admin}
