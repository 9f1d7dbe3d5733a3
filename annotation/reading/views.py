"""The reader portal: thin views over the assignment services and selectors.

Nothing a reader receives (page, JSON, header, URL) carries an image's source, model, prompt or round.
"""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotation.models import ReaderQueue, ReadingTask, RoundStatus, TaskStatus
from annotation.reading import assignment, selectors
from annotation.reading.practice import practice_pending

IMAGE_HEADERS = {
    "Cache-Control": "private, max-age=3600",
    "Content-Disposition": 'inline; filename="case.png"',
    "X-Content-Type-Options": "nosniff",
}


def _queue(request: HttpRequest, token: str) -> ReaderQueue:
    return get_object_or_404(ReaderQueue.objects.select_related("round__study"), token=token, reader=request.user)


def _active(request: HttpRequest, study_id: int) -> None:
    """A reader whose reading an admin ended gets no further case (their answers stay)."""
    if not selectors.reader_active(study_id=study_id, user=request.user):
        raise PermissionDenied(assignment.DEACTIVATED)


def _task(request: HttpRequest, token: str) -> ReadingTask:
    task = selectors.task_for_reader(token=token, reader=request.user)
    if task is None:
        raise Http404("No such case.")
    _active(request, task.queue.round.study_id)
    return task


def task_payload(task: ReadingTask, progress: dict | None = None) -> dict:
    """What the reader's browser gets for a case: opaque tokens, the kind, the rubric, their own answer."""
    images = [task.token] if task.token_b is None else (
        [task.token_b, task.token] if task.swap else [task.token, task.token_b]
    )
    answer = task.current_label.answer if task.current_label_id else None
    if answer and "preferred" in answer:
        answer = {k: v for k, v in answer.items() if k != "preferred"}
    return {
        "task": task.token,
        "kind": task.kind,
        "images": [reverse("portal:image", args=[t]) for t in images],
        "url": reverse("portal:case", args=[task.token]),
        "answer": answer,
        "rubric": task.queue.round.study.rubric if task.kind == "rubric" else None,
        "progress": progress,
    }


@login_required
def home(request: HttpRequest) -> HttpResponse:
    entries = []
    for rnd in selectors.rounds_open_for_reader(reader=request.user):
        try:
            queue = assignment.queue_for_reader(round=rnd, reader=request.user)
        except PermissionDenied:
            continue
        queue.round = rnd
        entries.append({"queue": queue, "study": rnd.study, "progress": selectors.queue_progress(queue=queue),
                        "practice": practice_pending(study=rnd.study, reader=request.user)})
    return render(request, "portal/home.html", {"entries": entries, "from_dashboard": request.GET.get("from") == "dashboard"})


@login_required
@require_GET
def queue_next(request: HttpRequest, token: str) -> HttpResponse:
    queue = _queue(request, token)
    _active(request, queue.round.study_id)
    if practice_pending(study=queue.round.study, reader=request.user):  # the practice set comes first
        return redirect("portal:practice", queue.round.study_id)
    task = assignment.tasks_next_for_reader(queue=queue)
    if task is None:
        return redirect("portal:done", token=queue.token)
    return redirect("portal:case", token=task.token)


@login_required
@require_GET
def case(request: HttpRequest, token: str) -> HttpResponse:
    task = _task(request, token)
    if task.token != token:
        raise Http404("No such case.")
    queue = task.queue
    if queue.round.status != RoundStatus.LABELING:
        return redirect("portal:done", token=queue.token)
    assignment.task_touch(task=task)
    previous = selectors.task_previous(task=task)
    payload = task_payload(task, selectors.queue_progress(queue=queue))
    payload["queue"] = queue.token
    payload["previous"] = reverse("portal:case", args=[previous.token]) if previous else None
    payload["next_url"] = reverse("portal:queue-next", args=[queue.token])
    return render(request, "portal/case.html", {
        "task": task, "payload": payload, "study": queue.round.study, "revising": task.status == TaskStatus.DONE,
    })


@login_required
@require_GET
def image(request: HttpRequest, token: str) -> HttpResponse:
    task = _task(request, token)
    key = (task.image_b if token == task.token_b else task.image).display_key
    with default_storage.open(key, "rb") as handle:
        data = handle.read()
    return HttpResponse(data, content_type="image/png", headers=IMAGE_HEADERS)


@login_required
@require_GET
def done(request: HttpRequest, token: str) -> HttpResponse:
    queue = _queue(request, token)
    return render(request, "portal/done.html", {
        "queue": queue, "study": queue.round.study, "progress": selectors.queue_progress(queue=queue),
        # closed early (an admin's decision, a cancellation) — not closed because every case got its reads
        "closed": queue.round.status != RoundStatus.LABELING
        and ((queue.round.metrics or {}).get("labeling") or {}).get("share") != 1,
    })


@login_required
@require_GET
def review(request: HttpRequest, token: str) -> HttpResponse:
    queue = _queue(request, token)
    if queue.round.study.revealed_at is None:
        return render(request, "portal/review.html", {"queue": queue, "hidden": True}, status=403)
    return render(request, "portal/review.html", {"queue": queue, "tasks": selectors.queue_review(queue=queue)})


# --- JSON endpoints used by the case page (and by the benchmark over HTTP) ------------------------------------------


def _json_error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@login_required
@require_GET
def api_next(request: HttpRequest) -> JsonResponse:
    # the round's study decides the deactivation check: one statement, three columns (the token is unique: [:1])
    queue = next(iter(ReaderQueue.objects.filter(token=request.GET.get("queue", ""), reader=request.user)
                      .select_related("round").only("id", "token", "round__study_id")[:1]), None)
    if queue is None:
        return _json_error("Unknown reading queue.", 404)
    if not selectors.reader_active(study_id=queue.round.study_id, user=request.user):
        return _json_error(assignment.DEACTIVATED, 403)
    after = None
    if request.GET.get("after"):
        after = ReadingTask.objects.filter(token=request.GET["after"], queue=queue).only("position").first()
        if after is None:
            return _json_error("Unknown case.", 404)
    task = assignment.tasks_next_for_reader(queue=queue, after=after)
    if task is None:
        return JsonResponse({"done": True, "done_url": reverse("portal:done", args=[queue.token])})
    return JsonResponse({"done": False, **task_payload(task)})  # task.queue: the locked one, with round and study


@login_required
@require_POST
def api_submit(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return _json_error("The request body must be JSON.", 400)
    if not isinstance(body, dict) or not isinstance(body.get("task"), str):
        return _json_error("Give task (the case token), answer and submission_id.", 400)
    try:
        result = assignment.label_submit(
            reader=request.user, task_token=body["task"], answer=body.get("answer"),
            submission_id=body.get("submission_id", ""), time_spent_ms=int(body.get("time_spent_ms") or 0),
        )
    except ReadingTask.DoesNotExist:
        return _json_error("No such case.", 404)
    except assignment.CaseReturned as exc:
        return _json_error(exc.messages[0], 409)
    except PermissionDenied as exc:
        return _json_error(str(exc), 403)
    except (ValidationError, ValueError, TypeError, OverflowError) as exc:
        message = exc.messages[0] if isinstance(exc, ValidationError) else "time_spent_ms must be a number."
        return _json_error(message, 400)
    return JsonResponse({"saved": True, "revision": result.label.revision, "replayed": result.replayed})
