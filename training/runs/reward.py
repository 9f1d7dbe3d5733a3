"""What the GPU worker runs for a reward run: the model trained on the frozen feedback snapshot, stored with its
config and held-out metrics; and loading a finished run's model (worker-local copy cached)."""

from __future__ import annotations

import numpy as np
import torch
from django.conf import settings

from inference.ml.devices import pick_device
from inference.storage import image_load
from training.ml.reward.check import cross_fit
from training.ml.reward.config import RewardConfig
from training.ml.reward.data import FeedbackItem
from training.ml.reward.model import load_reward_model, predict, reward, save_reward_model
from training.ml.reward.train import train_reward_model
from training.models import RunKind, RunStatus, TrainingRun
from training.runs.storage import (
    Heartbeat,
    Progress,
    SnapshotError,
    download_dir,
    snapshot_load,
    upload_dir,
    work_dir,
)

REWARD_FILES = ["model.safetensors", "config.json", "metrics.json"]


def reward_run_execute(run: TrainingRun) -> None:
    cfg = RewardConfig.from_dict(run.config)
    items = [FeedbackItem.from_snapshot(item, image_load(item.key)) for item in snapshot_load(run).items
             if item.labelled]
    if len(items) < 4:
        raise SnapshotError(f"Too little feedback to train a reward model ({len(items)} labelled images).")
    device = pick_device(settings.CXR_DEVICE)
    progress = Progress(run, cfg.steps)
    model, metrics = train_reward_model(items, cfg, device=device, on_progress=progress)
    progress.flush(cfg.steps)
    if cfg.check_folds:
        metrics["check"] = _cross_fit(run, cfg, items, device)
    out = save_reward_model(model, cfg, work_dir(run) / "reward", metrics)
    prefix = upload_dir(out, f"runs/{run.pk}/reward")
    TrainingRun.objects.filter(pk=run.pk).update(artifact_key=prefix, metrics=metrics)


def _cross_fit(run: TrainingRun, cfg, items: list, device) -> dict:
    """The check before use (`training.ml.reward.check`): fold models trained, stored beside the main model (the
    promotion judge), and the out-of-fold ranking test."""

    beat = Heartbeat(run)
    models, configs, check = cross_fit(
        items, cfg, train=lambda subset, fold_cfg: train_reward_model(subset, fold_cfg, device=device,
                                                                      on_progress=beat)[0],
        score=lambda model, images, prompts: reward(model, images, prompts).tolist(),
        synthetic=lambda item: not item.is_real)
    check["fold_keys"] = [
        upload_dir(save_reward_model(model, fold_cfg, work_dir(run) / f"reward-fold{k}"), f"runs/{run.pk}/reward-fold{k}")
        for k, (model, fold_cfg) in enumerate(zip(models, configs, strict=True))]
    return check


def reward_model_load(run: TrainingRun, device):
    """The reward model a finished reward run produced, loaded on `device` (worker-local copy cached)."""
    if run.kind != RunKind.REWARD or run.status != RunStatus.DONE:
        raise ValueError(f"Run {run.pk} is not a finished reward run.")
    local = download_dir(run.artifact_key, REWARD_FILES, work_dir(run) / "reward-copy")
    return load_reward_model(local, device)


def reward_fold_models_load(run: TrainingRun, device) -> list:
    """The cross-fitted fold models of a finished reward run (the promotion judge); [] when it ran no check."""
    keys = ((run.metrics or {}).get("check") or {}).get("fold_keys") or []
    return [load_reward_model(download_dir(key, REWARD_FILES[:2], work_dir(run) / f"reward-fold{k}-copy"), device)
            for k, key in enumerate(keys)]


class RewardScorer:
    """A finished reward run's model (or its cross-fitted fold models, the promotion judge), loaded once on the
    worker, scoring images for the layers above: they never touch the model itself."""

    def __init__(self, models: list) -> None:
        self.models = models

    def __bool__(self) -> bool:
        return bool(self.models)

    def scores(self, images, prompts) -> np.ndarray:
        """The scalar reward per image (the mean over the models)."""
        return np.mean([reward(m, images, prompts).float().cpu().numpy() for m in self.models], axis=0)

    def uncertainty(self, images, prompts, *, seed: int) -> np.ndarray:
        """Per image, the MC-dropout std of the first model's heads, averaged over heads; the dropout masks come
        from `seed`, so the same call gives the same answer."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, std = predict(self.models[0], images, prompts)
        return np.mean(np.stack(list(std.values())), axis=0)


def reward_scorer(run: TrainingRun, device, *, judge: bool = False) -> RewardScorer:
    """The run's model as a scorer; `judge`: its cross-fitted fold models instead (empty when it ran no check)."""
    return RewardScorer(reward_fold_models_load(run, device) if judge else [reward_model_load(run, device)])
