"""The first hour, walked in Chromium while a real Celery worker over Redis runs the round (tiny models): an admin
opens the study, reads what to do, launches a round and reads what happens next while a radiologist (a second
browser) reads every case by keyboard, boxing one artifact; the admin follows the round to its end, reads what to do
next, opens the report and the API docs. No page shows a JSON dump outside its folded "raw" link.

Set UPDATE_DOCS_SCREENSHOTS=1 to refresh the walkthrough's screenshots under docs/ from this run."""

import io
import json
import os
from pathlib import Path

import pytest

from tests.annotation.rounds.preset import TINY_ROUND, tiny_study
from tests.browser.conftest import BrowserProblems

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(500)]

DOCS = Path(__file__).resolve().parents[2] / "docs"


def shot(tab, artifacts: Path, name: str) -> None:
    """A screenshot for the test's artifacts, and with UPDATE_DOCS_SCREENSHOTS=1 a small palette PNG in docs/."""
    png = tab.screenshot(path=artifacts / f"{name}.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        from PIL import Image

        Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=96).save(DOCS / f"walkthrough-{name}.png",
                                                                              optimize=True)


def no_json_dump(tab) -> None:
    """Every <pre> (a JSON dump) sits in a <details> that is folded: the raw data is one click away, never shown."""
    loose = tab.evaluate("() => [...document.querySelectorAll('pre')].filter(p => !p.closest('details')).length")
    shown = tab.evaluate("() => [...document.querySelectorAll('details')].filter(d => d.open && d.querySelector('pre'))"
                          ".length")
    assert loose == 0 and shown == 0, "a page shows a JSON dump outside its raw link"


def next_steps(tab, heading: str) -> str:
    return tab.locator(f"section.next-steps:has(h2:text-is('{heading}'))").inner_text()


def read_everything_by_keyboard(reader_page, url: str, username: str, password: str) -> int:
    """The radiologist signs in and answers every case of their list with the keyboard; boxes one artifact."""
    reader_page.goto(url + "/portal/")
    reader_page.fill("input[name=username]", username)
    reader_page.fill("input[name=password]", password)
    with reader_page.expect_navigation():
        reader_page.keyboard.press("Enter")
    reader_page.wait_for_selector("[data-start]", timeout=120_000)
    with reader_page.expect_navigation():
        reader_page.click("[data-start]")
    answered, boxed = 0, False
    while "/portal/c/" in reader_page.url:
        reader_page.wait_for_function("() => [...document.querySelectorAll('.viewer img')].every(i => i.complete)")
        kind = json.loads(reader_page.text_content("#case-data"))["kind"]
        if kind == "realism":
            reader_page.keyboard.press("s")
            reader_page.keyboard.press("3")
        else:
            if not boxed:
                for key in ("b", "ArrowRight", "Shift+ArrowDown", "Enter"):
                    reader_page.keyboard.press(key)
                assert reader_page.text_content("#box-count") == "1"
                boxed = True
            for _ in reader_page.locator(".criterion").all():
                reader_page.keyboard.press("3")
        before = reader_page.url
        reader_page.keyboard.press("Enter")
        reader_page.wait_for_url(lambda u, before=before: u != before)
        answered += 1
    assert "/done/" in reader_page.url and boxed
    return answered


def test_the_first_hour_of_an_admin_and_a_radiologist(live_worker, live_server, page, chromium,
                                                      artifacts_dir, django_user_model):
    from annotation.models import Label, Round
    from annotation.studies.services import membership_add

    study = tiny_study("walkthrough", readers=1, simulated=False)
    admin = django_user_model.objects.create_user("study-admin", password="study-admin-pw")
    membership_add(study=study, user=admin, role="admin")
    radiologist = django_user_model.objects.create_user("dr-reader", password="dr-reader-pw")
    membership_add(study=study, user=radiologist, role="reader")

    # The admin signs in, opens the study and reads what to do first.
    page.goto(live_server.url + "/dashboard/")
    page.fill("input[name=username]", "study-admin")
    page.fill("input[name=password]", "study-admin-pw")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.locator("a[href='/api/v1/docs/']").count() >= 1  # the dashboard points to the API docs
    page.click(f"text={study.title}")
    assert "Launch the first round" in next_steps(page, "What to do next")
    shot(page, artifacts_dir, "study")
    no_json_dump(page)

    page.fill("textarea[name=advanced]", json.dumps(TINY_ROUND))
    with page.expect_navigation(timeout=120_000):  # the first launch on a machine builds the tiny base
        page.click("button:has-text('Launch round')", no_wait_after=True)
    rnd = Round.objects.get(study=study)
    assert page.url == f"{live_server.url}/dashboard/rounds/{rnd.pk}/"

    # While the radiologist reads, the round page says who has how many cases left.
    page.wait_for_selector("[data-status='labeling']", timeout=120_000)
    waiting = next_steps(page, "What happens next")
    assert "Readers are reading" in waiting and "not yet opened their list: dr-reader" in waiting
    shot(page, artifacts_dir, "round-labeling")
    no_json_dump(page)

    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(20_000)
    reader_page = context.new_page()
    reader_page.problems = BrowserProblems()
    reader_page.on("pageerror", lambda exc: reader_page.problems.items.append(f"page error: {exc}"))
    try:
        answered = read_everything_by_keyboard(reader_page, live_server.url, "dr-reader", "dr-reader-pw")
        reader_page.problems.assert_none()
    finally:
        context.close()
    assert answered == Label.objects.filter(task__round=rnd, reader=radiologist).count() > 0
    assert any(lab.answer.get("boxes") for lab in Label.objects.filter(task__round=rnd, task__kind="rubric"))

    # The admin follows the round to its end (the page reloads at each stage) and reads what to do next.
    page.wait_for_selector("[data-status='done']", timeout=300_000)
    done = next_steps(page, "What happens next")
    assert "Read the round's report" in done
    assert page.locator("[data-bar='evaluation'] .label").inner_text().startswith("4 / 4")
    assert page.locator("[data-bar='finetune'] .label").inner_text().startswith("6 / 6")
    shot(page, artifacts_dir, "round-done")
    no_json_dump(page)

    with page.expect_navigation():
        page.click("section.next-steps a:has-text('Report')")
    assert "/report/" in page.url
    shot(page, artifacts_dir, "report")
    no_json_dump(page)

    page.goto(live_server.url + "/api/v1/docs/")
    page.wait_for_selector("text=Authorization: Bearer", timeout=30_000)
    shot(page, artifacts_dir, "api-docs")
    page.problems.assert_none()
