"""Reward-informed finetuning on fresh samples: bounded and group-relative weights, the fresh requests, and LoRA
on more than attention (continuing an attention-only parent)."""

import dataclasses

import numpy as np
import pytest
import torch

from inference.ml.generation import generate
from inference.ml.generation_config import GenerationConfig
from inference.ml.loading import PipelineSpec, load_pipeline
from inference.ml.phantoms import generate_phantoms
from training.ml.finetune import losses as D
from training.ml.finetune.config import LORA_TARGETS, FinetuneConfig
from training.ml.finetune.data import FinetuneData
from training.ml.finetune.fresh_samples import fresh_requests, fresh_scored
from training.ml.finetune.loop import run_finetune, setup_training

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from inference.ml.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "sd")


def tiny(**changes) -> FinetuneConfig:
    return dataclasses.replace(FinetuneConfig.tiny(), **changes)


def test_group_weights_compare_siblings_and_clip_bounds_them():
    rewards = [1.0, 2.0, 3.0, 10.0, 10.0, 50.0]
    groups = ["a", "a", "a", "b", "b", "c"]
    w = D.normalise_rewards(rewards, "group", groups=groups)
    assert w[:3].tolist() == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-4)  # within its prompt only
    assert w[3:].tolist() == [0.0, 0.0, 0.0]  # equal siblings, and a group of one, weigh nothing
    z = D.normalise_rewards([0.0] * 20 + [100.0], "standardise", clip=2.0)
    assert z.max() == 2.0 and z.min() >= -2.0
    with pytest.raises(ValueError, match="one group"):
        D.normalise_rewards(rewards, "group")


def test_fresh_requests_are_seeded_groups_on_the_given_prompts():
    prompts = ["p1", "p2", "p3", "p1"]
    a = fresh_requests(prompts, count=10, per_prompt=4, seed=7)
    assert a == fresh_requests(prompts, count=10, per_prompt=4, seed=7)
    assert a != fresh_requests(prompts, count=10, per_prompt=4, seed=8)
    assert len(a) == 10 and [r.index for r in a] == list(range(10))
    assert {r.prompt for r in a} == {"p1", "p2", "p3"}
    assert len({r.seed for r in a}) == 10
    many = fresh_requests(["only"], count=8, per_prompt=2, seed=1)  # fewer prompts than groups: one prompt, 8 seeds
    assert {r.prompt for r in many} == {"only"} and len({r.seed for r in many}) == 8
    with pytest.raises(ValueError, match="prompt"):
        fresh_requests([], count=4, per_prompt=2, seed=0)


def test_config_refuses_unknown_targets_and_fresh_samples_outside_reward_weighting():
    with pytest.raises(ValueError, match="lora_targets"):
        tiny(lora_targets="everything").validate()
    with pytest.raises(ValueError, match="fresh_samples"):
        tiny(objective="dpo", fresh_samples=8).validate()
    tiny(fresh_samples=8, lora_targets="attention+conv", reward_normalisation="group", reward_clip=2.0).validate()


def test_conv_lora_continues_an_attention_adapter_and_trains_on_scored_fresh_samples(base, tmp_path):
    phantoms = list(generate_phantoms(6, seed=5, size=64))
    real = [(p.image, p.report) for p in phantoms]
    parent = run_finetune(base, tiny(steps=2, val_every=0, objective="domain"), FinetuneData(real=real),
                          tmp_path / "parent", device=CPU)
    pipe = load_pipeline(PipelineSpec(base=str(base), lora=str(parent.lora_path)), CPU)
    gen = GenerationConfig.tiny()
    requests = fresh_requests([p.report for p in phantoms], count=8, per_prompt=4, seed=3)
    scored = fresh_scored(lambda rs: [im for _, im in generate(pipe, rs, gen, device=CPU)],
                          lambda ims, _: [float(im.mean()) for im in ims], requests)
    assert len(scored) == 8 and all(im.shape == (64, 64) for im, _, _ in scored)
    assert [r for _, _, r in scored] == [float(im.mean()) for im, _, _ in scored]

    cfg = tiny(steps=3, val_every=0, lora_targets="attention+conv", reward_normalisation="group", reward_clip=2.0)
    session = setup_training(base, cfg, CPU, init_lora=parent.lora_path)
    names = [n for n, p in session.models.peft_unet.named_parameters() if p.requires_grad]
    assert any(".conv1." in n for n in names) and any("time_emb_proj" in n for n in names)
    child = run_finetune(base, cfg, FinetuneData(real=real, synthetic=scored), tmp_path / "child", device=CPU,
                         init_lora=parent.lora_path)
    reloaded = load_pipeline(PipelineSpec(base=str(base), lora=str(child.lora_path)), CPU)
    out = [im for _, im in generate(reloaded, requests[:2], gen, device=CPU)]
    before = [im for _, im in generate(pipe, requests[:2], gen, device=CPU)]
    assert any(not np.array_equal(a, b) for a, b in zip(out, before, strict=True))  # the child loads and differs
    assert set(LORA_TARGETS["attention"]) < set(LORA_TARGETS["attention+conv"])
