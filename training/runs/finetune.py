"""What the GPU worker runs for a finetune job (domain adaptation, reward-weighted, DPO): data from the frozen
snapshot, checkpoints mirrored to storage so any worker can resume, and a new ModelVersion at the end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage

from inference.jobs import version_pipeline
from inference.ml.devices import pick_device
from inference.ml.generation import generate
from inference.services import generation_config_default, model_version_register
from inference.storage import image_load, local_copy
from training.ml.finetune.checkpoints import list_checkpoints
from training.ml.finetune.config import FinetuneConfig
from training.ml.finetune.fresh_samples import fresh_requests, fresh_scored
from training.ml.finetune.loop import run_finetune
from training.ml.reward.model import reward
from training.models import RunKind, TrainingRun
from training.runs.reward import reward_model_load
from training.runs.storage import Heartbeat, Progress, download_dir, snapshot_load, upload_dir, work_dir

OBJECTIVE = {RunKind.DOMAIN: "domain", RunKind.FINETUNE: "reward_weighted", RunKind.DPO: "dpo"}


def _checkpoint_prefix(run: TrainingRun) -> str:
    return f"runs/{run.pk}/checkpoints"


def restore_latest_checkpoint(run: TrainingRun, out_dir: Path) -> str | None:
    """Copy the newest checkpoint in storage into a fresh local folder (a new worker resuming a run)."""
    if list_checkpoints(out_dir):
        return None
    prefix = _checkpoint_prefix(run)
    if not default_storage.exists(prefix):
        return None
    folders, _ = default_storage.listdir(prefix)
    steps = sorted(int(f.split("-")[-1]) for f in folders if f.startswith("checkpoint-") and f[11:].isdigit())
    for step in reversed(steps):
        name = f"checkpoint-{step}"
        _, files = default_storage.listdir(f"{prefix}/{name}")
        if "state.json" in files:
            download_dir(f"{prefix}/{name}", files, out_dir / name)
            return name
    return None


class CheckpointMirror:
    """After each step: upload checkpoints the loop wrote since the last call, and prune old ones from storage."""

    def __init__(self, run: TrainingRun, out_dir: Path, keep_last: int) -> None:
        self.run, self.out_dir, self.keep_last = run, out_dir, keep_last
        self.uploaded = {p.name for p in list_checkpoints(out_dir)}

    def __call__(self) -> None:
        local = list_checkpoints(self.out_dir)
        for path in local:
            if path.name not in self.uploaded:
                upload_dir(path, f"{_checkpoint_prefix(self.run)}/{path.name}")
                self.uploaded.add(path.name)
        keep = {p.name for p in local[-self.keep_last:]}
        for name in sorted(self.uploaded - keep):
            prefix = f"{_checkpoint_prefix(self.run)}/{name}"
            if default_storage.exists(prefix):
                for file in default_storage.listdir(prefix)[1]:
                    default_storage.delete(f"{prefix}/{file}")
            self.uploaded.discard(name)


def fresh_samples_scored(run: TrainingRun, cfg, prompts: list[str], model, device) -> list:
    """The parent's fresh samples on the labelled images' prompts, scored by the round's reward model."""

    parent = run.base_version
    gen = replace(generation_config_default(parent), images_per_prompt=1, prompt_policy=cfg.prompt_policy)
    pipe = version_pipeline(parent, scheduler=gen.scheduler, device=device)

    beat = Heartbeat(run)

    def sample(requests):
        return [image for _, image in generate(pipe, requests, gen, device=device, on_progress=beat)]

    def score(images, texts):
        return reward(model, images, texts).tolist()

    requests = fresh_requests(prompts, count=cfg.fresh_samples, per_prompt=cfg.fresh_per_prompt, seed=cfg.seed)
    return fresh_scored(sample, score, requests)


def finetune_data(run: TrainingRun, device, cfg) -> dict:
    """Real (image, report) pairs, synthetic images with rewards from the run's reward model, preference pairs."""
    snapshot = snapshot_load(run)
    items = snapshot.items
    real = [(image_load(i.key), i.prompt) for i in items if i.source == "real"]
    data: dict = {"real": real}
    if run.kind == RunKind.FINETUNE:

        if run.reward_run is None:
            raise ValueError("A reward-weighted finetune needs its reward run.")
        model = reward_model_load(run.reward_run, device)
        synth = [(image_load(i.key), i.prompt) for i in items if i.source == "synthetic"]
        if cfg.fresh_samples:  # on the labelled synthetic images' prompts (the reports, if none was labelled)
            prompts = [p for _, p in synth] or [p for _, p in real]
            data["synthetic"] = fresh_samples_scored(run, cfg, prompts, model, device)
        else:
            scores = reward(model, [img for img, _ in synth], [p for _, p in synth]).tolist() if synth else []
            data["synthetic"] = [(img, prompt, float(r)) for (img, prompt), r in zip(synth, scores, strict=True)]
    elif run.kind == RunKind.DPO:
        data["pairs"] = [(image_load(p.chosen_key), image_load(p.rejected_key), p.prompt) for p in snapshot.pairs]
    return data


def finetune_run_execute(run: TrainingRun) -> None:
    if run.base_version is None:
        raise ValueError("A finetune run needs the model version it starts from.")
    cfg = FinetuneConfig.from_dict({**run.config, "objective": OBJECTIVE[run.kind]})
    device = pick_device(settings.CXR_DEVICE)
    out_dir = work_dir(run) / "finetune"
    out_dir.mkdir(parents=True, exist_ok=True)

    restore_latest_checkpoint(run, out_dir)
    local = list_checkpoints(out_dir)
    resumed = local[-1].name if local else None  # from storage (another worker) or this worker's own copy
    if resumed:
        TrainingRun.objects.filter(pk=run.pk).update(progress={**run.progress, "resumed_from": resumed})
    mirror = CheckpointMirror(run, out_dir, cfg.keep_last)
    progress = Progress(run, cfg.steps)

    def on_progress(step: int, total: int, loss: float, extra: dict) -> None:
        mirror()
        progress(step, loss)

    parent = run.base_version
    init = local_copy(parent.lora_key) if parent.lora_key else None
    result = run_finetune(parent.base_path, cfg, finetune_data(run, device, cfg), out_dir, device=device, resume=True,
                          on_progress=on_progress, init_lora=init)
    progress.flush(result.steps)
    metrics = {"steps": result.steps, "resumed_from": resumed,
               "final_loss": result.losses[-1] if result.losses else None,
               "val_losses": [list(v) for v in result.val_losses], "stopped_early": result.stopped_early,
               "best_step": result.best_step}
    if result.best_step == 0 and cfg.restore_best:
        # The held-out loss was lowest before any update: the adapter written is the parent's. That is no new
        # model, so no version is registered (and nothing can be promoted as one).
        metrics["no_change"] = ("best step 0: no change (the held-out loss never fell below the parent's, so the "
                                "parent's adapter was kept)")
        TrainingRun.objects.filter(pk=run.pk).update(metrics=metrics)
        return
    version = model_version_register(
        name=f"{parent.name}+{run.kind}{run.pk}", parent=parent, lora_file=result.lora_path,
        produced_by=f"training.run:{run.pk}", config=cfg.as_dict(),
    )
    TrainingRun.objects.filter(pk=run.pk).update(artifact_key=version.lora_key, produced_version=version,
                                                 metrics=metrics)
