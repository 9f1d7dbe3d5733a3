"""A reader works through a list of ten cases in headless Chromium with the keyboard alone: sign in, start the list,
answer five realism and five rubric cases, go back with Backspace to revise one, finish on the done page. The database must then
hold exactly those answers, the revision as a new row, and the page must never have shown provenance.

Set UPDATE_DOCS_SCREENSHOTS=1 to refresh docs/portal-case.png from this run.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a long enough reader password"
PROMPT = "PA chest radiograph, mild cardiomegaly"
GENERATOR = "roentgen-lora-r7"
#: Everything the case page may tell the browser about a case (no source, prompt, round, model or seed).
PAYLOAD_KEYS = set("task kind images url answer rubric progress queue previous next_url".split())


@pytest.fixture
def reader(transactional_db, make_study, add_reader):
    """A reader with a password and ten cases: two real and three synthetic phantoms, each read for realism and
    for the rubric."""
    from annotation.images.storage import image_store
    from annotation.rounds.services import round_create, round_open_labeling
    from inference.ml.phantoms import generate_phantom

    study = make_study(
        "keyboard", task_kinds=["realism", "rubric"], display_size=512, readers_per_image=1, seed=20240601
    )
    rnd = round_create(study=study)
    for seed in (11, 13):
        image_store(
            study=study, round=rnd, source="real", pixels=generate_phantom(seed=seed, size=512).image
        )
    for seed in (12, 14, 16):
        image_store(
            study=study,
            round=rnd,
            source="synthetic",
            prompt=PROMPT,
            generator=GENERATOR,
            seed=seed,
            pixels=generate_phantom(seed=seed, size=512).image,
        )
    # A reading study, not a training round: the last answer closes labeling and the round is done (with training,
    # eager Celery would train the reward model inside the done page's request).
    rnd.config = {"train": False}
    rnd.save(update_fields=["config"])
    round_open_labeling(round=rnd)
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
    from annotation.models import Label, ReadingTask, Round, TaskStatus

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
    assert counter(page) == "0 / 10"
    press_all(page, "s", "4")
    assert page.is_checked('input[name="call"][value="synthetic"]')
    assert page.is_checked('input[name="confidence"][value="4"]')
    shot = page.screenshot(path=artifacts_dir / "case-realism.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        save_docs_screenshot(shot)
    submit(page)

    # Case 2, realism: real (capital R works too), confidence 2; cases 3-5 alternate, confidence 3.
    assert check_case_page(page)["kind"] == "realism"
    assert counter(page) == "1 / 10"
    press_all(page, "R", "2")
    submit(page)
    for n, call in ((2, "s"), (3, "r"), (4, "s")):
        assert check_case_page(page)["kind"] == "realism"
        assert counter(page) == f"{n} / 10"
        press_all(page, call, "3")
        submit(page)

    # Case 6, rubric: 4, 3, 5 in criterion order (each score moves to the next criterion).
    assert check_case_page(page)["kind"] == "rubric"
    assert counter(page) == "5 / 10"
    press_all(page, "4", "3", "5")
    page.screenshot(path=artifacts_dir / "case-rubric.png")
    submit(page)
    assert counter(page) == "6 / 10"
    last_url = page.url

    # Backspace goes back to case 6, which shows the earlier answer; change anatomy to 2 and submit again.
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
    assert counter(page) == "6 / 10"

    # Cases 7-9, rubric: 3, 3, 3; progress shows on the page after each. On case 7 the reader boxes an artifact by
    # keyboard: B puts a box on the image, arrows move it, Shift+arrows resize it, Enter keeps it (and does not
    # submit); a second box is dropped with Esc.
    for n in (6, 7, 8):
        assert check_case_page(page)["kind"] == "rubric"
        assert counter(page) == f"{n} / 10"
        if n == 6:
            url = page.url
            press_all(page, "b", "ArrowRight", "ArrowRight", "ArrowRight", "ArrowUp", "Shift+ArrowDown",
                      "Shift+ArrowDown", "Shift+ArrowRight")
            assert page.is_visible(".viewer .box.draft")
            page.screenshot(path=artifacts_dir / "case-box.png")
            page.keyboard.press("Enter")
            assert page.url == url and page.text_content("#box-count") == "1"
            press_all(page, "b", "ArrowLeft", "Escape")
            assert page.text_content("#box-count") == "1" and page.locator(".viewer .box").count() == 1
        press_all(page, "3", "3", "3")
        submit(page)

    # Case 10: cannot assess, and the list is done.
    check_case_page(page)
    assert counter(page) == "9 / 10"
    press_all(page, "x")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/q/*/done/")
    assert "All done" in page.text_content("h1")
    page.screenshot(path=artifacts_dir / "done.png")
    page.problems.assert_none()

    tasks = list(ReadingTask.objects.filter(reader=reader).order_by("position"))
    assert [t.kind for t in tasks] == ["realism"] * 5 + ["rubric"] * 5
    assert all(t.status == TaskStatus.DONE for t in tasks)
    assert [t.revisions for t in tasks] == [1] * 5 + [2] + [1] * 4
    labels = {(lab.task_id, lab.revision): lab for lab in Label.objects.filter(reader=reader)}
    assert sorted(labels) == sorted([(t.pk, 1) for t in tasks] + [(tasks[5].pk, 2)])
    calls = [labels[t.pk, 1].answer for t in tasks[:5]]
    assert calls == [{"call": "synthetic", "confidence": 4}, {"call": "real", "confidence": 2},
                     {"call": "synthetic", "confidence": 3}, {"call": "real", "confidence": 3},
                     {"call": "synthetic", "confidence": 3}]
    first, revised = labels[tasks[5].pk, 1].answer, labels[tasks[5].pk, 2].answer
    assert first["scores"] == {"anatomy": 4, "style": 3, "artifacts": 5}
    assert revised["scores"] == {"anatomy": 2, "style": 3, "artifacts": 5}
    assert tasks[5].current_label_id == labels[tasks[5].pk, 2].pk
    assert all(labels[t.pk, 1].answer["scores"] == {"anatomy": 3, "style": 3, "artifacts": 3} for t in tasks[6:9])
    boxed = labels[tasks[6].pk, 1].answer["boxes"]
    assert len(boxed) == 1 and boxed[0] == pytest.approx({"x": 0.46, "y": 0.38, "w": 0.22, "h": 0.24})
    assert all(not labels[t.pk, 1].answer.get("boxes") for t in tasks[7:9])
    assert labels[tasks[9].pk, 1].answer["cannot_assess"] is True
    assert Round.objects.get(pk=tasks[0].round_id).status == "done"  # the last answer closed labeling
    assert all(lab.time_spent_ms > 0 for lab in labels.values())
