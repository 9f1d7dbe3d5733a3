"""A reader works through a list in headless Chromium with the keyboard alone: sign in, start the list, answer
realism and rubric cases, go back with Backspace to revise one, finish on the done page. The database must then
hold exactly those answers, the revision as a new row, and the page must never have shown provenance.

Set UPDATE_DOCS_SCREENSHOTS=1 to refresh docs/portal-case.png from this run.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a long enough reader password"
PROMPT = "PA chest radiograph, mild cardiomegaly"
GENERATOR = "roentgen-lora-r7"
#: Everything the case page may tell the browser about a case (no source, prompt, round, model or seed).
PAYLOAD_KEYS = set("task kind images url answer rubric progress queue previous next_url".split())


@pytest.fixture
def reader(transactional_db, make_study, add_reader):
    """A reader with a password and four cases: one real and one synthetic phantom, each read for realism and
    for the rubric."""
    from annotation import services
    from inference.phantoms import generate_phantom

    study = make_study(
        "keyboard", task_kinds=["realism", "rubric"], display_size=512, readers_per_image=1, seed=20240601
    )
    rnd = services.round_create(study=study)
    services.image_store(
        study=study, round=rnd, source="real", pixels=generate_phantom(seed=11, size=512).image
    )
    services.image_store(
        study=study,
        round=rnd,
        source="synthetic",
        prompt=PROMPT,
        generator=GENERATOR,
        seed=7,
        pixels=generate_phantom(seed=12, size=512).image,
    )
    services.round_open_labeling(round=rnd)
    reader = add_reader(study, "dr-keys")
    reader.set_password(PASSWORD)
    reader.save()
    return reader


def counter(page) -> str:
    return page.text_content("#counter").strip()


def press_all(page, *keys: str) -> None:
    for key in keys:
        page.keyboard.press(key)


def submit(page) -> None:
    """Enter submits; the page then moves on to another URL."""
    before = page.url
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: url != before)


def check_case_page(page) -> dict:
    """The image has loaded and fills the viewer; the page carries nothing about provenance."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.viewer img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    data = json.loads(page.text_content("#case-data"))
    assert set(data) <= PAYLOAD_KEYS, f"unexpected payload keys {set(data) - PAYLOAD_KEYS}"
    html = page.content()
    for secret in (PROMPT, GENERATOR, "phantom"):
        assert secret.lower() not in html.lower(), f"the case page mentions {secret!r}"
    viewer, img = (
        page.locator(".viewer").first.bounding_box(),
        page.locator(".viewer img").first.bounding_box(),
    )
    fit = min(viewer["width"], viewer["height"])
    assert img["width"] >= 0.9 * fit and img["height"] >= 0.9 * fit, (
        f"image {img} does not fill viewer {viewer}"
    )
    assert img["width"] <= viewer["width"] + 1 and img["height"] <= viewer["height"] + 1
    return data


def save_docs_screenshot(png: bytes) -> None:
    """Keep the committed screenshot small: a palette PNG of 128 exact greys (the radiograph) plus 64 colours
    drawn from the tinted interface pixels, mapped without dithering (noise would defeat the compression)."""
    import numpy as np
    from PIL import Image

    shot = Image.open(io.BytesIO(png)).convert("RGB")
    rgb = np.asarray(shot)
    tinted = rgb[rgb.max(-1).astype(int) - rgb.min(-1) > 2].reshape(1, -1, 3)
    colours = (
        Image.fromarray(tinted).quantize(colors=64, method=Image.Quantize.MEDIANCUT).getpalette()[: 64 * 3]
    )
    greys = [int(g) for g in np.linspace(0, 255, 128).round() for _ in range(3)]
    palette = Image.new("P", (1, 1))
    palette.putpalette(colours + greys + [0] * (768 - len(colours) - len(greys)))
    path = ROOT / "docs" / "portal-case.png"
    path.parent.mkdir(exist_ok=True)
    shot.quantize(palette=palette, dither=Image.Dither.NONE).save(path, optimize=True)


def test_reader_answers_revises_and_finishes_with_the_keyboard_only(live_server, reader, page, artifacts_dir):
    from annotation.models import Label, ReadingTask, TaskStatus

    # Sign in by typing; the username field has focus.
    page.goto(live_server.url + "/portal/")
    assert "/accounts/login/" in page.url
    page.screenshot(path=artifacts_dir / "login.png")
    page.keyboard.type(reader.username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(live_server.url + "/portal/")
    page.screenshot(path=artifacts_dir / "home.png")

    # Start the list from the keyboard.
    for _ in range(10):
        if page.evaluate("document.activeElement.matches('[data-start]')"):
            break
        page.keyboard.press("Tab")
    else:
        pytest.fail("Tab never reached the Start button")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/c/*/")

    # Case 1, realism: synthetic, confidence 4.
    data = check_case_page(page)
    assert data["kind"] == "realism" and data["previous"] is None
    assert counter(page) == "0 / 4"
    press_all(page, "s", "4")
    assert page.is_checked('input[name="call"][value="synthetic"]')
    assert page.is_checked('input[name="confidence"][value="4"]')
    shot = page.screenshot(path=artifacts_dir / "case-realism.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        save_docs_screenshot(shot)
    submit(page)

    # Case 2, realism: real, confidence 2.
    assert check_case_page(page)["kind"] == "realism"
    assert counter(page) == "1 / 4"
    press_all(page, "R", "2")
    submit(page)

    # Case 3, rubric: 4, 3, 5 in criterion order (each score moves to the next criterion).
    assert check_case_page(page)["kind"] == "rubric"
    assert counter(page) == "2 / 4"
    press_all(page, "4", "3", "5")
    page.screenshot(path=artifacts_dir / "case-rubric.png")
    submit(page)
    assert counter(page) == "3 / 4"
    last_url = page.url

    # Backspace goes back to case 3, which shows the earlier answer; change anatomy to 2 and submit again.
    page.keyboard.press("Backspace")
    page.wait_for_url(lambda url: url != last_url)
    assert check_case_page(page)["kind"] == "rubric"
    assert page.is_visible(".notice")
    assert page.is_checked('input[name="score-anatomy"][value="4"]')
    assert page.is_checked('input[name="score-artifacts"][value="5"]')
    page.keyboard.press("2")
    page.screenshot(path=artifacts_dir / "case-revising.png")
    submit(page)
    assert page.url == last_url, "after a revision the reader returns to the case they left"
    assert counter(page) == "3 / 4"

    # Case 4: cannot assess, and the list is done.
    check_case_page(page)
    press_all(page, "x")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/q/*/done/")
    assert "All done" in page.text_content("h1")
    page.screenshot(path=artifacts_dir / "done.png")
    page.problems.assert_none()

    tasks = list(ReadingTask.objects.filter(reader=reader).order_by("position"))
    assert [t.kind for t in tasks] == ["realism", "realism", "rubric", "rubric"]
    assert all(t.status == TaskStatus.DONE for t in tasks)
    assert [t.revisions for t in tasks] == [1, 1, 2, 1]
    labels = {(lab.task_id, lab.revision): lab for lab in Label.objects.filter(reader=reader)}
    assert sorted(labels) == sorted(
        [(tasks[0].pk, 1), (tasks[1].pk, 1), (tasks[2].pk, 1), (tasks[2].pk, 2), (tasks[3].pk, 1)]
    )
    assert labels[tasks[0].pk, 1].answer == {"call": "synthetic", "confidence": 4}
    assert labels[tasks[1].pk, 1].answer == {"call": "real", "confidence": 2}
    first, revised = labels[tasks[2].pk, 1].answer, labels[tasks[2].pk, 2].answer
    assert first["scores"] == {"anatomy": 4, "style": 3, "artifacts": 5}
    assert revised["scores"] == {"anatomy": 2, "style": 3, "artifacts": 5}
    assert tasks[2].current_label_id == labels[tasks[2].pk, 2].pk
    assert labels[tasks[3].pk, 1].answer["cannot_assess"] is True
    assert all(lab.time_spent_ms > 0 for lab in labels.values())
