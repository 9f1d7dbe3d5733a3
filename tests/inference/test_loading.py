"""The one pipeline loader: round trip, LoRA on top and off again, seeds, and the documented errors."""

import numpy as np
import pytest
import torch

from inference.ml.errors import WeightsError
from inference.ml.generation import Request, generate
from inference.ml.generation_config import GenerationConfig
from inference.ml.loading import PipelineCache, PipelineSpec, load_pipeline

CFG = GenerationConfig(steps=4, height=64, width=64, batch_size=4)


def images(pipe, requests, cpu):
    return {r.seed: img for r, img in generate(pipe, requests, CFG, device=cpu)}


REQS = [Request(0, "PA chest radiograph. No acute abnormality.", 11),
        Request(1, "AP portable chest radiograph. Cardiomegaly.", 12)]


def test_save_load_round_trip_gives_identical_output(tiny_sd_path, cpu, tmp_path):
    pipe = load_pipeline(PipelineSpec(base=str(tiny_sd_path)), cpu)
    before = images(pipe, REQS, cpu)
    pipe.save_pretrained(tmp_path / "copy")
    after = images(load_pipeline(PipelineSpec(base=str(tmp_path / "copy")), cpu), REQS, cpu)
    for seed in before:
        assert before[seed].shape == (64, 64) and before[seed].dtype == np.uint8
        np.testing.assert_array_equal(before[seed], after[seed])


def test_same_seed_same_image_whatever_the_batch(tiny_sd_path, cpu):
    pipe = load_pipeline(PipelineSpec(base=str(tiny_sd_path)), cpu)
    together = images(pipe, REQS, cpu)
    alone = images(pipe, REQS[1:], cpu)
    np.testing.assert_allclose(together[12].astype(int), alone[12].astype(int), atol=1)
    assert not np.array_equal(together[11], together[12])


def _save_random_lora(base, cpu, out):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = load_pipeline(PipelineSpec(base=str(base)), cpu)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # trained-looking adapter: B is zero at init
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def test_lora_changes_output_and_disabling_restores_the_base(tiny_sd_path, cpu, tmp_path):
    lora = _save_random_lora(tiny_sd_path, cpu, tmp_path / "lora")
    base = images(load_pipeline(PipelineSpec(base=str(tiny_sd_path)), cpu), REQS, cpu)
    pipe = load_pipeline(PipelineSpec(base=str(tiny_sd_path), lora=str(lora)), cpu)
    adapted = images(pipe, REQS, cpu)
    assert any(np.abs(adapted[s].astype(int) - base[s].astype(int)).mean() > 1 for s in base)
    pipe.disable_lora()
    restored = images(pipe, REQS, cpu)
    for seed in base:
        np.testing.assert_array_equal(restored[seed], base[seed])


def test_bad_weights_paths_give_the_documented_error(tiny_sd_path, cpu, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_pipeline(PipelineSpec(base=str(tmp_path / "missing")), cpu)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a diffusers folder"):
        load_pipeline(PipelineSpec(base=str(tmp_path / "empty")), cpu)
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not weights")
    with pytest.raises(WeightsError, match="single-file checkpoint"):
        load_pipeline(PipelineSpec(base=str(ckpt)), cpu)
    bad_lora = tmp_path / "lora.safetensors"
    bad_lora.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="Could not load the LoRA adapter"):
        load_pipeline(PipelineSpec(base=str(tiny_sd_path), lora=str(bad_lora)), cpu)
    with pytest.raises(WeightsError, match="LoRA adapter not found"):
        load_pipeline(PipelineSpec(base=str(tiny_sd_path), lora=str(tmp_path / "nope.safetensors")), cpu)
    with pytest.raises(WeightsError, match="Unknown scheduler"):
        load_pipeline(PipelineSpec(base=str(tiny_sd_path), scheduler="NoSuchScheduler"), cpu)


def test_cache_loads_each_version_once(tiny_sd_path, cpu):
    cache = PipelineCache(size=1)
    spec = PipelineSpec(base=str(tiny_sd_path))
    first = cache.get(("v", 1), spec, cpu)
    assert cache.get(("v", 1), spec, cpu) is first and cache.loads == 1
    cache.get(("v", 2), spec, cpu)
    cache.get(("v", 1), spec, cpu)
    assert cache.loads == 3  # size 1: the second version evicted the first


def test_scheduler_can_be_swapped(tiny_sd_path, cpu):
    pipe = load_pipeline(PipelineSpec(base=str(tiny_sd_path), scheduler="DPMSolverMultistepScheduler"), cpu)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
