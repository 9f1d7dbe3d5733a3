"""LoRA finetuning on a tiny random SD, on CPU: objectives, the loop, checkpoints and exact resumption."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inference.ml.phantoms import generate_phantoms
from training.ml.finetune import losses as D
from training.ml.finetune.checkpoints import ADAPTER_FILE, list_checkpoints, load_adapter_state
from training.ml.finetune.config import FinetuneConfig
from training.ml.finetune.data import Batch, BatchSampler, FinetuneData
from training.ml.finetune.loop import compute_loss, run_finetune, setup_training, train_step

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from inference.ml.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "sd")


@pytest.fixture(scope="module")
def phantoms():
    return list(generate_phantoms(10, seed=3, size=64))


@pytest.fixture(scope="module")
def data(phantoms):
    real = [(p.image, p.report) for p in phantoms[:8]]
    synthetic = [(p.image, p.report, float(i % 4)) for i, p in enumerate(phantoms)]
    pairs = [(phantoms[i].image, phantoms[i + 1].image, phantoms[i].report) for i in range(4)]
    return FinetuneData(real=real, synthetic=synthetic, pairs=pairs)


def tiny(**changes) -> FinetuneConfig:
    return dataclasses.replace(FinetuneConfig.tiny(), **changes)


def lora_grads(session) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in session.params if p.grad is not None])


# --- config and pure pieces ---------------------------------------------------------------------------------------


def test_config_round_trips_and_rejects_unknown_settings():
    cfg = FinetuneConfig.tiny()
    cfg.validate()
    assert FinetuneConfig.from_dict(json.loads(json.dumps(cfg.as_dict()))) == cfg
    assert all(f.metadata.get("help") for f in dataclasses.fields(FinetuneConfig))
    with pytest.raises(ValueError, match="Unknown"):
        FinetuneConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="objective"):
        tiny(objective="ppo").validate()


def test_reward_weighted_loss_formula_and_zero_case():
    real, synth, r = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0]), torch.tensor([0.5, 1.0])
    assert D.reward_weighted_loss(real, synth, r, 0.3).item() == pytest.approx(0.3 * 2.0 + (1.0 + 4.0) / 2)
    assert D.reward_weighted_loss(real, synth, torch.zeros(2), 0.0).item() == 0.0


def test_reward_normalisation():
    r = [0.0, 1.0, 3.0]
    assert D.normalise_rewards(r, "none").tolist() == r
    assert D.normalise_rewards(r, "minmax").tolist() == pytest.approx([0.0, 1 / 3, 1.0])
    z = D.normalise_rewards(r, "standardise")
    assert z.mean() == pytest.approx(0.0) and z.std() == pytest.approx(1.0)
    assert D.normalise_rewards([2.0, 2.0], "minmax").tolist() == [1.0, 1.0]
    w = D.normalise_rewards(r, "exponential")
    assert w.mean() == pytest.approx(1.0) and (w > 0).all() and w[2] / w[1] == pytest.approx(math.exp(z[2] - z[1]))
    assert D.normalise_rewards([2.0, 2.0], "exponential").tolist() == [1.0, 1.0]


def test_dpo_loss_is_log2_when_model_equals_reference():
    w, l_ = torch.tensor([0.3, 0.9]), torch.tensor([0.5, 0.1])
    assert D.dpo_loss(w, l_, w, l_, 2500.0).item() == pytest.approx(math.log(2))
    better = D.dpo_loss(w - 0.01, l_, w, l_, 50.0)  # the model denoises the chosen images better than the ref
    assert better.item() < math.log(2)


def test_data_order_is_seeded_resumable_and_split_across_processes(data):
    cfg = tiny(objective="domain", batch_size=3)
    one = BatchSampler(cfg, data, np.zeros(0), process=0, processes=1)
    seen = [tuple(b.real_prompts) for b in (one.next_batch() for _ in range(4))]
    again = BatchSampler(cfg, data, np.zeros(0), process=0, processes=1)
    again.cursors = {"real": 6, "synthetic": 0, "pairs": 0}  # resumed after two batches
    assert [tuple(b.real_prompts) for b in (again.next_batch() for _ in range(2))] == seen[2:]
    first_epoch = one.orders["real"].take(0, 8)
    assert sorted(first_epoch) == list(range(8))  # every image once per epoch
    ranks = [BatchSampler(cfg, data, np.zeros(0), process=p, processes=2) for p in (0, 1)]
    assert ranks[0].orders["real"].take(0, 6) == one.orders["real"].take(0, 6)
    assert ranks[0]._indices("real", 3) + ranks[1]._indices("real", 3) == first_epoch[:6]


def test_encode_images_accepts_uint8_and_float(base, phantoms):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(base / "vae")
    images = np.stack([p.image for p in phantoms[:2]])
    latents = D.encode_images(vae, images, CPU, torch.float32)
    assert latents.shape == (2, 4, 8, 8)
    as_float = D.encode_images(vae, images.astype(np.float32) / 255.0, CPU, torch.float32)
    torch.testing.assert_close(latents, as_float)


# --- objectives on the real model ---------------------------------------------------------------------------------


def test_loss_decreases_on_a_fixed_batch(base, phantoms):
    """The loop's own step (accumulate, backward, clip, AdamW) on one batch with fixed noise: the loss falls."""
    session = setup_training(base, tiny(objective="domain", lr=5e-3), CPU)
    batch = Batch(real=D.prepare_images([p.image for p in phantoms[:2]], 64),
                  real_prompts=[p.report for p in phantoms[:2]])
    losses = [train_step(session, [batch], step=0)[0] for _ in range(12)]  # step=0: the same noise every time
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05
    assert sum(b < a for a, b in zip(losses, losses[1:], strict=False)) >= 9


def test_training_encodes_long_reports_with_the_study_policy(base, phantoms):
    """The same encoding as sampling: 'chunks' reads every 75-token window of a long report (the loss differs from
    the truncated one only because the tail is read); a report within 75 tokens gives the same loss either way."""
    long_report = " ".join(p.report for p in phantoms[:6])
    images = D.prepare_images([p.image for p in phantoms[:2]], 64)
    losses = {}
    for policy in ("truncate", "chunks"):
        session = setup_training(base, tiny(objective="domain", prompt_policy=policy), CPU)
        for name, prompts in (("long", [long_report] * 2), ("short", [p.report for p in phantoms[:2]])):
            loss, _ = compute_loss(session.models, Batch(real=images, real_prompts=prompts), session.cfg,
                                   generator=torch.Generator().manual_seed(0))
            losses[policy, name] = float(loss)
    assert losses["truncate", "short"] == pytest.approx(losses["chunks", "short"], abs=1e-6)
    assert losses["truncate", "long"] != pytest.approx(losses["chunks", "long"], abs=1e-6)
    with pytest.raises(ValueError, match="prompt_policy"):
        tiny(prompt_policy="summarise").validate()


@pytest.fixture(scope="module")
def session(base):
    """A fresh adapter on the tiny base, for calling the pure loss directly."""
    return setup_training(base, tiny(objective="dpo"), CPU)


def test_dpo_identical_pairs_give_log2_and_no_gradient(session, phantoms):
    session.optimizer.zero_grad()
    same = D.prepare_images([p.image for p in phantoms[:2]], 64)
    prompts = [p.report for p in phantoms[:2]]
    loss, metrics = compute_loss(session.models, Batch(chosen=same, rejected=same, pair_prompts=prompts),
                                 session.cfg, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert lora_grads(session).abs().max().item() < 1e-6
    assert all(p.requires_grad for p in session.params)  # the reference pass switched the adapter back on
    # Distinct pairs: still log 2 at init (LoRA up-weights are zero, so model = reference), but a real gradient.
    session.optimizer.zero_grad()
    other = D.prepare_images([p.image for p in phantoms[2:4]], 64)
    loss, _ = compute_loss(session.models, Batch(chosen=same, rejected=other, pair_prompts=prompts), session.cfg,
                           generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert lora_grads(session).abs().max().item() > 1e-6


def test_reward_weighted_zero_rewards_and_beta_zero_give_zero_loss(session, phantoms):
    cfg = tiny(objective="reward_weighted", beta=0.0)
    assert cfg.real_synthetic_split() == (0, 2)
    batch = Batch(synthetic=D.prepare_images([p.image for p in phantoms[:2]], 64),
                  synthetic_prompts=[p.report for p in phantoms[:2]], rewards=torch.zeros(2))
    loss, metrics = compute_loss(session.models, batch, cfg, generator=torch.Generator().manual_seed(0))
    assert loss.item() == 0.0 and metrics["synthetic_loss"].item() > 0


# --- the loop ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(base, data, tmp_path_factory):
    """A short domain-adaptation run; alpha != rank so the saved adapter must carry its scaling."""
    cfg = tiny(objective="domain", steps=3, alpha=8.0, val_every=0)
    out = tmp_path_factory.mktemp("trained")
    return run_finetune(base, cfg, data, out, device=CPU, keep_pipeline=True), out


def test_only_lora_weights_change(base, trained):
    from diffusers import StableDiffusionPipeline

    result, _ = trained
    before = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False)
    unet = result.pipeline.unet.state_dict()
    lora = {k for k in unet if ".lora_" in k}
    assert lora and all(torch.equal(before.unet.state_dict()[k.replace(".base_layer", "")], v)
                        for k, v in unet.items() if k not in lora)
    assert any(unet[k].abs().sum() > 0 for k in lora if "lora_B" in k)  # up-weights start at zero
    for name in ("vae", "text_encoder"):
        after = getattr(result.pipeline, name).state_dict()
        assert all(torch.equal(v, after[k]) for k, v in getattr(before, name).state_dict().items())


def test_saved_adapter_loads_with_the_worker_loader_and_reproduces_outputs(base, trained):
    from inference.ml.generation import generate, plan_requests
    from inference.ml.generation_config import GenerationConfig
    from inference.ml.loading import PipelineSpec, load_pipeline

    result, out = trained
    assert result.lora_path == out / ADAPTER_FILE and result.steps == 3 and len(result.losses) == 3
    loaded = load_pipeline(PipelineSpec(base=str(base), lora=str(out)), CPU)
    cfg = dataclasses.replace(GenerationConfig.tiny(), steps=3)
    requests = plan_requests(prompts=[], count=2, images_per_prompt=1, seed=5)
    mine = [img for _, img in generate(result.pipeline, requests, cfg, device=CPU)]
    theirs = [img for _, img in generate(loaded, requests, cfg, device=CPU)]
    plain = [img for _, img in generate(load_pipeline(PipelineSpec(base=str(base)), CPU), requests, cfg, device=CPU)]
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(mine, plain, strict=True))  # the adapter does something


class Interrupted(Exception):
    pass


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(base, data, tmp_path):
    cfg = tiny(objective="reward_weighted", reward_normalisation="minmax", steps=3, grad_accum=2,
               checkpoint_every=2, keep_last=1, val_every=1, early_stopping_patience=3, restore_best=False)
    full = run_finetune(base, cfg, data, tmp_path / "full", device=CPU)

    def crash_after_2(step, total, loss, extra):
        assert total == 3 and math.isfinite(loss) and "lr" in extra and "val_loss" in extra
        if step == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_finetune(base, cfg, data, tmp_path / "cut", device=CPU, on_progress=crash_after_2)
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    resumed = run_finetune(base, cfg, data, tmp_path / "cut", device=CPU, resume=True)

    assert resumed.losses == full.losses and resumed.val_losses == full.val_losses
    a, b = load_file(str(full.lora_path)), load_file(str(resumed.lora_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Pruning kept the last one; every checkpoint holds the full state and its config.
    [last] = list_checkpoints(tmp_path / "full")
    assert last.name == "checkpoint-3"
    assert {p.name for p in last.iterdir()} >= {ADAPTER_FILE, "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    for path in (last, tmp_path / "cut" / "checkpoint-3"):
        state = json.loads((path / "state.json").read_text())
        assert state["config"] == cfg.as_dict() and state["step"] == 3 and len(state["losses"]) == 3
        assert state["data_position"]["synthetic"] == 3 * 2 * 1  # steps × micro-batches × synthetic per batch

    # A different recipe must not silently continue someone else's run.
    with pytest.raises(ValueError, match="other settings"):
        run_finetune(base, dataclasses.replace(cfg, lr=1e-2), data, tmp_path / "full", device=CPU)


def test_early_stopping_on_held_out_real_loss_keeps_the_best_adapter(base, data, tmp_path):
    cfg = tiny(objective="reward_weighted", steps=10, val_every=1, early_stopping_patience=2,
               early_stopping_min_delta=1e9)  # nothing counts as an improvement on the step-0 baseline
    result = run_finetune(base, cfg, data, tmp_path, device=CPU)
    assert result.stopped_early and result.steps == 2 and result.best_step == 0
    assert [s for s, _ in result.val_losses] == [0, 1, 2]
    ups = [v for k, v in load_adapter_state(result.lora_path).items() if "lora_B" in k]
    assert ups and all(torch.count_nonzero(v) == 0 for v in ups)  # the base model's (zero) update
    # Running the finished job again trains nothing more.
    again = run_finetune(base, cfg, data, tmp_path, device=CPU)
    assert again.steps == 2 and again.losses == result.losses
    shutil.rmtree(tmp_path)


def test_dpo_run_holds_out_all_real_images_for_validation(base, data, tmp_path):
    seen = []
    cfg = tiny(objective="dpo", steps=2, val_every=1, val_max_images=3)
    result = run_finetune(base, cfg, data, tmp_path, device=CPU, on_progress=lambda *a: seen.append(a[3]))
    assert result.steps == 2 and np.isfinite(result.losses).all()
    assert [s for s, _ in result.val_losses] == [0, 1, 2]
    assert {"implicit_accuracy", "model_loss", "ref_loss", "val_loss"} <= set(seen[-1])
    state = json.loads((tmp_path / "checkpoint-2" / "state.json").read_text())
    assert state["data_sizes"]["val_real"] == 3 and state["data_position"]["pairs"] == 2 * 2
