"""An admin launches a round from the dashboard in Chromium and watches its progress bars finish, while a real
Celery worker over Redis runs the round (tiny models, simulated readers)."""

import json

import pytest

from tests.browser.conftest import artifacts_dir, chromium, page  # noqa: F401 - the browser fixtures
from tests.rounds.preset import TINY_ROUND, tiny_study

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(400)]


def test_admin_launches_a_round_and_watches_it_finish(live_worker, live_server, page, artifacts_dir,  # noqa: F811
                                                      django_user_model):
    from annotation.models import Round
    from annotation.studies.services import membership_add

    study = tiny_study("browser-loop")
    admin = django_user_model.objects.create_user("loop-admin", password="loop-admin-pw")
    membership_add(study=study, user=admin, role="admin")

    page.goto(live_server.url + "/dashboard/")
    page.fill("input[name=username]", "loop-admin")
    page.fill("input[name=password]", "loop-admin-pw")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.click(f"text={study.title}")
    page.fill("textarea[name=advanced]", json.dumps(TINY_ROUND))
    with page.expect_navigation():
        page.click("button:has-text('Launch round')")
    rnd = Round.objects.get(study=study)
    assert page.url == f"{live_server.url}/dashboard/rounds/{rnd.pk}/"
    page.screenshot(path=artifacts_dir / "launched.png")
    # dashboard.js polls progress.json and reloads the page at each stage, until the round is done
    page.wait_for_selector("[data-status='done']", timeout=300_000)
    page.screenshot(path=artifacts_dir / "done.png", full_page=True)
    finetune = page.locator("[data-bar='finetune'] .label").inner_text()
    assert finetune.startswith("6 / 6")
    assert page.locator("[data-bar='generation'] .fill").get_attribute("style") == "width: 100%"
    assert page.locator("[data-bar='labeling'] .label").inner_text() == "32 / 32"
    page.problems.assert_none()
