"""A model version exported as a folder (`export_model`): a plain diffusers pipeline on the base with
`load_lora_weights(DIR)` reproduces the platform's raw samples (same scheduler, steps, CFG, prompt and seed) within
1e-4 on the CPU; the folder carries a model card; a base without an adapter and a non-empty folder are refused."""

import dataclasses
import io
import zipfile

import numpy as np
import pytest
import torch
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from inference.ml.phantoms import generate_phantoms
from training.ml.finetune.config import FinetuneConfig
from training.ml.finetune.data import FinetuneData
from training.ml.finetune.loop import run_finetune

pytestmark = pytest.mark.django_db
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def adapter(tiny_sd_path, tmp_path_factory):
    phantoms = list(generate_phantoms(6, seed=11, size=64))
    cfg = dataclasses.replace(FinetuneConfig.tiny(), objective="domain", steps=3, alpha=8.0, val_every=0)
    data = FinetuneData(real=[(p.image, p.report) for p in phantoms])
    result = run_finetune(tiny_sd_path, cfg, data, tmp_path_factory.mktemp("adapter"), device=CPU)
    return result.lora_path, cfg


def test_an_exported_version_loads_in_plain_diffusers_and_reproduces_the_raw_samples(
        tiny_sd_path, adapter, make_study, tmp_path, client, add_admin):
    from diffusers import StableDiffusionPipeline

    from inference.jobs import version_pipeline
    from inference.ml.generation_config import GenerationConfig
    from inference.models import ModelVersion

    lora_path, cfg = adapter
    base = ModelVersion.objects.create(name="tiny-base", base_path=str(tiny_sd_path))
    key = default_storage.save("loras/test/pytorch_lora_weights.safetensors", ContentFile(lora_path.read_bytes()))
    version = ModelVersion.objects.create(name="tiny-base+ft1", base_path=str(tiny_sd_path), lora_key=key,
                                          parent=base, produced_by="finetune:1", config=cfg.as_dict())
    study = make_study("export-model", current_version=version)
    out = tmp_path / "exported"
    call_command("export_model", "--study", study.name, "--out", str(out), stdout=io.StringIO())
    assert (out / "pytorch_lora_weights.safetensors").read_bytes() == lora_path.read_bytes()
    card = (out / "README.md").read_text()
    assert "tiny-base+ft1" in card and "load_lora_weights" in card and "Apache-2.0" in card and "tiny-base" in card

    gen = GenerationConfig.tiny()
    prompt, seed = "PA chest radiograph. Heart size is normal.", 1234

    def sample(pipe):
        return pipe(prompt=[prompt], num_inference_steps=gen.steps, guidance_scale=gen.guidance_scale,
                    height=gen.height, width=gen.width, generator=[torch.Generator("cpu").manual_seed(seed)],
                    output_type="np").images[0]

    platform = sample(version_pipeline(version, scheduler=None, device=CPU))
    plain = StableDiffusionPipeline.from_pretrained(str(tiny_sd_path), safety_checker=None,
                                                    requires_safety_checker=False)
    plain.load_lora_weights(str(out))
    exported = sample(plain)
    assert np.abs(platform - exported).max() <= 1e-4
    plain.unload_lora_weights()
    assert np.abs(sample(plain) - exported).max() > 1e-4  # the adapter is what makes the samples

    admin = add_admin(study, "model-admin")
    client.force_login(admin)
    download = client.get(f"/api/v1/model-versions/{version.pk}/download/")  # what the dashboard links to
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert archive.read("pytorch_lora_weights.safetensors") == lora_path.read_bytes()
        assert "tiny-base+ft1" in archive.read("README.md").decode()
    assert client.get(f"/api/v1/model-versions/{base.pk}/download/").status_code == 409

    with pytest.raises(CommandError, match="not an empty folder"):
        call_command("export_model", "--study", study.name, "--out", str(out), stdout=io.StringIO())
    with pytest.raises(CommandError, match="is a base without a LoRA adapter"):
        call_command("export_model", "--study", study.name, "--version", "tiny-base", "--out", str(tmp_path / "b"),
                     stdout=io.StringIO())
    with pytest.raises(CommandError, match="has no model version 'nope'"):
        call_command("export_model", "--study", study.name, "--version", "nope", "--out", str(tmp_path / "c"),
                     stdout=io.StringIO())
