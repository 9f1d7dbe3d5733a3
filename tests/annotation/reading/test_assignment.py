"""Assignment invariants through the public services: overlap K, no duplicates, balance, expiry, idempotent and
append-only submits, catch trials and repeats, and a query count that does not grow with the round."""

import uuid
from collections import Counter

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation.models import Label, ReadingCase, ReadingTask, Round, TaskStatus
from annotation.reading import assignment
from annotation.rounds.services import round_open_labeling
from annotation.rounds.transitions import IllegalTransition, round_transition

pytestmark = pytest.mark.django_db


def answer_for(task):
    if task.kind == "realism":
        return {"call": "real", "confidence": 3}
    if task.kind == "rubric":
        return {"scores": {"anatomy": 3, "style": 3, "artifacts": 3}}
    return {"choice": "left"}


def read_all(queue, reader, limit=10_000):
    tasks = []
    for _ in range(limit):
        task = assignment.tasks_next_for_reader(queue=queue)
        if task is None:
            return tasks
        assignment.label_submit(reader=reader, task_token=task.token, answer=answer_for(task),
                                submission_id=uuid.uuid4())
        tasks.append(task)
    raise AssertionError("queue never ended")


def test_each_case_read_by_at_most_k_readers_and_never_twice_by_one(make_study, add_reader, stored_round):
    study = make_study(readers_per_image=2, task_kinds=["realism"])
    rnd = stored_round(study, real=6, synthetic=6)
    readers = [add_reader(study) for _ in range(5)]
    seen = Counter()
    for reader in readers:
        queue = assignment.queue_for_reader(round=rnd, reader=reader)
        images = [t.image_id for t in read_all(queue, reader)]
        assert len(images) == len(set(images))  # never twice by one reader
        seen.update(images)
    assert set(seen.values()) == {2}  # every image read by exactly K readers in the end
    assert len(seen) == 12
    assert all(c.taken == c.done == 2 for c in ReadingCase.objects.filter(round=rnd))


def test_readers_who_join_late_get_what_is_left(make_study, add_reader, stored_round):
    study = make_study(readers_per_image=1, task_kinds=["realism"])
    rnd = stored_round(study, real=5, synthetic=5)
    first = add_reader(study)
    q1 = assignment.queue_for_reader(round=rnd, reader=first)
    for _ in range(6):
        t = assignment.tasks_next_for_reader(queue=q1)
        assignment.label_submit(reader=first, task_token=t.token, answer=answer_for(t), submission_id=uuid.uuid4())
    late = add_reader(study)
    got = read_all(assignment.queue_for_reader(round=rnd, reader=late), late)
    assert len(got) == 4
    assert assignment.tasks_next_for_reader(queue=q1) is None


def test_queue_order_is_per_reader_reproducible_and_balanced(make_study, add_reader, stored_round):
    study = make_study(readers_per_image=3, task_kinds=["realism"], real_fraction=0.5)
    rnd = stored_round(study, real=20, synthetic=20)
    a, b = add_reader(study), add_reader(study)
    seq_a = [t for t in read_all(assignment.queue_for_reader(round=rnd, reader=a), a)]
    seq_b = [t.image_id for t in read_all(assignment.queue_for_reader(round=rnd, reader=b), b)]
    assert [t.image_id for t in seq_a] != seq_b
    for start in range(0, 40, 10):
        block = [t.slot for t in seq_a[start : start + 10]]
        assert abs(Counter(block)["real"] - 5) <= 1
    # the same seed gives the same order: replay reader a's queue on a copy of the round
    from annotation.reading.ordering import derive_seed, permute

    n = rnd.pools["realism"]["real"]
    key = derive_seed(seq_a[0].queue.seed, "realism", "real")
    real_idx = [ReadingCase.objects.get(pk=t.case_id).idx for t in seq_a if t.slot == "real"]
    assert real_idx == [permute(p, n, key) for p in range(n)]


def test_kinds_are_served_in_study_order_and_pairs_are_randomised(make_study, add_reader, stored_round):
    study = make_study(readers_per_image=1, task_kinds=["realism", "rubric", "preference"])
    rnd = stored_round(study, real=4, synthetic=8)
    reader = add_reader(study)
    tasks = read_all(assignment.queue_for_reader(round=rnd, reader=reader), reader)
    kinds = [t.kind for t in tasks]
    assert kinds == ["realism"] * 12 + ["rubric"] * 12 + ["preference"] * 4
    pairs = [t for t in tasks if t.kind == "preference"]
    assert all(t.image.source == t.image_b.source == "synthetic" and t.image.prompt == t.image_b.prompt
               for t in pairs)


def test_idle_claim_returns_to_the_pool(make_study, add_reader, stored_round):
    study = make_study(readers_per_image=1, task_kinds=["realism"])
    rnd = stored_round(study, real=1, synthetic=1)
    a, b = add_reader(study), add_reader(study)
    qa, qb = (assignment.queue_for_reader(round=rnd, reader=r) for r in (a, b))
    held = [assignment.tasks_next_for_reader(queue=qa), assignment.tasks_next_for_reader(queue=qa,
            after=assignment.tasks_next_for_reader(queue=qa))]
    assert assignment.tasks_next_for_reader(queue=qb) is None  # everything is claimed by a
    assert assignment.claims_expire_stale(older_than_s=0) == 2
    assert assignment.claims_expire_stale(older_than_s=0) == 0  # safe to run twice
    got = assignment.tasks_next_for_reader(queue=qb)
    assert got is not None and got.image_id in {t.image_id for t in held}
    assignment.label_submit(reader=b, task_token=got.token, answer=answer_for(got), submission_id=uuid.uuid4())
    # a's late answer for the case b took is refused with a clear conflict; nothing is stored for it
    stale = next(t for t in held if t.image_id == got.image_id)
    with pytest.raises(assignment.CaseReturned):
        assignment.label_submit(reader=a, task_token=stale.token, answer=answer_for(stale),
                                submission_id=uuid.uuid4())
    assert not Label.objects.filter(task=stale).exists()
    # a's answer for the case nobody took is still accepted
    other = next(t for t in held if t.image_id != got.image_id)
    assignment.label_submit(reader=a, task_token=other.token, answer=answer_for(other), submission_id=uuid.uuid4())
    assert ReadingCase.objects.get(pk=other.case_id).taken == 1


def test_submit_is_idempotent_and_revisions_append(make_study, add_reader, stored_round):
    study = make_study(task_kinds=["realism"])
    rnd = stored_round(study, real=2, synthetic=2)
    reader = add_reader(study)
    task = assignment.tasks_next_for_reader(queue=assignment.queue_for_reader(round=rnd, reader=reader))
    sid = uuid.uuid4()
    first = assignment.label_submit(reader=reader, task_token=task.token, answer={"call": "real", "confidence": 2},
                                    submission_id=sid, time_spent_ms=1500)
    again = assignment.label_submit(reader=reader, task_token=task.token, answer={"call": "real", "confidence": 2},
                                    submission_id=sid)
    assert again.replayed and again.label.pk == first.label.pk
    assert Label.objects.filter(task=task).count() == 1
    revised = assignment.label_submit(reader=reader, task_token=task.token,
                                      answer={"call": "synthetic", "confidence": 4}, submission_id=uuid.uuid4())
    labels = list(Label.objects.filter(task=task).order_by("revision").values_list("revision", "answer"))
    assert labels == [(1, {"call": "real", "confidence": 2}), (2, {"call": "synthetic", "confidence": 4})]
    task.refresh_from_db()
    assert task.current_label_id == revised.label.pk and task.status == TaskStatus.DONE
    assert ReadingCase.objects.get(pk=task.case_id).done == 1  # a revision is not a second read


def test_bad_submits_store_nothing(make_study, add_reader, stored_round):
    study = make_study(task_kinds=["realism"])
    rnd = stored_round(study, real=1, synthetic=1)
    a, b = add_reader(study), add_reader(study)
    task = assignment.tasks_next_for_reader(queue=assignment.queue_for_reader(round=rnd, reader=a))
    with pytest.raises(ValidationError):
        assignment.label_submit(reader=a, task_token=task.token, answer={"call": "x"}, submission_id=uuid.uuid4())
    with pytest.raises(ValidationError):
        assignment.label_submit(reader=a, task_token=task.token, answer=answer_for(task), submission_id="nope")
    with pytest.raises(ReadingTask.DoesNotExist):
        assignment.label_submit(reader=b, task_token=task.token, answer=answer_for(task),
                                submission_id=uuid.uuid4())
    sid = uuid.uuid4()
    assignment.label_submit(reader=a, task_token=task.token, answer=answer_for(task), submission_id=sid)
    with pytest.raises(PermissionDenied):  # another reader replaying someone's submission id
        assignment.label_submit(reader=b, task_token=task.token, answer=answer_for(task), submission_id=sid)
    assert Label.objects.count() == 1


def test_non_members_cannot_get_a_queue(make_study, make_user, stored_round):
    study = make_study()
    rnd = stored_round(study, real=1, synthetic=1)
    with pytest.raises(PermissionDenied):
        assignment.queue_for_reader(round=rnd, reader=make_user())


def test_catch_trials_and_repeats_are_mixed_in(make_study, add_reader, stored_round):
    # the queue's draws depend on row ids too, so a fixed seed alone does not pin them: at 0.3 / 0.15 a queue without
    # any catch trial or repeat is a ~5e-5 chance
    study = make_study(readers_per_image=1, task_kinds=["realism"], catch_rate=0.3, repeat_rate=0.15,
                       repeat_washout=5, real_fraction=0.5, seed=20261126)
    rnd = stored_round(study, real=30, synthetic=30, catch=4)
    reader = add_reader(study)
    tasks = read_all(assignment.queue_for_reader(round=rnd, reader=reader), reader)
    catches = [t for t in tasks if t.is_catch]
    repeats = [t for t in tasks if t.repeat_of_id]
    assert 1 <= len(catches) <= 4 and len({t.image_id for t in catches}) == len(catches)
    assert repeats, "expected test-retest repeats"
    by_pk = {t.pk: t for t in tasks}
    for rep in repeats:
        original = by_pk[rep.repeat_of_id]
        assert rep.image_id == original.image_id and rep.position - original.position >= 5
    primary = [t for t in tasks if not t.is_catch and not t.repeat_of_id]
    assert len(primary) == 60
    # Catch and repeat cases take the slot the balance schedule asked for, so blocks stay balanced for as long as
    # both pools have cases left (once one runs out, only the other can fill the queue's tail).
    exhausted = min(max(t.position for t in primary if t.slot == slot) for slot in ("real", "synthetic"))
    blocks = range(0, exhausted - 9, 10)
    assert len(blocks) >= 4
    for start in blocks:
        assert abs(Counter(t.slot for t in tasks[start : start + 10])["real"] - 5) <= 1


def _claim_and_submit_queries(study, rnd, reader):
    queue = assignment.queue_for_reader(round=rnd, reader=reader)
    warm = assignment.tasks_next_for_reader(queue=queue)  # first claim may create cursor entries
    assignment.label_submit(reader=reader, task_token=warm.token, answer=answer_for(warm),
                            submission_id=uuid.uuid4())
    with CaptureQueriesContext(connection) as next_q:
        task = assignment.tasks_next_for_reader(queue=queue)
    with CaptureQueriesContext(connection) as submit_q:
        assignment.label_submit(reader=reader, task_token=task.token, answer=answer_for(task),
                                submission_id=uuid.uuid4())
    with CaptureQueriesContext(connection) as held_q:  # with a claim already held (the prefetch path)
        held = assignment.tasks_next_for_reader(queue=queue)
        assignment.tasks_next_for_reader(queue=queue)
    assert held is not None
    return tuple(_statements(c) for c in (next_q, submit_q, held_q))


def _statements(captured) -> int:
    """Queries sent, not counting the savepoints the test transaction wraps each atomic block in."""
    return sum(1 for q in captured.captured_queries if "SAVEPOINT" not in q["sql"])


def test_next_and_submit_queries_do_not_grow_with_the_round(make_study, add_reader, bulk_round):
    small_study = make_study("small", task_kinds=["realism"])
    large_study = make_study("large", task_kinds=["realism"])
    small = _claim_and_submit_queries(small_study, bulk_round(small_study, 100), add_reader(small_study))
    large = _claim_and_submit_queries(large_study, bulk_round(large_study, 10_000), add_reader(large_study))
    assert small == large
    next_q, submit_q, _ = large
    assert next_q <= 6 and submit_q <= 8


def test_round_transitions_are_guarded(make_study, stored_round):
    study = make_study()
    rnd = stored_round(study, real=1, synthetic=1, open_=False)
    with pytest.raises(IllegalTransition):
        round_transition(round=rnd, to="finetuning")
    rnd = round_open_labeling(round=rnd)
    assert rnd.status == "labeling" and round_open_labeling(round=rnd).status == "labeling"
    done = round_transition(round=rnd, to="done")
    assert done.finished_at is not None and done.labeling_closed_at is not None
    with pytest.raises(IllegalTransition):
        round_transition(round=done, to="labeling")


def test_a_round_of_stored_images_ends_when_labeling_closes(make_study, add_reader, stored_round):
    """It sampled from no model version, so there is nothing to finetune: closing labeling finishes it."""
    from annotation.rounds.services import round_close_labeling

    study = make_study(readers_per_image=1, task_kinds=["realism"])
    rnd = stored_round(study, real=1, synthetic=1)
    assert rnd.model_version_id is None
    closed = round_close_labeling(round=rnd)
    assert closed.status == "done" and closed.metrics["labeling"]["planned"] == 2


@pytest.mark.django_db(transaction=True)
def test_a_filled_case_whose_round_message_cannot_be_sent_is_still_acknowledged_and_the_reconciler_closes(
        make_study, add_reader, stored_round, monkeypatch):
    """The broker failing after the label is committed (a locked SQLite broker under load, Redis restarting) must
    not turn a stored answer into a 500: the reader's answer is acknowledged, and the round is closed later."""
    import uuid

    from django.test import Client

    from annotation.models import Label
    from annotation.rounds import messages
    from annotation.rounds.driver import rounds_reconcile

    study = make_study(readers_per_image=1, task_kinds=["realism"], catch_rate=0.0, repeat_rate=0.0)
    rnd = stored_round(study, real=1, synthetic=1)
    reader = add_reader(study, "solo")
    queue = assignment.queue_for_reader(round=rnd, reader=reader)

    def broker_down(**kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(messages.round_advance_task, "delay", broker_down)
    client = Client(raise_request_exception=False)
    client.force_login(reader)
    for _ in range(2):
        task = assignment.tasks_next_for_reader(queue=queue)
        body = {"task": task.token, "answer": {"call": "real", "confidence": 3}, "submission_id": str(uuid.uuid4())}
        answered = client.post("/portal/api/submit", body, content_type="application/json")
        assert answered.status_code == 200, answered.content
    assert Label.objects.filter(task__round=rnd).count() == 2
    rnd.refresh_from_db()
    assert rnd.status == "labeling"  # nobody was told
    monkeypatch.undo()
    assert any(a["action"] == "close" for a in rounds_reconcile()) and Round.objects.get(pk=rnd.pk).status != "labeling"
