"""A comparison round end to end through the shared Celery worker: two versions sample the same prompts and seeds, simulated readers
read them blinded with the same real images, and the report's MRMC analysis equals `reader_stats --mrmc` run on
the round's `export_dataset --format mrmc`."""

import io
import json
import math

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from annotation.models import Image, Round
from annotation.rounds.services import round_launch
from annotation.stats.mrmc.power import power
from tests.annotation.rounds.preset import TINY_ROUND, tiny_study
from tests.worker import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _close(a, b) -> bool:
    """Equal JSON values, numbers to 1e-9 relative (PostgreSQL's jsonb gives a huge float back as an int)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _finished(rnd, *, report: bool = False):
    rnd.refresh_from_db()
    if rnd.status in ("failed", "cancelled") or (rnd.status == "done" and (not report or "report" in rnd.metrics)):
        return rnd.status
    return None


@pytest.mark.slow
def test_a_comparison_round_reports_the_mrmc_analysis_its_export_gives_the_cli(live_worker, tmp_path, admin_client):
    study = tiny_study("compare", real_pool=12)
    first = round_launch(study=study, config=TINY_ROUND)
    assert wait_for(lambda: _finished(first), timeout=240, worker=live_worker) == "done", first.stage_error
    base, child = first.model_version, first.produced_version
    assert first.status == "done" and child is not None

    form = admin_client.get(f"/dashboard/studies/{study.pk}/").content.decode()
    assert f'<option value="{child.name}">' in form.split('name="compare"', 1)[1]
    launched = admin_client.post(f"/dashboard/studies/{study.pk}/launch/", {
        "compare": [child.name, base.name], "synthetic": "5", "real": "5", "advanced": '{"image_metrics": false}'})
    assert launched.status_code == 302, launched.content.decode()[:2000]
    rnd = Round.objects.get(study=study, number=first.number + 1)
    assert wait_for(lambda: _finished(rnd, report=True), timeout=240, worker=live_worker) == "done", rnd.stage_error
    assert rnd.reward_run is None and rnd.produced_version is None  # a comparison round does not train
    images = list(Image.objects.filter(round=rnd))
    synthetic = [i for i in images if i.source == "synthetic"]
    assert len([i for i in images if i.source == "real"]) == 5 and len(synthetic) == 10
    by_version = {v: sorted((i.prompt, i.seed) for i in synthetic if i.model_version == v) for v in (base, child)}
    assert len(by_version[base]) == 5 and by_version[base] == by_version[child]  # the same prompts and seeds

    mrmc = rnd.metrics["report"]["mrmc"]
    assert mrmc["reason"] is None, mrmc["reason"]
    report = mrmc["value"]
    names = {v.name: v.name.replace("-", "_") for v in (child, base)}  # "-" names the differences
    assert mrmc["versions"] == {names[child.name]: child.name, names[base.name]: base.name}
    assert set(report["treatments"]) == {names[child.name], names[base.name]}  # (jsonb keeps no key order)
    assert report["n"] == {"treatments": 2, "readers": 2, "cases": 10, "positive": 5, "negative": 5}
    # with 2 readers whose AUC differences happen to agree (the round's images vary a little between runs: the child
    # is trained on 2 CPU threads), MS(T*R) is 0 and the random-readers analysis is not computed, with its reason
    analysis = report["rrrc"] or report["frrc"]
    assert analysis is not None, report["skipped"]
    assert report["rrrc"] is not None or report["skipped"]["rrrc"].startswith("MS(T*R) is 0")
    assert list(analysis["differences"]) == [f"{names[child.name]}-{names[base.name]}"]  # in compare's order

    out = tmp_path / "round.csv"
    call_command("export_dataset", study=study.name, round=[rnd.number], format="mrmc", out=str(out),
                 include_simulated=True, usernames=True, stdout=io.StringIO())
    assert out.read_text().startswith("treatment,reader,case,truth,rating\n")
    printed = io.StringIO()
    call_command("reader_stats", str(out), "--mrmc", "--json", "--margin", str(study.equivalence_margin),
                 stdout=printed)
    assert _close(json.loads(printed.getvalue()), report)

    # the round report shows it, in the admin's order; the study page sizes the next study from it
    page = admin_client.get(f"/dashboard/rounds/{rnd.pk}/report/").content.decode()
    section = page.split("Readers in general (MRMC)", 1)[1]
    child_auc = report["treatments"][names[child.name]]["auc"]
    assert section.index(f"<th>{child.name}</th>") < section.index(f"<th>{base.name}</th>") and f"{child_auc:.3f}" in section
    rrrc = f"{report['rrrc']['p']:.4f}" if report["rrrc"] is not None else report["skipped"]["rrrc"]
    assert f"{child.name} − {base.name}" in section and rrrc in section
    planned = admin_client.get(f"/dashboard/studies/{study.pk}/", {"readers": 6, "cases": 300, "effect": 0.1})
    text = planned.content.decode()
    assert planned.status_code == 200 and "Readers in general: MRMC AUC per round" in text
    expected = power(report["var_components"], pilot_cases=10, readers=6, cases=300, effect=0.1)
    shown = f"{expected['rrrc']:.3f}" if expected["rrrc"] is not None else expected["skipped"]["rrrc"]
    assert f"round <a href=\"/dashboard/rounds/{rnd.pk}/report/\">{rnd.number}</a>" in text and shown in text
    refused = admin_client.get(f"/dashboard/studies/{study.pk}/", {"readers": 1})
    assert refused.status_code == 400 and "readers must lie between 2 and 1000, got 1." in refused.content.decode()


def test_a_comparison_round_is_refused_at_launch_with_the_study_versions(tmp_path):
    study = tiny_study("compare-bad")
    for config, message in (({"compare": ["tiny-sd", "nope"]}, "has no model version 'nope'; its versions:"),
                            ({"compare": ["tiny-sd"]}, "two or more different"),
                            ({"compare": ["a", "a"]}, "two or more different"),
                            ({"compare": ["a", "b"], "oversample": 2}, "oversample 1"),
                            ({"compare": "a,b"}, "list of model version names")):
        with pytest.raises(ValidationError, match=message):
            round_launch(study=study, config=config)
    assert not Round.objects.filter(study=study).exists()
    with pytest.raises(Exception, match="one round"):
        call_command("export_dataset", study=study.name, format="mrmc", out=str(tmp_path / "x.csv"))
