"""The study's evaluation panel: fixed prompts × seeds that every model version samples once, scored per item, so
versions are compared on the same items (paired) round after round.

Each version's samples are one generation batch (clean off), found again by the panel's digest: cached across
rounds and across studies that share the panel definition (a control arm), resumed where it stopped when the
worker died. Scores per item: every simulated reader's preference and fooling chance (the experiment's ground
truth: read by the evaluation only, never by training, selection or promotion), the realism function, and every
reward model of the study (recomputed for every version when a new one is trained, stored per reward run, so the
curves of one reward model stay comparable). GPU-side modules load inside the functions that sample or score.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
from django.db import transaction

from annotation.models import EvaluationPanel, Image, PanelKind, PanelScore, Source, Study
from annotation.rounds.versions import study_version
from annotation.stats.paired import bootstrap_mean, paired_comparison
from inference.ml.generation_config import GenerationConfig
from inference.ml.report_text import TEMPLATE_REPORTS, report_prompt
from inference.models import GenerationBatch, JobStatus, ModelVersion
from inference.services import generation_batch_create, generation_config_default
from inference.storage import image_load
from training.services import reward_scorer

SCORES = {"preference": "preference", "fooling_rate": "fooling", "realism_only_fooling_rate": "fooling_realism",
          "realism": "realism"}


def study_prompts(study: Study) -> list[str]:
    """The prompt pool a study's generation draws from: its real images' reports (prompt_source "reports"), else
    the built-in templates."""
    prompts: list[str] = []
    if study.prompt_source == "reports":  # distinct, in import order (the same on every database)
        reports = (Image.objects.filter(study=study, source=Source.REAL).exclude(prompt="").order_by("pk")
                   .values_list("prompt", flat=True)[:20_000])
        prompts = [p for p in dict.fromkeys(report_prompt(r) for r in reports) if p][:5000]
    return prompts or list(TEMPLATE_REPORTS)


def panel_ensure(study: Study, kind: str = PanelKind.EVALUATION) -> EvaluationPanel | None:
    """The study's panel of `kind`, defined once (prompts, seed, the current version's generation defaults at one
    image per prompt); None when its size (panel_size, promotion_panel_size) is 0. The promotion panel draws from
    its own seed, so its items are not the evaluation panel's."""
    panel = EvaluationPanel.objects.filter(study=study, kind=kind).first()
    size = study.panel_size if kind == PanelKind.EVALUATION else study.promotion_panel_size
    if panel is not None or size < 1:
        return panel

    gen = replace(generation_config_default(study_version(study)), images_per_prompt=1,
                  prompt_policy=study.prompt_policy)
    offset = 0 if kind == PanelKind.EVALUATION else 1_000_003
    panel, _ = EvaluationPanel.objects.get_or_create(study=study, kind=kind, defaults={
        "prompts": study_prompts(study), "count": size, "seed": (study.seed * 7_919 + 104_729 + offset) % 2**31,
        "config": gen.as_dict()})
    return panel


def panel_share(*, source: Study, target: Study) -> EvaluationPanel:
    """`target` evaluated (and its promotions decided) on `source`'s panels (same prompts, seeds and settings): a
    control arm's panels."""
    panel = panel_ensure(source)
    if panel is None:
        raise ValueError(f"Study {source.name} has no evaluation panel (panel_size 0).")
    for kind in PanelKind.values:
        mine = panel_ensure(source, kind)
        if mine is not None:
            shared, _ = EvaluationPanel.objects.update_or_create(study=target, kind=kind, defaults={
                "prompts": mine.prompts, "count": mine.count, "seed": mine.seed, "config": mine.config})
    return EvaluationPanel.objects.get(study=target, kind=PanelKind.EVALUATION)


def _owner(panel: EvaluationPanel) -> str:
    digest = hashlib.sha256(json.dumps([panel.prompts, panel.count, panel.seed, panel.config],
                                       sort_keys=True).encode()).hexdigest()[:24]
    return f"panel:{digest}"


def panel_sample(panel: EvaluationPanel, version: ModelVersion) -> PanelScore:
    """The version's samples of the panel, generated here (call it in a GPU-queue task) unless stored already."""
    from inference.jobs import generation_batch_run  # torch: the web imports this module

    row, _ = PanelScore.objects.get_or_create(panel=panel, model_version=version)
    batch = row.batch
    if batch is None:
        owner = _owner(panel)
        batch = (GenerationBatch.objects.filter(model_version=version, owner=owner).exclude(
            status=JobStatus.FAILED).order_by("pk").first()
            or generation_batch_create(model_version=version, count=panel.count, prompts=panel.prompts,
                                       seed=panel.seed, owner=owner, clean=False, enqueue=False,
                                       config=GenerationConfig.from_dict(panel.config)))
        PanelScore.objects.filter(pk=row.pk).update(batch=batch)
        row.batch = batch
    if batch.status != JobStatus.DONE:
        batch = generation_batch_run(batch=batch)
        if batch.status != JobStatus.DONE:
            raise RuntimeError(f"Panel samples of {version.name} failed: {batch.error_message}")
    return row


def _images(row: PanelScore) -> list[np.ndarray]:
    return [image_load(g.raw_key) for g in row.batch.images.order_by("index")]


def panel_score(panel: EvaluationPanel, *, readers: list, reward_run=None, device=None, judges: bool = True) -> None:
    """Score every sampled version of the panel: the simulated readers' functions once per version, the reward
    model `reward_run` (when given) for every version that has no score from it yet, and — when the panel decides
    promotion (`judges`) — the run's cross-fitted fold models."""
    rows = [r for r in panel.scores.select_related("batch", "model_version").order_by("pk")
            if r.batch is not None and r.batch.status == JobStatus.DONE]
    model, fold_models = None, None
    for row in rows:
        scores, images = dict(row.scores), None
        if readers and "preference" not in scores:
            images = _images(row)
            scores["preference"] = [float(np.mean([r.score(i) for r in readers])) for i in images]
            scores["fooling"] = [float(np.mean([r.p_real(is_real=False, image=i) for r in readers])) for i in images]
            fn = next((r for r in readers if r.realism_model is not None), None)
            if fn is not None:
                scores["realism"] = [fn.realism_score(i) for i in images]
        if readers and "fooling_realism" not in scores:  # also for rows scored before it existed
            images = images or _images(row)
            plain = [replace(r, preference_weight=0.0) for r in readers]  # the fooling rate without the taste term
            scores["fooling_realism"] = [float(np.mean([r.p_real(is_real=False, image=i) for r in plain]))
                                         for i in images]
        if reward_run is not None and str(reward_run.pk) not in scores.get("reward", {}):
            model = model or reward_scorer(reward_run, device)
            images = images or _images(row)
            prompts = list(row.batch.images.order_by("index").values_list("prompt", flat=True))
            values = model.scores(images, prompts)
            scores["reward"] = {**scores.get("reward", {}), str(reward_run.pk): [float(v) for v in values]}
        if judges and reward_run is not None and str(reward_run.pk) not in scores.get("holdout", {}):
            if fold_models is None:
                fold_models = reward_scorer(reward_run, device, judge=True)
            if fold_models:  # the promotion judge: the mean of the cross-fitted fold models the finetune never saw
                images = images or _images(row)
                prompts = list(row.batch.images.order_by("index").values_list("prompt", flat=True))
                values = fold_models.scores(images, prompts)
                scores["holdout"] = {**scores.get("holdout", {}), str(reward_run.pk): [float(v) for v in values]}
        if scores != row.scores:
            with transaction.atomic():
                locked = PanelScore.objects.select_for_update().get(pk=row.pk)
                locked.scores = {**locked.scores, **scores,
                                 "reward": {**locked.scores.get("reward", {}), **scores.get("reward", {})},
                                 "holdout": {**locked.scores.get("holdout", {}), **scores.get("holdout", {})}}
                locked.save(update_fields=["scores", "updated_at"])


def _row(panel: EvaluationPanel, version: ModelVersion | None) -> PanelScore | None:
    return None if version is None else panel.scores.filter(model_version=version).first()


def version_scores(row: PanelScore | None, *, reward_run: int | None = None) -> dict:
    """Per score, the version's panel mean with its bootstrap 95% CI and n (null when it was not scored)."""
    scores = row.scores if row is not None else {}
    out = {name: bootstrap_mean(scores[key]) if key in scores else None for name, key in SCORES.items()}
    reward = scores.get("reward", {}).get(str(reward_run)) if reward_run is not None else None
    out["reward"] = bootstrap_mean(reward) if reward is not None else None
    return out


def panel_compare(panel: EvaluationPanel, parent: ModelVersion, produced: ModelVersion | None,
                  reward_run: int | None = None) -> dict:
    """The round's panel record: both versions' scores (reward: by the round's reward model `reward_run`), and the
    produced version against its parent on the simulated preference (p_value, effect_size: the evaluation) and on
    the fooling rate."""
    a, b = _row(panel, parent), _row(panel, produced)
    out = {"items": panel.count, "parent": {"version": parent.name, **version_scores(a, reward_run=reward_run)},
           "produced": {"version": produced.name, **version_scores(b, reward_run=reward_run)} if produced else None,
           "p_value": None, "effect_size": None, "skipped": {}}
    if produced is None:
        out["skipped"]["p_value"] = "the round produced no new version"
    elif a is None or b is None or "preference" not in a.scores or "preference" not in b.scores:
        out["skipped"]["p_value"] = "no simulated readers scored the panel (a study read by people)"
    else:
        pref = paired_comparison(a.scores["preference"], b.scores["preference"])
        fool = paired_comparison(a.scores["fooling"], b.scores["fooling"])
        out.update(p_value=pref["p_value"], effect_size=pref["effect_size"], preference_gain=pref["gain"],
                   fooling_rate_gain=fool["gain"], fooling_rate_p_value=fool["p_value"])
        out["skipped"].update(pref["skipped"])
    return out


def panel_versions(study: Study) -> dict:
    """Every scored version of the study's panel, in the order they were made, with the latest reward model's
    scores: what the dashboard draws and the API returns."""
    panel = EvaluationPanel.objects.filter(study=study, kind=PanelKind.EVALUATION).first()
    if panel is None:
        return {"items": 0, "versions": [], "reward_run": None,
                "skipped": "the study has no evaluation panel yet (one is sampled in the first round's evaluation)"}
    rows = list(panel.scores.select_related("model_version__parent").order_by("model_version__pk"))
    runs = {int(k) for r in rows for k in r.scores.get("reward", {})}
    latest = max(runs) if runs else None
    return {"items": panel.count, "reward_run": latest, "versions": [
        {"version": r.model_version.name, "parent": r.model_version.parent.name if r.model_version.parent else None,
         "current": r.model_version_id == study.current_version_id, **version_scores(r, reward_run=latest)}
        for r in rows if r.scores]}


def paired_gain(panel: EvaluationPanel, first: ModelVersion, last: ModelVersion, key: str = "preference", *,
                last_panel: EvaluationPanel | None = None) -> dict:
    """`last` against `first` on the panel's `key` scores (paired_comparison), or {"skipped": reason}. `last` is
    read from `last_panel` when given: another study's copy of the same panel (a control arm's), same items."""
    a, b = _row(panel, first), _row(last_panel or panel, last)
    if a is None or b is None or key not in a.scores or key not in b.scores:
        return {"skipped": f"{key} of {first.name} or {last.name} was not scored on the panel"}
    return paired_comparison(a.scores[key], b.scores[key])
