"""The reading study the portal benchmarks share (bench/load.py, bench/profile_portal.py): a realism-only study with
`images` stored rows (no files: the hot path never opens them), K readers per image, round 1 open for labeling,
and `readers` reader accounts, each with a logged-in database session and their queue. Needs Django set up."""

from __future__ import annotations


def reading_study(name: str, readers: int, images: int, k: int) -> list[dict]:
    """[{user, session, queue}] per reader: the user's id, a session key to send as the `sessionid` cookie, the
    queue token the portal's API takes."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore

    from annotation.models import Image
    from annotation.reading import assignment
    from annotation.rounds.services import round_create, round_open_labeling
    from annotation.studies import services

    study = services.study_create(name=name, title=name, readers_per_image=k, task_kinds=["realism"],
                                  display_size=64, real_fraction=0.5)
    rnd = round_create(study=study)
    Image.objects.bulk_create([Image(study=study, round=rnd, source="real" if i % 2 else "synthetic",
                                     storage_key=f"k{i}", display_key=f"d{i}", sha256=f"s{i}", width=64, height=64)
                               for i in range(images)], batch_size=2000)
    rnd = round_open_labeling(round=rnd)
    out = []
    for i in range(readers):
        user = get_user_model().objects.create_user(f"{name}-{i}")
        services.membership_add(study=study, user=user, role="reader")
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.create()
        queue = assignment.queue_for_reader(round=rnd, reader=user)
        out.append({"user": user.pk, "session": session.session_key, "queue": queue.token})
    return out
