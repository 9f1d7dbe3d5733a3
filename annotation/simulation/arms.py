"""The loop's two arms: the feedback study and its permuted control (`run_loop --control permuted`), and what each
arm's rounds did to its model on the shared evaluation panel.

The control study is the feedback study's twin: the same settings and seed (so the same rounds' prompts, sampling
and training seeds), the same real images (the phantom pool is seeded), the same first version, simulated readers
with the same settings and realism function, and the same panel. Its rounds run with `control: "permuted"`, so
the difference between the arms' last versions is what the feedback did.
"""

from __future__ import annotations

from annotation.models import Round, Study
from annotation.reading.simulated import reader_of, simulated_members, simulated_readers_ensure
from annotation.rounds.panel import paired_gain, panel_ensure, panel_share
from annotation.simulation.loop import real_pool_ensure
from annotation.stats.paired import bootstrap_mean
from annotation.studies.services import study_create

COPIED = ("images_per_round", "real_fraction", "readers_per_image", "task_kinds", "rubric", "display_size",
          "catch_rate", "repeat_rate", "repeat_washout", "seed", "prompt_source", "panel_size", "promotion_panel_size", "equivalence_margin",
          "catch_rule", "round_defaults")


def first_version(study: Study):
    """The version the study's first round sampled from (its current one before any round)."""
    first = Round.objects.filter(study=study).order_by("number").select_related("model_version").first()
    return first.model_version if first and first.model_version else study.current_version


def control_study_ensure(*, feedback: Study, name: str | None = None) -> Study:
    """The feedback study's permuted-control twin, created once."""
    name = name or f"{feedback.name}-control"[:80]
    study = Study.objects.filter(name=name).first()
    if study is None:
        study = study_create(name=name, title=f"{feedback.title} (permuted control)",
                             current_version=first_version(feedback),
                             **{field: getattr(feedback, field) for field in COPIED})
    real_pool_ensure(study=study, unused=feedback.images_per_round)
    members = simulated_members(feedback)
    if members and not simulated_members(study):
        simulated_readers_ensure(study=study, count=len(members), readers=[reader_of(m) for m in members])
    panel_share(source=feedback, target=study)
    return study


GAINS = (("preference_gain", "preference"), ("fooling_rate_gain", "fooling"),
         ("realism_only_fooling_rate_gain", "fooling_realism"), ("realism_gain", "realism"))


def _current(study: Study, rounds: list[Round]):
    """The version the study would ship after `rounds`: its current one (the last promoted, or the first)."""
    study.refresh_from_db()
    return study.current_version or (rounds[0].model_version if rounds else None)


def _gains(panel, before, after, out: dict, *, after_panel=None) -> None:
    """`after` against `before` on the panel, every gain an object {mean, ci_low, ci_high, n} (paired over the
    panel's items: the panel's precision, not the procedure's)."""

    for name, key in GAINS:
        result = paired_gain(panel, before, after, key, last_panel=after_panel)
        out[name] = result.get("gain") or bootstrap_mean([])
        if name == "preference_gain":
            out["p_value"], out["n"] = result.get("p_value"), result.get("n")
        elif name == "fooling_rate_gain":
            out["fooling_rate_p_value"] = result.get("p_value")
        for k, reason in ({"all": result["skipped"]} if isinstance(result.get("skipped"), str)
                          else result.get("skipped") or {}).items():
            out["skipped"][f"{name.removesuffix('_gain')}.{k}"] = reason


def arm_summary(study: Study, rounds: list[Round]) -> dict:
    """The arm's first version (round 1's parent) against its current version (what it would ship: the last
    promoted one, or the first when nothing was promoted) on the evaluation panel. Gains are 0 when nothing was
    promoted, with the reason under `skipped`; `last_produced` names the last version a round made, promoted or
    not."""

    out = {"unit": "panel items", "first_version": None, "last_version": None, "last_produced": None,
           "p_value": None, "fooling_rate_p_value": None, "n": None, "skipped": {},
           **{name: bootstrap_mean([]) for name, _ in GAINS}}
    if not rounds:
        out["skipped"]["summary"] = "no rounds"
        return out
    first, current = rounds[0].model_version, _current(study, rounds)
    produced = [r.produced_version for r in rounds if r.produced_version is not None]
    out.update(first_version=first.name if first else None, last_version=current.name if current else None,
               last_produced=produced[-1].name if produced else None)
    panel = panel_ensure(study)
    if panel is None or first is None:
        out["skipped"]["summary"] = "the study has no evaluation panel"
        return out
    if current == first:
        out["skipped"]["summary"] = ("nothing was promoted: the current version is the first, gain 0"
                                     if produced else "no round produced a new version: gain 0")
    _gains(panel, first, current, out)
    return out


def arms_compare(feedback: Study, control: Study, feedback_rounds: list[Round], control_rounds: list[Round]) -> dict:
    """The feedback arm's current version against the control arm's current version on the shared panel (the
    same items: a paired comparison)."""

    fb, ctl = _current(feedback, feedback_rounds), _current(control, control_rounds)
    out = {"unit": "panel items", "feedback_version": fb.name if fb else None,
           "control_version": ctl.name if ctl else None, "p_value": None, "fooling_rate_p_value": None, "n": None,
           "skipped": {}, **{name: bootstrap_mean([]) for name, _ in GAINS}}
    panels = panel_ensure(control), panel_ensure(feedback)  # the same items: the control's copy of the panel
    if None in panels or fb is None or ctl is None:
        out["skipped"]["summary"] = "no evaluation panel or no version"
        return out
    _gains(panels[0], ctl, fb, out, after_panel=panels[1])
    return out
