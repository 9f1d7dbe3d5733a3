"""API v1: permissions for every endpoint and caller, blinded reader views, pagination that holds still while
labels arrive, streamed and job exports, webhooks signed and retried."""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from rest_framework.test import APIClient

from annotation.api.auth import token_issue
from annotation.models import Label, Webhook, WebhookDelivery
from annotation.reading import assignment
from annotation.webhooks import verify

pytestmark = pytest.mark.django_db


@pytest.fixture
def callers(labelled, make_user):
    from annotation.studies.services import membership_add, study_create

    alice = labelled["readers"][0]
    other_admin = make_user("elsewhere")
    other = study_create(name="other", title="Other")
    membership_add(study=other, user=other_admin, role="admin")
    admin = labelled["admin"]
    tokens = {
        "reader_token": token_issue(user=alice, name="r", scope="read")[1],
        "export_token": token_issue(user=admin, name="e", scope="export")[1],
        "admin_token": token_issue(user=admin, name="a", scope="admin")[1],
        "other_admin_token": token_issue(user=other_admin, name="o", scope="admin")[1],
    }

    def client(who: str) -> APIClient:
        c = APIClient()
        if who == "reader_session":
            c.force_login(alice)
        elif who in tokens:
            c.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens[who]}")
        return c

    return client


def _count(response):
    return len(response.json()["results"])


WHO = ["anonymous", "reader_session", "reader_token", "export_token", "admin_token", "other_admin_token"]


def test_every_read_endpoint_answers_each_caller_as_it_should(labelled, callers):
    study, rnd = labelled["study"], labelled["round"]
    image = rnd.images.first()
    lists = ["/api/v1/studies/", "/api/v1/rounds/", "/api/v1/images/", "/api/v1/labels/", "/api/v1/model-versions/",
             "/api/v1/exports/", "/api/v1/webhooks/"]
    details = [f"/api/v1/studies/{study.pk}/", f"/api/v1/rounds/{rnd.pk}/", f"/api/v1/images/{image.pk}/",
               f"/api/v1/images/{image.pk}/file/", f"/api/v1/studies/{study.pk}/export/?format=jsonl"]
    for who in WHO:
        c = callers(who)
        assert c.get("/api/v1/schema/").status_code == 200  # the schema is public; it holds no data
        for url in lists + details + ["/api/v1/tasks/"]:
            response = c.get(url)
            if who == "anonymous":
                assert response.status_code == 401, (who, url)
                continue
            sees_study = who in ("export_token", "admin_token")
            if url in details:
                assert response.status_code == (200 if sees_study else 404), (who, url, response.status_code)
            elif url in lists:
                assert response.status_code == 200, (who, url)
                if url.endswith(("studies/", "rounds/", "images/", "labels/")):
                    rows = response.json()["results"]
                    ours = [r for r in rows if (r["id"] if url.endswith("studies/") else r["study"]) == study.pk]
                    assert bool(ours) == sees_study and len(ours) == len(rows) or who == "other_admin_token", \
                        (who, url)
                    if who == "other_admin_token":
                        assert not ours
    # readers see their own tasks only, blinded
    tasks = callers("reader_token").get("/api/v1/tasks/?page_size=1000").json()["results"]
    alice = labelled["readers"][0]
    assert len(tasks) == alice.reading_tasks.count()
    assert all(set(t) == {"token", "kind", "position", "status", "images", "answer", "claimed_at", "answered_at"}
               for t in tasks)
    assert all(url.startswith("/portal/i/") for t in tasks for url in t["images"])  # opaque per-reader tokens
    admin_tasks = callers("admin_token").get(f"/api/v1/tasks/?study={study.pk}&page_size=1000").json()["results"]
    assert len(admin_tasks) > len(tasks) and "image" in admin_tasks[0]


def test_actions_need_the_admin_scope(labelled, callers):
    rnd = labelled["round"]
    url = f"/api/v1/rounds/{rnd.pk}/cancel/"
    assert callers("anonymous").post(url).status_code == 401
    assert callers("reader_token").post(url).status_code == 404
    assert callers("other_admin_token").post(url).status_code == 404
    refused = callers("export_token").post(url)
    assert refused.status_code == 403 and "admin scope" in refused.json()["detail"]
    done = callers("admin_token").post(url)
    assert done.status_code == 200 and done.json()["status"] == "cancelled"
    assert callers("admin_token").post(url).status_code == 200  # cancelling twice is harmless
    again = callers("admin_token").post(f"/api/v1/rounds/{rnd.pk}/close/")
    assert again.status_code == 409 and "is cancelled, not labeling" in again.json()["detail"]
    bad = callers("admin_token").post("/api/v1/rounds/", {"study": labelled["study"].pk,
                                                          "config": {"selection": "clever"}}, format="json")
    assert bad.status_code == 400 and "selection must be one of" in json.dumps(bad.json())
    assert callers("admin_token").get("/api/v1/labels/?created_after=yesterday").status_code == 400
    assert callers("admin_token").get("/api/v1/labels/?kind=poetry").status_code == 400


def test_readers_are_pseudonymous_and_simulated_readers_left_out_unless_asked(labelled, callers):
    rows = callers("export_token").get("/api/v1/labels/?page_size=1000").json()["results"]
    names = {r["reader"] for r in rows}
    assert names and all(n.startswith("R-") for n in names) and "alice" not in json.dumps(rows)
    assert not any(r["reader_simulated"] for r in rows)
    with_sim = callers("export_token").get("/api/v1/labels/?page_size=1000&include_simulated=1").json()["results"]
    assert len(with_sim) > len(rows) and any(r["reader_simulated"] for r in with_sim)


def test_paging_through_labels_while_new_ones_arrive_sees_each_exactly_once(labelled, callers, add_reader):
    c = callers("export_token")
    before = set(Label.objects.exclude(reader__memberships__is_simulated=True).values_list("pk", flat=True))
    seen, url = [], "/api/v1/labels/?page_size=7"
    late = add_reader(labelled["study"], "late")
    queue = assignment.queue_for_reader(round=labelled["round"], reader=late)
    while url:
        page = c.get(url).json()
        seen += [row["id"] for row in page["results"]]
        task = assignment.tasks_next_for_reader(queue=queue)  # a label lands between pages
        if task is not None:
            answer = ({"call": "real", "confidence": 3} if task.kind == "realism" else
                      {"scores": {"anatomy": 3, "style": 3, "artifacts": 3}} if task.kind == "rubric"
                      else {"choice": "right"})
            assignment.label_submit(reader=late, task_token=task.token, answer=answer, submission_id=uuid.uuid4())
        url = page["next"]
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert before <= set(seen)


def test_streamed_export_and_export_job_agree_and_verify(labelled, callers, django_capture_on_commit_callbacks):
    import hashlib

    c = callers("export_token")
    study = labelled["study"]
    streamed = b"".join(c.get(f"/api/v1/studies/{study.pk}/export/?format=jsonl").streaming_content)
    with django_capture_on_commit_callbacks(execute=True):  # the job runs (eagerly) once its row is committed
        job = c.post("/api/v1/exports/", {"study": study.pk, "format": "jsonl"}, format="json")
    assert job.status_code == 202
    status = c.get(f"/api/v1/exports/{job.json()['id']}/").json()
    assert status["status"] == "done" and status["download"]
    download = c.get(status["download"])
    body = b"".join(download.streaming_content)
    assert body == streamed and len(body.splitlines()) == status["manifest"]["counts"]["rows"]
    assert hashlib.sha256(body).hexdigest() == download["X-Content-SHA256"]
    csv = c.get(f"/api/v1/studies/{study.pk}/export/?format=csv")
    assert csv["Content-Type"].startswith("text/csv")
    assert c.get(f"/api/v1/studies/{study.pk}/export/?format=parquet").status_code == 400
    assert c.post("/api/v1/exports/", {"study": study.pk, "format": "zip"}, format="json").status_code == 400


class _Receiver(BaseHTTPRequestHandler):
    calls: list = []
    fail_first = 1

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append((self.headers, body))  # case-insensitive header access
        failing = len(type(self).calls) <= type(self).fail_first
        self.send_response(500 if failing else 204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhooks_are_signed_retried_after_a_failure_and_logged(labelled, callers):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.calls, _Receiver.fail_first = [], 1
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        c = callers("admin_token")
        created = c.post("/api/v1/webhooks/", {"study": labelled["study"].pk, "events": ["round.status"],
                                               "url": f"http://127.0.0.1:{server.server_port}/hook",
                                               "secret": "s3cret"}, format="json")
        assert created.status_code == 201 and "secret" not in created.json()
        generated = c.post("/api/v1/webhooks/", {"study": labelled["study"].pk, "url": "http://127.0.0.1:9/other"},
                           format="json")
        assert generated.status_code == 201  # a generated secret is shown once, in the answer that made it
        assert generated.json()["secret"] == Webhook.objects.get(pk=generated.json()["id"]).secret
        assert "secret" not in c.get(f"/api/v1/webhooks/{generated.json()['id']}/").json()
        Webhook.objects.filter(pk=generated.json()["id"]).delete()
        assert c.post("/api/v1/webhooks/", {"study": labelled["study"].pk, "events": ["nope"],
                                            "url": "http://127.0.0.1/x"}, format="json").status_code == 400
        assert callers("export_token").post("/api/v1/webhooks/", {"study": labelled["study"].pk,
                                                                  "url": "http://127.0.0.1/x"},
                                            format="json").status_code == 403
        from annotation.rounds.services import round_cancel

        round_cancel(round=labelled["round"])  # queues a 'round.status' delivery (sent after commit)
        hook = Webhook.objects.get()
        delivery = WebhookDelivery.objects.get(webhook=hook)
        from annotation.tasks import webhook_deliver_task

        # first attempt: 500; the retry (run at once when eager, after backoff on a worker) delivers
        webhook_deliver_task.apply(kwargs={"delivery_pk": delivery.pk}, throw=False)
        delivery.refresh_from_db()
        assert delivery.status == "delivered" and delivery.attempts == 2
        assert [entry["code"] for entry in delivery.log] == [500, 204]
        headers, body = _Receiver.calls[-1]
        assert headers["X-CXR-Event"] == "round.status"
        assert verify("s3cret", body, headers["X-CXR-Signature"]) and not verify("wrong", body,
                                                                                 headers["X-CXR-Signature"])
        assert json.loads(body)["status"] == "cancelled"
        log = c.get(f"/api/v1/webhooks/{hook.pk}/deliveries/").json()
        assert log[0]["attempts"] == 2
    finally:
        server.shutdown()


def test_tokens_from_the_command_line_work_and_revoke(labelled, capsys):
    from django.core.management import CommandError, call_command

    call_command("api_token", user="studyadmin", scope="export", name="nightly")
    key = capsys.readouterr().out.strip()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/studies/").status_code == 200
    call_command("api_token", revoke=key[4:12])
    assert client.get("/api/v1/studies/").status_code == 401
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        call_command("api_token", user="ghost", scope="read")


def test_the_docs_ui_is_served_from_vendored_assets(client):
    page = client.get("/api/v1/docs/").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page and "cdn" not in page.lower()
