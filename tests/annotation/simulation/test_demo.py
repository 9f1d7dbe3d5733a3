"""The quick start's demo: the shipped 128-px tiny base adapted to the demo's phantoms, and a first round generated
from that adapted version at the base's own size, cleaned and waiting for the demo reader."""

import io

import pytest
from django.core.management import call_command

from annotation.models import Image, Round
from annotation.simulation.demo import demo_study_ensure
from training.models import TrainingRun

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_demo_round_samples_from_the_domain_adapted_model_and_waits_for_the_reader(client):
    study = demo_study_ensure(images=4)
    domain = TrainingRun.objects.get(kind="domain", owner=f"annotation.study:{study.pk}")
    assert domain.status == "done" and domain.progress["step"] == domain.progress["total"] == 40
    adapted = domain.produced_version
    assert adapted.parent.name == "tiny-demo" and adapted.lora_key
    assert domain.config["resolution"] == 128  # trained at the shipped base's own size
    rnd = Round.objects.get(study=study)
    assert rnd.status == "labeling" and rnd.model_version == adapted
    synthetic = Image.objects.filter(round=rnd, source="synthetic", model_version=adapted)
    assert synthetic.count() == 4 and {(i.width, i.height) for i in synthetic} == {(128, 128)}
    assert Image.objects.filter(round=rnd, source="real").count() == 4
    assert demo_study_ensure(images=4) == study and Round.objects.count() == 1  # idempotent
    out = io.StringIO()
    call_command("demo_setup", "--images", "4", stdout=out)  # what scripts/demo.sh runs: says what it does
    assert "Setting up the demo" in out.getvalue() and f"Demo study '{study.name}' ready" in out.getvalue()
    assert Round.objects.count() == 1
    assert TrainingRun.objects.filter(kind="domain").count() == 1
    assert client.login(username="reader", password="reader-demo-pw")
    home = client.get("/portal/")
    assert home.status_code == 200 and b"Demo: synthetic chest X-rays" in home.content
