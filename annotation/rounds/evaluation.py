"""The evaluating stage of a round: what the round measured, and whether the new model version may become the one
the next round samples from.

Both the parent and the new version sample the study's evaluation panel (`rounds.panel`: the same prompts and
seeds for every version, cached), scored by the simulated readers and the reward models (the evaluation:
`metrics.panel`), and its disjoint promotion panel, scored by the reward models only (the decision: the items
that decide are not the items that measure). The new version is promoted (when the round says `promote: auto`)
only if a one-sided paired Wilcoxon test over the panel items says its reward is no more than `promote_margin` below
the parent's at `promote_alpha`. The finetune's own guards (the real-data term, early stopping on held-out real
images) run before; this check keeps a finetune that made things worse from becoming the default silently. The
result, with the paired numbers, is stored on the round either way.
"""

from __future__ import annotations

import numpy as np
from django.conf import settings

from annotation.models import PanelKind, Round
from annotation.reading.simulated import reader_of, simulated_members
from annotation.rounds.config import round_config
from annotation.rounds.messages import heartbeat, progress_merge
from annotation.rounds.panel import panel_compare, panel_ensure, panel_sample, panel_score
from annotation.rounds.report import round_report_compute
from annotation.stats.paired import paired_promotion_test
from inference.models import GeneratedImage
from inference.storage import image_load
from training.models import RunStatus


def _value(stat) -> float | None:
    return stat.get("value") if isinstance(stat, dict) else None


#: The evaluating stage's steps, in order, as its progress bar names them.
EVALUATION_STEPS = ("sampling and scoring the evaluation panel", "sampling and scoring the promotion panel",
                    "computing the round report", "scoring the generated images with the simulated readers")


def _step(rnd: Round, done: int) -> None:
    """The evaluating stage's progress: `done` of its steps finished, the one under way named (with the heartbeat)."""
    progress_merge(rnd, evaluation={"done": done, "total": len(EVALUATION_STEPS),
                                    "now": EVALUATION_STEPS[done] if done < len(EVALUATION_STEPS) else "finished"})


def evaluation_compute(rnd: Round) -> tuple[dict, bool]:
    cfg = round_config(rnd)
    skipped: dict[str, str] = {}
    profiles = _simulated_profiles(rnd)
    _step(rnd, 0)
    panel, panel_record = _panel(rnd, profiles, skipped)
    _step(rnd, 1)
    promotion, promote = _promotion_check(rnd, cfg, _promotion_panel(rnd) or panel)
    if promotion.get("skipped"):
        skipped["promotion"] = promotion["skipped"]
    if panel_record is not None:
        panel_record["promotion_p_value"] = promotion.get("p_value")
    rnd.metrics = {**rnd.metrics, "panel": panel_record}  # so the report computed next carries it
    _step(rnd, 2)
    report = round_report_compute(round=rnd, with_images=cfg.image_metrics)
    _step(rnd, 3)
    pooled = ((report.get("reader") or {}).get("pooled") or {})
    accuracy = _value(pooled.get("accuracy"))
    if accuracy is None:
        skipped["reader_accuracy"] = "no real-vs-synthetic reads with both sources in this round"
    images = report.get("images") or {}
    fid = images.get("fid")
    if fid is None:
        skipped["fid"] = ((images.get("skipped") or {}).get("fid") or (images.get("skipped") or {}).get("all")
                          or "image metrics were not computed (image_metrics off)")
    auroc = (rnd.metrics.get("reward") or {}).get("auroc")
    if auroc is None:
        skipped["reward_auroc"] = ((rnd.metrics.get("reward") or {}).get("auroc_skipped")
                                   or "no reward model was trained in this round")
    generated = _generated_pixels(rnd)
    preference = None
    if not profiles:
        skipped["simulated_preference_score"] = "the study has no simulated readers"
    elif not generated:
        skipped["simulated_preference_score"] = "the round generated no images"
    else:
        preference = float(np.mean([[p.score(img) for img in generated] for p in profiles]))
    _step(rnd, len(EVALUATION_STEPS))
    metrics = {
        "reader_accuracy": accuracy, "fid": fid, "reward_auroc": auroc,
        "simulated_preference_score": preference, "promotion": promotion, "panel": panel_record,
        "skipped": skipped,
    }
    return metrics, promote


def _simulated_profiles(rnd: Round) -> list:
    return [reader_of(m) for m in simulated_members(rnd.study)]


def _generated_pixels(rnd: Round) -> list[np.ndarray]:
    if rnd.generation_batch_id is None:
        return []
    return [image_load(g.raw_key) for g in GeneratedImage.objects.filter(batch_id=rnd.generation_batch_id)]


def _panel(rnd: Round, profiles: list, skipped: dict):
    """Sample the parent and the produced version on the study's panel (cached), score every version of it with
    the simulated readers and this round's reward model; returns (panel, the round's panel record)."""
    panel = panel_ensure(rnd.study)
    if panel is None or rnd.model_version is None:
        skipped["panel"] = ("the study's panel_size is 0: no evaluation panel" if panel is None
                            else "the round sampled from no model version")
        return None, None
    from inference.ml.devices import pick_device  # torch: stages also runs round_simulate (default queue)

    device = pick_device(settings.CXR_DEVICE)
    for version in (rnd.model_version, rnd.produced_version):
        if version is not None:
            panel_sample(panel, version)
            heartbeat(rnd)
    run = rnd.reward_run if rnd.reward_run is not None and rnd.reward_run.status == RunStatus.DONE else None
    # the fold models judge promotion; here only when this panel is the one that decides (no promotion panel)
    panel_score(panel, readers=profiles, reward_run=run, device=device, judges=rnd.study.promotion_panel_size < 1)
    heartbeat(rnd)
    return panel, panel_compare(panel, rnd.model_version, rnd.produced_version,
                                reward_run=run.pk if run is not None else None)


def _promotion_panel(rnd: Round):
    """The study's promotion panel with the parent and the produced version sampled and scored by the round's reward
    models (never by the simulated readers); None when the study has none (promotion_panel_size 0) or there is
    nothing to decide."""
    if rnd.produced_version is None or rnd.model_version is None or rnd.reward_run is None:
        return None
    panel = panel_ensure(rnd.study, PanelKind.PROMOTION)
    if panel is None:
        return None
    from inference.ml.devices import pick_device  # torch: stages also runs round_simulate (default queue)

    for version in (rnd.model_version, rnd.produced_version):
        panel_sample(panel, version)
        heartbeat(rnd)
    panel_score(panel, readers=[], reward_run=rnd.reward_run, device=pick_device(settings.CXR_DEVICE))
    return panel


def _promotion_check(rnd: Round, cfg, panel) -> tuple[dict, bool]:
    """Whether the produced version may replace its parent, decided on what a real deployment sees: this round's
    reward model's scores of both versions on the panel (never the simulated readers' scoring)."""
    child, parent = rnd.produced_version, rnd.model_version
    if child is None or parent is None:
        finetune = (rnd.metrics or {}).get("finetune") or {}
        blocked = f"no finetune: {finetune['blocked']}" if finetune.get("blocked") else None
        return {"skipped": blocked or finetune.get("no_change") or "the round produced no new version"}, False
    run = rnd.reward_run
    if run is None or panel is None:
        return {"skipped": "no reward model or no evaluation panel (panel_size 0): an admin decides",
                "version": child.name}, False
    # the judge: the cross-fitted fold models (the finetune maximised the model trained on all labels, not these);
    # a reward run without a check has only its own model
    rows = {name: panel.scores.get(model_version=v).scores for name, v in (("parent", parent), ("child", child))}
    judge = "holdout" if all(str(run.pk) in r.get("holdout", {}) for r in rows.values()) else "reward"
    rewards = {name: np.asarray(r[judge][str(run.pk)]) for name, r in rows.items()}
    diff = rewards["child"] - rewards["parent"]
    test = paired_promotion_test(diff, cfg.promote_margin)
    result = {
        "parent": parent.name, "version": child.name, "samples": int(len(diff)), "reward_run": run.pk,
        "reward_parent": float(rewards["parent"].mean()), "reward_child": float(rewards["child"].mean()),
        "reward_diff": float(diff.mean()), "child_better_share": float((diff > 0).mean()),
        "margin": cfg.promote_margin, "alpha": cfg.promote_alpha, "mode": cfg.promote, **test,
        "panel": f"{panel.kind} panel ({panel.count} items)",
        "judge": ("the cross-fitted fold models (not the reward model the finetune maximised)" if judge == "holdout"
                  else "the round's reward model"),
    }
    if test["p_value"] is not None:
        passed = test["p_value"] < cfg.promote_alpha
        result["rule"] = f"paired test on {len(diff)} panel items: p = {test['p_value']:.3g} (alpha {cfg.promote_alpha})"
    else:  # a panel too small for the test (a smoke-test preset): the mean decides, and the round says so
        passed = result["reward_diff"] >= -cfg.promote_margin
        result["rule"] = f"mean reward difference ≥ −margin; the paired test needs ≥ 6 items ({test['p_value_skipped']})"
    result["passed"] = passed
    promote = passed and cfg.promote == "auto"
    result["promoted"] = promote
    scores = f"mean reward {result['reward_child']:.3f} vs parent {result['reward_parent']:.3f}, {result['rule']}"
    result["reason"] = (f"promoted: {scores}" if promote
                        else f"kept {parent.name}: {scores} (margin {cfg.promote_margin})" if not passed
                        else "passed the check; promote is manual: an admin decides")
    return result, promote
