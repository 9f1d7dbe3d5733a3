"""A study set up and read without the Django admin, in headless Chromium: an admin creates a study in the
dashboard, uploads a ZIP with a reports CSV, adds a practice set and invites a reader; the reader opens the link,
sets a password, does the practice set with feedback, reads three cases by keyboard; the admin sees the reader's
progress.

Set UPDATE_DOCS_SCREENSHOTS=1 to refresh docs/study-setup.png and docs/invitation.png from this run.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "a long enough admin password"
READER_PASSWORD = "lung-window-2027"


def _png(seed: int, size: int = 96) -> bytes:
    from inference.ml.phantoms import generate_phantom

    buf = io.BytesIO()
    PILImage.fromarray((generate_phantom(seed=seed, size=size).image * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _docs_screenshot(page, name: str) -> None:
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") != "1":
        return
    shot = PILImage.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    shot.quantize(colors=64, dither=PILImage.Dither.NONE).save(ROOT / "docs" / name, optimize=True)


@pytest.fixture
def study_admin(transactional_db, make_user):
    from django.contrib.auth.models import Permission

    admin = make_user("dr-admin")
    admin.set_password(ADMIN_PASSWORD)
    admin.save()
    admin.user_permissions.add(Permission.objects.get(codename="add_study"))
    return admin


def _sign_in(page, url: str, username: str, password: str) -> None:
    page.goto(url)
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")


def test_a_study_set_up_and_read_without_the_django_admin(live_server, study_admin, chromium, tmp_path,
                                                          artifacts_dir):
    from annotation.images.storage import image_store
    from annotation.models import Image, Label, PracticeAnswer, Study
    from annotation.rounds.services import round_create, round_open_labeling

    admin = chromium.new_page(viewport={"width": 1440, "height": 900})
    admin.set_default_timeout(20_000)
    _sign_in(admin, live_server.url + "/accounts/login/?next=/dashboard/", study_admin.username, ADMIN_PASSWORD)
    admin.wait_for_url(lambda url: "/accounts/login/" not in url)
    assert "Getting started" in admin.content()

    # 1. create the study in the dashboard
    admin.click("text=New study")
    admin.fill("input[name=name]", "flow-study")
    admin.fill("input[name=title]", "Flow study")
    admin.uncheck("input[name=task_kinds][value=rubric]")
    admin.fill("input[name=readers_per_image]", "1")
    admin.fill("input[name=display_size]", "128")
    admin.fill("input[name=images_per_round]", "4")
    _docs_screenshot(admin, "study-setup.png")
    admin.click("button:has-text('Create study')")
    admin.wait_for_url("**/dashboard/studies/*/")
    study = Study.objects.get(name="flow-study")
    assert study.task_kinds == ["realism"] and study.display_size == 128

    # 2. upload a ZIP with a reports CSV
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", _png(1))
        zf.writestr("b.png", _png(2))
    reports = tmp_path / "reports.csv"
    reports.write_text("file_name,report\na.png,Normal PA chest radiograph.\nb.png,Small left effusion.\n")
    admin.set_input_files("form:has(input[name=upload]) input[name=upload]", str(archive))
    admin.set_input_files("form:has(input[name=upload]) input[name=reports]", str(reports))
    admin.click("button:has-text('Upload and import')")
    admin.wait_for_url("**/dashboard/imports/*/")
    admin.wait_for_selector("text=2 imported", timeout=60_000)
    assert sorted(Image.objects.filter(study=study).values_list("prompt", flat=True)) == [
        "Normal PA chest radiograph.", "Small left effusion."]

    # 3. a practice set of two real images, and an invitation link
    admin.goto(f"{live_server.url}/dashboard/studies/{study.pk}/")
    practice = [tmp_path / "p1.png", tmp_path / "p2.png"]
    for i, path in enumerate(practice):
        path.write_bytes(_png(10 + i))
    admin.set_input_files("[data-practice-upload] input[name=images]", [str(p) for p in practice])
    admin.fill("[data-practice-upload] input[name=explanation]", "Real: the rib edges are continuous")
    admin.click("button:has-text('Add to the practice set')")
    admin.wait_for_selector("text=2 practice cases")
    admin.fill("[data-invite] input[name=note]", "Dr. Reader")
    admin.click("button:has-text('Create invitation link')")
    link = admin.input_value("[data-invitation-link]")
    assert "/portal/join/" in link
    _docs_screenshot(admin, "invitation.png")

    # a round of four cases opens (launching one generates images: not this test's subject)
    rnd = round_create(study=study)
    rnd.config = {"train": False}
    rnd.save(update_fields=["config"])
    Image.objects.filter(study=study).update(round=rnd)
    for seed in (3, 4):
        from inference.ml.phantoms import generate_phantom

        image_store(study=study, round=rnd, source="synthetic", prompt="p", generator="test", seed=seed,
                    pixels=generate_phantom(seed=seed, size=96).image)
    round_open_labeling(round=rnd)

    # 4. the reader opens the link, sets a password and lands in the practice set
    reader = chromium.new_page(viewport={"width": 1440, "height": 900})
    reader.set_default_timeout(20_000)
    problems = []
    reader.on("pageerror", lambda exc: problems.append(str(exc)))
    reader.goto(link)
    reader.fill("input[name=username]", "dr-reader")
    reader.fill("input[name=password1]", READER_PASSWORD)
    reader.fill("input[name=password2]", READER_PASSWORD)
    reader.keyboard.press("Enter")
    reader.wait_for_url(f"**/portal/practice/{study.pk}/")
    reader.screenshot(path=artifacts_dir / "practice.png")
    for call in ("r", "s"):  # answer by key, read the feedback, Enter goes on
        reader.wait_for_selector("[data-practice]")
        reader.keyboard.press(call)
        reader.wait_for_selector("[data-feedback]")
        expected = "correct" if call == "r" else "wrong"
        assert reader.get_attribute("[data-feedback]", "data-feedback") == expected
        assert "rib edges" in reader.content()
        reader.keyboard.press("Enter")
    reader.wait_for_selector("[data-summary]")
    assert "You answered 1 of 2 correctly." in reader.text_content("[data-summary]")
    reader.keyboard.press("Enter")
    reader.wait_for_url("**/portal/")

    # 5. three cases by keyboard
    reader.keyboard.press("Enter")  # Start has focus
    reader.wait_for_url("**/portal/c/*/")
    for _ in range(3):
        before = reader.url
        reader.wait_for_function("() => document.querySelector('.viewer img')?.naturalWidth > 0")
        reader.keyboard.press("r")
        reader.keyboard.press("3")
        reader.keyboard.press("Enter")
        reader.wait_for_url(lambda url, before=before: url != before)
    assert Label.objects.filter(reader__username="dr-reader").count() == 3
    assert PracticeAnswer.objects.filter(reader__username="dr-reader").count() == 2
    assert not problems, problems

    # 6. the admin sees the reader's progress
    admin.goto(f"{live_server.url}/dashboard/studies/{study.pk}/#readers")
    row = admin.locator("[data-members] tr", has_text="dr-reader")
    assert row.locator("[data-answered]").text_content().strip() == "3"
    assert "1 / 2 correct" in row.text_content()
    admin.screenshot(path=artifacts_dir / "readers.png", full_page=True)
