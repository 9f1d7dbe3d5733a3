"""An admin opens the study dashboard in Chromium: where a statistic rests on too few items (a version scored on
one panel item, a reward AUROC from two), the page says "too few (n=…)" in visible text, never a bare number, and
the page raises no JavaScript error."""

from __future__ import annotations

import re

import pytest

from tests.annotation.rounds.test_panel_views import build_panel_study

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PASSWORD = "a long enough admin password"


def test_study_dashboard_says_too_few_where_n_is_too_small(live_server, page, artifacts_dir, make_user):
    admin = make_user("too-few-admin")
    admin.set_password(PASSWORD)
    admin.save()
    built = build_panel_study(admin=admin, name="toofew")
    study, rnd = built["study"], built["round"]
    few_version = built["versions"][2].name

    page.goto(f"{live_server.url}/dashboard/studies/{study.pk}/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", admin.username)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == f"{live_server.url}/dashboard/studies/{study.pk}/"
    page.screenshot(path=artifacts_dir / "study.png", full_page=True)

    heading = page.get_by_role("heading", name="Evaluation panel (16 items)")
    assert heading.is_visible()
    row = page.locator("table.panel-versions tr", has_text=few_version).first
    assert row.is_visible()
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == "1" and cells[2:] == ["too few (n=1)"] * 4, cells
    assert not any(re.fullmatch(r"[01]\.000", c) for c in cells)
    assert page.locator("svg.chart text", has_text="too few (n=1)").first.is_visible()

    round_row = page.locator("tr", has=page.locator(f'a[href="/dashboard/rounds/{rnd.pk}/"]'))
    assert round_row.get_by_text("too few (n=2)").is_visible()
    assert not re.search(r"\b[01]\.000\b", round_row.inner_text())

    with page.expect_navigation():
        round_row.get_by_role("link", name=str(rnd.number)).click()
    assert page.get_by_role("heading", name="Evaluation panel (16 items)").is_visible()
    assert page.locator("table.promotion").get_by_text(built["promotion"]["rule"], exact=True).is_visible()
    page.screenshot(path=artifacts_dir / "round.png", full_page=True)
    page.problems.assert_none()
