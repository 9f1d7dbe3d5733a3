"""The evaluation panel where people read it: the study page's curves and table (CIs, "too few", "—" with its
reason), the round page's panel record and promotion decision, the round report (page and JSON) and the API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.template.defaultfilters import floatformat
from rest_framework.test import APIClient

from annotation.api.auth import token_issue
from annotation.models import EvaluationPanel, PanelScore, Round, Study
from annotation.rounds.panel import panel_compare, panel_versions
from annotation.rounds.report import round_report_compute
from annotation.stats.paired import bootstrap_mean, paired_promotion_test
from annotation.studies.services import membership_add, study_create
from inference.models import ModelVersion

pytestmark = pytest.mark.django_db

ITEMS = 16
REWARD_RUN = 7
NO_READERS = "no simulated readers scored the panel"


def _f(values) -> list[float]:
    return [float(v) for v in values]


def build_panel_study(*, admin, name: str = "panelled") -> dict:
    """A study with a 16-item panel and versions base → r1 → r2 (r1 current): base and r1 scored on every item by
    the simulated readers, the realism function and reward run 7; r2 on one item only. Round 1 sampled base and
    produced r1; its metrics hold the panel record and the promotion decision as the evaluation writes them (the
    report carries the panel record too), and a reward AUROC skipped for too few items."""
    study = study_create(name=name, title=f"Study {name}", display_size=64)
    membership_add(study=study, user=admin, role="admin")
    base = ModelVersion.objects.create(name=f"{name}-base", base_path="/models/tiny")
    r1 = ModelVersion.objects.create(name=f"{name}-r1", base_path="/models/tiny", parent=base)
    r2 = ModelVersion.objects.create(name=f"{name}-r2", base_path="/models/tiny", parent=r1)
    panel = EvaluationPanel.objects.create(study=study, prompts=["PA chest radiograph"], count=ITEMS, seed=11,
                                           config={})
    rng = np.random.default_rng(3)
    item = rng.uniform(0.2, 0.6, ITEMS)  # per-item difficulty, shared by every version: the scores are paired
    for version, n, shift in ((base, ITEMS, 0.0), (r1, ITEMS, 0.15), (r2, 1, 0.3)):
        noise = rng.normal(0, 0.03, n)
        PanelScore.objects.create(panel=panel, model_version=version, scores={
            "preference": _f(np.clip(item[:n] + shift + noise, 0, 1)),
            "fooling": _f(np.clip(item[:n] * 0.5 + shift / 2 + noise, 0, 1)),
            "realism": _f(np.clip(0.3 + shift + noise, 0, 1)),
            "reward": {str(REWARD_RUN): _f(item[:n] * 2 - 1 + shift + noise)}})
    Study.objects.filter(pk=study.pk).update(current_version=r1)
    study.refresh_from_db()
    record = panel_compare(panel, base, r1)
    rewards = {v: np.asarray(panel.scores.get(model_version=v).scores["reward"][str(REWARD_RUN)]) for v in (base, r1)}
    test = paired_promotion_test(rewards[r1] - rewards[base], 0.05)
    rule = f"paired test on {ITEMS} panel items: p = {test['p_value']:.3g} (alpha 0.05)"
    promotion = {"parent": base.name, "version": r1.name, "samples": ITEMS, "reward_run": REWARD_RUN,
                 "reward_parent": float(rewards[base].mean()), "reward_child": float(rewards[r1].mean()),
                 "child_better_share": float((rewards[r1] > rewards[base]).mean()), **test, "rule": rule,
                 "passed": True, "promoted": True,
                 "reason": f"promoted: mean reward {rewards[r1].mean():.3f} vs parent {rewards[base].mean():.3f}, "
                           f"{rule}"}
    record["promotion_p_value"] = promotion["p_value"]
    report = {"study": study.name, "round": 1, "status": "done", "computed_at": "2026-01-01T00:00:00",
              "reader": {}, "rubric_scores": {}, "images": None, "panel": record}
    rnd = Round.objects.create(study=study, number=1, status="done", model_version=base, produced_version=r1,
                               metrics={"report": report, "panel": record, "promotion": promotion,
                                        "reward_auroc": None, "skipped": {"reward_auroc": "too few (n=2)"}})
    return {"study": study, "round": rnd, "panel": panel, "versions": (base, r1, r2), "record": record,
            "promotion": promotion}


@pytest.fixture
def world(make_user):
    admin, outsider = make_user("panel-admin"), make_user("outsider")
    built = build_panel_study(admin=admin)
    other = study_create(name="elsewhere", title="Elsewhere")
    membership_add(study=other, user=outsider, role="admin")
    return {**built, "admin": admin, "outsider": outsider}


def _section(page: str, start: str, end: str) -> str:
    return page[page.index(start):page.index(end, page.index(start))]


def _row(html: str, name: str) -> str:
    row = html[html.index(f"<th>{name}"):]
    return row[:row.index("</tr>")]


def _ci(stat: dict) -> str:
    return f"{floatformat(stat['mean'], 3)} <span class=\"ci\">[{floatformat(stat['ci_low'], 3)}, " \
           f"{floatformat(stat['ci_high'], 3)}]</span>"


def test_study_page_draws_every_score_per_version_with_cis_and_says_too_few(client, world):
    base, r1, r2 = world["versions"]
    client.force_login(world["admin"])
    page = client.get(f"/dashboard/studies/{world['study'].pk}/").content.decode()
    section = _section(page, "Evaluation panel (16 items)", "<h2>Rounds</h2>")
    assert section.count("<svg") == 4  # preference, fooling rate, realism, reward
    for title in ("Simulated preference, 95% CI", "Fooling rate (simulated readers), 95% CI",
                  "Realism function, 95% CI", f"Reward (latest reward model, run {REWARD_RUN}), 95% CI"):
        assert title in section
    assert section.count('class="marked"') == 4  # the current version is ringed on every chart
    assert "too few (n=1)" in section[:section.index("<table")]  # r2's point on the charts
    scores = PanelScore.objects.get(model_version=base).scores
    expected = {"preference": bootstrap_mean(scores["preference"]), "fooling_rate": bootstrap_mean(scores["fooling"]),
                "realism": bootstrap_mean(scores["realism"]),
                "reward": bootstrap_mean(scores["reward"][str(REWARD_RUN)])}
    row = _row(section, base.name)
    assert "<td>—</td><td>16</td>" in row  # no parent, 16 items
    for stat in expected.values():
        assert _ci(stat) in row
    current = _row(section, r1.name)
    assert "current" in current and f"<td>{base.name}</td><td>16</td>" in current
    assert section.count('<tr class="current">') == 1
    few = _row(section, r2.name)
    assert few.count("too few (n=1)") == 4 and f"<td>{r1.name}</td><td>1</td>" in few
    single = PanelScore.objects.get(model_version=r2).scores["preference"][0]
    assert floatformat(single, 3) not in few and "0.000" not in few and "1.000" not in few


def test_a_study_read_only_by_people_shows_a_dash_with_its_reason_and_no_panel_its_sentence(client, world):
    study = study_create(name="people", title="People")
    membership_add(study=study, user=world["admin"], role="admin")
    client.force_login(world["admin"])
    empty = client.get(f"/dashboard/studies/{study.pk}/").content.decode()
    assert "the study has no evaluation panel yet" in empty and "Evaluation panel (0 items)" in empty

    version = ModelVersion.objects.create(name="people-v0", base_path="/models/tiny")
    panel = EvaluationPanel.objects.create(study=study, prompts=["p"], count=ITEMS, seed=1, config={})
    PanelScore.objects.create(panel=panel, model_version=version,
                              scores={"reward": {"9": _f(np.linspace(-1, 1, ITEMS))}})
    response = client.get(f"/dashboard/studies/{study.pk}/")
    assert response.status_code == 200
    section = _section(response.content.decode(), "Evaluation panel (16 items)", "<h2>Rounds</h2>")
    assert section.count("<svg") == 1 and "Reward (latest reward model, run 9)" in section
    assert f"Simulated preference: not computed: {NO_READERS}" in section  # why that chart is missing
    row = _row(section, version.name)
    assert row.count(f'title="not computed: {NO_READERS} (a study read only by people)">—</span>') == 3
    assert _ci(bootstrap_mean(np.linspace(-1, 1, ITEMS))) in row


def test_round_page_and_report_show_the_panel_record_and_the_promotion_decision(client, world):
    record, promotion, rnd = world["record"], world["promotion"], world["round"]
    base, r1, _ = world["versions"]
    assert record["p_value"] is not None and record["p_value"] < 0.05 and record["effect_size"] > 0
    client.force_login(world["admin"])
    pages = {"round": client.get(f"/dashboard/rounds/{rnd.pk}/").content.decode(),
             "report": client.get(f"/dashboard/rounds/{rnd.pk}/report/?print=1").content.decode()}
    for name, page in pages.items():
        section = page[page.index("Evaluation panel (16 items)"):]
        assert _ci(record["parent"]["preference"]) in _row(section, "parent"), name
        assert base.name in _row(section, "parent") and r1.name in _row(section, "produced")
        for key in ("preference", "fooling_rate"):
            assert _ci(record["produced"][key]) in _row(section, "produced"), (name, key)
        assert _ci(record["preference_gain"]) in section
        assert f"{record['p_value']:.3g} <span class=\"ci\">n=16 pairs</span>" in section
        assert floatformat(record["effect_size"], 3) in section
        assert promotion["rule"] in section and promotion["reason"] in section
        assert f"{promotion['p_value']:.3g} <span class=\"ci\">n=16 pairs</span>" in section
        assert "0.0000" not in section  # small p-values keep their digits

    download = client.get(f"/dashboard/rounds/{rnd.pk}/report/?format=json")
    assert download.status_code == 200 and json.loads(download.content)["panel"] == record
    api = APIClient()
    api.force_login(world["admin"])
    assert api.get(f"/api/v1/rounds/{rnd.pk}/report/").json()["panel"] == record


def test_a_recomputed_report_stores_the_rounds_panel_record(world):
    rnd = world["round"]
    report = round_report_compute(round=rnd, with_images=False)
    rnd.refresh_from_db()
    assert report["panel"] == rnd.metrics["report"]["panel"] == world["record"]


def test_a_round_without_a_panel_says_why(client, world):
    rnd = Round.objects.create(study=world["study"], number=2, status="done",
                               metrics={"panel": None, "skipped": {"panel": "the round sampled from no model version"},
                                        "promotion": {"skipped": "the round produced no new version"}})
    client.force_login(world["admin"])
    page = client.get(f"/dashboard/rounds/{rnd.pk}/").content.decode()
    assert "No panel record: the round sampled from no model version." in page
    assert "the round produced no new version" in page

    base = world["versions"][0]
    unproduced = Round.objects.create(study=world["study"], number=3, status="done", model_version=base, metrics={
        "panel": panel_compare(world["panel"], base, None),
        "promotion": {"skipped": "the round produced no new version"}})
    section = client.get(f"/dashboard/rounds/{unproduced.pk}/").content.decode()
    section = section[section.index("Evaluation panel (16 items)"):]
    assert _ci(world["record"]["parent"]["preference"]) in _row(section, "parent")
    assert "the round produced no new version" in _row(section, "produced")
    gain = _row(section, "preference gain")
    assert 'title="the round produced no new version">—</span>' in gain
    assert "one-sided p" not in _row(section, "fooling-rate gain")  # nothing was compared


def test_api_returns_the_panel_to_those_who_see_the_study_and_refuses_the_rest(world):
    study = world["study"]
    url, detail = f"/api/v1/studies/{study.pk}/panel/", f"/api/v1/studies/{study.pk}/"
    admin = APIClient()
    admin.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=world['admin'], name='e', scope='export')[1]}")
    body = admin.get(url)
    assert body.status_code == 200
    data = body.json()
    assert data == json.loads(json.dumps(panel_versions(study)))
    assert data["items"] == ITEMS and data["reward_run"] == REWARD_RUN and "skipped" not in data
    assert [(v["version"], v["parent"], v["current"]) for v in data["versions"]] == [
        ("panelled-base", None, False), ("panelled-r1", "panelled-base", True), ("panelled-r2", "panelled-r1", False)]
    assert data["versions"][2]["preference"]["n"] == 1 and data["versions"][2]["preference"]["ci_low"] is None
    assert data["versions"][0]["reward"]["n"] == ITEMS and data["versions"][0]["reward"]["ci_low"] is not None

    outsider = APIClient()
    outsider.force_login(world["outsider"])
    outsider_token = APIClient()
    outsider_token.credentials(
        HTTP_AUTHORIZATION=f"Bearer {token_issue(user=world['outsider'], name='o', scope='admin')[1]}")
    reader = APIClient()
    reader.credentials(HTTP_AUTHORIZATION=f"Bearer {token_issue(user=world['admin'], name='r', scope='read')[1]}")
    for caller, expected in ((outsider, 404), (outsider_token, 404), (reader, 404), (APIClient(), 401)):
        response = caller.get(url)
        assert response.status_code == caller.get(detail).status_code == expected
        assert "versions" not in response.json()

    empty = study_create(name="unpanelled", title="Unpanelled")
    membership_add(study=empty, user=world["admin"], role="admin")
    skipped = admin.get(f"/api/v1/studies/{empty.pk}/panel/").json()
    assert skipped["versions"] == [] and "no evaluation panel yet" in skipped["skipped"]


def test_the_panel_endpoint_is_in_the_openapi_schema(client):
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = schema["paths"]["/api/v1/studies/{id}/panel/"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Panel")
    assert set(operation["responses"]) >= {"200", "404"}
    version = schema["components"]["schemas"]["PanelVersion"]["properties"]
    assert {"version", "parent", "current", "preference", "fooling_rate", "realism", "reward"} <= set(version)
    assert set(schema["components"]["schemas"]["PanelStat"]["properties"]) == {"mean", "ci_low", "ci_high", "n"}
