"""The child processes of bench/portal.py (`portal.py _child MODE SPEC`, Django set up): create the data, probe
statements and in-process time per call, and check duplicate hand-outs and invariants in the database."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections import Counter, defaultdict

from .clients import ANSWER
from .measure import summary_ms
from .server import CHILD_MARK, REPO

PROBE_USER = "bench-probe"
TX_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def child_main(mode, spec_path):
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    with open(spec_path) as fh:
        spec = json.load(fh)
    out = {"setup": child_setup, "probe": child_probe, "check": child_check}[mode](spec)
    print(CHILD_MARK + json.dumps(out), flush=True)


def child_setup(spec):
    from django.contrib.auth import get_user_model

    from annotation.models import Image, ReadingCase, Role
    from annotation.rounds.services import round_create, round_open_labeling
    from annotation.studies.services import membership_add, study_create

    User = get_user_model()
    t = {}
    t0 = time.perf_counter()
    study = study_create(name="bench", title="Bench study", task_kinds=["realism"], readers_per_image=1)
    warm = study_create(name="bench-warmup", title="Bench warm-up", task_kinds=["realism"],
                                 readers_per_image=1)
    users = [User.objects.create_user(username=f"bench-r{i}", password=pw) for i, pw in enumerate(spec["passwords"])]
    users.append(User.objects.create_user(username=PROBE_USER, password=uuid.uuid4().hex))
    for u in users:
        membership_add(study=study, user=u, role=Role.READER)
        membership_add(study=warm, user=u, role=Role.READER)
    t["users"] = round(time.perf_counter() - t0, 2)

    def bulk_round(st, n):
        rnd = round_create(study=st)
        t1 = time.perf_counter()
        Image.objects.bulk_create(
            [Image(study=st, round=rnd, source="real" if i % 2 else "synthetic", storage_key=f"k{i}",
                   display_key=f"d{i}", sha256=f"{rnd.pk}-{i}", width=64, height=64) for i in range(n)],
            batch_size=5000,
        )
        t2 = time.perf_counter()
        rnd = round_open_labeling(round=rnd)
        return rnd, t2 - t1, time.perf_counter() - t2

    wrnd, _, _ = bulk_round(warm, spec["warmup_size"])
    rnd, t_img, t_open = bulk_round(study, spec["size"])
    t["images"], t["open_labeling"] = round(t_img, 2), round(t_open, 2)
    if spec.get("analyze"):
        from django.db import connection

        t1 = time.perf_counter()
        with connection.cursor() as c:
            c.execute("ANALYZE")
        t["analyze"] = round(time.perf_counter() - t1, 2)
    t["total"] = round(time.perf_counter() - t0, 2)
    return {"study": study.pk, "study_title": study.title, "round": rnd.pk, "warmup_round": wrnd.pk,
            "warmup_title": warm.title, "pools": rnd.pools, "cases": ReadingCase.objects.filter(round=rnd).count(),
            "timings_s": t}


def _split(queries):
    sql = [q["sql"] for q in queries]
    tx = [s for s in sql if s.lstrip().upper().startswith(TX_CONTROL)]
    return len(sql) - len(tx), len(tx), sql


def child_probe(spec):
    """Statements and in-process time per call; the probe's work is undone afterwards (checked)."""
    import cProfile
    import io
    import pstats

    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.db.models import F, Sum
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from annotation.models import Label, ReaderQueue, ReadingCase, ReadingTask, Round
    from annotation.reading.assignment import label_submit, queue_for_reader, tasks_next_for_reader

    n = spec["n"]
    user = get_user_model().objects.get(username=PROBE_USER)
    rnd = Round.objects.get(pk=spec["round"])
    queue = queue_for_reader(round=rnd, reader=user)
    out = {"n": n}

    # --- service functions -------------------------------------------------------------------------------------
    nq, sq, ntx, stx, nt, st, sample = [], [], [], [], [], [], {}
    for i in range(n):
        with CaptureQueriesContext(connection) as cq:
            task = tasks_next_for_reader(queue=queue)
        data, tx, sql = _split(cq.captured_queries)
        nq.append(data), ntx.append(tx)
        if i == 1:
            sample["next"] = sql
        with CaptureQueriesContext(connection) as cq:
            label_submit(reader=user, task_token=task.token, answer=ANSWER, submission_id=uuid.uuid4(),
                         time_spent_ms=1000)
        data, tx, sql = _split(cq.captured_queries)
        sq.append(data), stx.append(tx)
        if i == 1:
            sample["submit"] = sql
    for _ in range(n):  # timing without the capture overhead
        t0 = time.perf_counter()
        task = tasks_next_for_reader(queue=queue)
        nt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        label_submit(reader=user, task_token=task.token, answer=ANSWER, submission_id=uuid.uuid4(),
                     time_spent_ms=1000)
        st.append(time.perf_counter() - t0)
    out["service"] = {"next_queries": nq, "next_tx_statements": ntx, "submit_queries": sq,
                      "submit_tx_statements": stx, "next_ms": summary_ms(nt), "submit_ms": summary_ms(st),
                      "sample_sql": sample}

    # --- whole views through the test client (session + auth middleware, JSON encoding) -------------------------
    client = Client()
    client.force_login(user)

    def view_pair():
        t0 = time.perf_counter()
        resp = client.get("/portal/api/next", {"queue": queue.token})
        t1 = time.perf_counter()
        assert resp.status_code == 200 and not resp.json().get("done"), resp.content[:300]
        token = resp.json()["task"]
        t2 = time.perf_counter()
        resp = client.post("/portal/api/submit", data=json.dumps({
            "task": token, "answer": ANSWER, "submission_id": str(uuid.uuid4()), "time_spent_ms": 1000}),
            content_type="application/json")
        t3 = time.perf_counter()
        assert resp.status_code == 200, resp.content[:300]
        return t1 - t0, t3 - t2

    nq, sq, nt, st, sample = [], [], [], [], {}
    for i in range(n):
        with CaptureQueriesContext(connection) as cq:
            resp = client.get("/portal/api/next", {"queue": queue.token})
        data, _, sql = _split(cq.captured_queries)
        nq.append(data)
        if i == 1:
            sample["next"] = sql
        token = resp.json()["task"]
        with CaptureQueriesContext(connection) as cq:
            client.post("/portal/api/submit", data=json.dumps({
                "task": token, "answer": ANSWER, "submission_id": str(uuid.uuid4()), "time_spent_ms": 1000}),
                content_type="application/json")
        data, _, sql = _split(cq.captured_queries)
        sq.append(data)
        if i == 1:
            sample["submit"] = sql
    for _ in range(n):
        a, b = view_pair()
        nt.append(a), st.append(b)
    out["view"] = {"next_queries": nq, "submit_queries": sq, "next_ms": summary_ms(nt),
                   "submit_ms": summary_ms(st), "sample_sql": sample}

    # --- new-connection cost (SQLite runs with CONN_MAX_AGE=0: one new connection per request) -------------------
    ct = []
    for _ in range(min(n, 20)):
        connection.close()
        t0 = time.perf_counter()
        connection.ensure_connection()
        ct.append(time.perf_counter() - t0)
    out["new_connection_ms"] = summary_ms(ct)
    out["conn_max_age"] = connection.settings_dict.get("CONN_MAX_AGE")

    if spec.get("profile"):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            view_pair()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(45)
        out["profile_view_cumulative"] = buf.getvalue()[-12000:]
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        out["profile_view_tottime"] = buf.getvalue()[-9000:]

    # --- undo the probe's work so the HTTP phases see an untouched round -----------------------------------------
    with transaction.atomic():
        tasks = list(ReadingTask.objects.filter(round=rnd, reader=user).values("pk", "case_id", "status"))
        pks = [t["pk"] for t in tasks]
        Label.objects.filter(task_id__in=pks).delete()
        ReadingTask.objects.filter(pk__in=pks).delete()
        taken = Counter(t["case_id"] for t in tasks if t["status"] != "expired")
        done = Counter(t["case_id"] for t in tasks if t["status"] == "done")
        for case_id, k in taken.items():
            ReadingCase.objects.filter(pk=case_id).update(taken=F("taken") - k, done=F("done") - done[case_id])
        ReaderQueue.objects.filter(round=rnd, reader=user).delete()
    agg = ReadingCase.objects.filter(round=rnd).aggregate(t=Sum("taken"), d=Sum("done"))
    out["undone_tasks"] = len(tasks)
    out["restored"] = (agg["t"] or 0) == 0 and (agg["d"] or 0) == 0 and not ReadingTask.objects.filter(
        round=rnd).exists()
    if not out["restored"]:
        raise RuntimeError(f"probe clean-up incomplete: {agg}")
    return out


def child_check(spec):
    from django.db.models import Count, F, Sum

    from annotation.models import Label, ReadingCase, ReadingTask, Round

    rnd = Round.objects.select_related("study").get(pk=spec["round"])
    k = rnd.study.readers_per_image
    cases = ReadingCase.objects.filter(round=rnd)
    live = ReadingTask.objects.filter(round=rnd).exclude(status="expired")
    labels = Label.objects.filter(task__round=rnd)
    agg = cases.aggregate(taken=Sum("taken"), done=Sum("done"))
    db = {
        "k": k,
        "cases": cases.count(),
        "cases_taken_over_capacity": cases.filter(taken__gt=F("capacity")).count(),
        "cases_done_over_capacity": cases.filter(done__gt=F("capacity")).count(),
        "cases_more_than_k_readers": live.values("case_id").annotate(r=Count("reader_id", distinct=True))
        .filter(r__gt=k).count(),
        "images_more_than_k_labels": labels.values("task__image_id").annotate(c=Count("id")).filter(c__gt=k).count(),
        "tasks": ReadingTask.objects.filter(round=rnd).count(),
        "tasks_done": ReadingTask.objects.filter(round=rnd, status="done").count(),
        "tasks_claimed_open": ReadingTask.objects.filter(round=rnd, status="claimed").count(),
        "labels": labels.count(),
        "sum_taken": agg["taken"] or 0,
        "sum_done": agg["done"] or 0,
    }
    # hand-outs seen by the HTTP clients, resolved to cases/images
    token_reader = {tok: user for user, toks in spec["handed"].items() for tok in toks}
    toks = list(token_reader)
    rows = []
    for i in range(0, len(toks), 2000):
        rows += list(ReadingTask.objects.filter(token__in=toks[i:i + 2000])
                     .values_list("token", "case_id", "image_id", "reader__username"))
    by_image, by_image_conc = defaultdict(set), defaultdict(set)
    conc = set(spec.get("conc_readers") or [])
    wrong_owner = 0
    for tok, _case_id, image_id, owner in rows:
        if owner != token_reader[tok]:
            wrong_owner += 1
        by_image[image_id].add(token_reader[tok])
        if token_reader[tok] in conc:
            by_image_conc[image_id].add(token_reader[tok])
    responses = {
        "tokens_handed": len(toks),
        "tokens_resolved": len(rows),
        "tokens_not_found": len(toks) - len(rows),
        "token_owner_mismatch": wrong_owner,
        "images_to_2plus_readers": sum(1 for v in by_image.values() if len(v) > 1),
        "conc_images_to_2plus_readers": sum(1 for v in by_image_conc.values() if len(v) > 1),
    }
    return {"db": db, "responses": responses}
