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
from annotation.studies.services import study_create

COPIED = ("images_per_round", "real_fraction", "readers_per_image", "task_kinds", "rubric", "display_size",
          "catch_rate", "repeat_rate", "repeat_washout", "seed", "prompt_source", "panel_size", "equivalence_margin",
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


def arm_summary(study: Study, rounds: list[Round]) -> dict:
    """The arm's first version (round 1's parent) against the last version it produced, on the panel:
    {"first_version", "last_version", "preference_gain", "fooling_rate_gain", "p_value", "skipped"}."""
    out = {"first_version": None, "last_version": None, "preference_gain": None, "fooling_rate_gain": None,
           "p_value": None, "fooling_rate_p_value": None, "skipped": {}}
    if not rounds:
        out["skipped"]["summary"] = "no rounds"
        return out
    first = rounds[0].model_version
    produced = [r.produced_version for r in rounds if r.produced_version is not None]
    out["first_version"] = first.name if first else None
    if not produced:
        out["skipped"]["summary"] = "no round produced a new version"
        return out
    last = produced[-1]
    out["last_version"] = last.name
    panel = panel_ensure(study)
    if panel is None or first is None:
        out["skipped"]["summary"] = "the study has no evaluation panel"
        return out
    pref, fool = paired_gain(panel, first, last, "preference"), paired_gain(panel, first, last, "fooling")
    out.update(preference_gain=pref.get("gain"), fooling_rate_gain=fool.get("gain"), p_value=pref.get("p_value"),
               fooling_rate_p_value=fool.get("p_value"), n=pref.get("n"))
    for name, result in (("preference", pref), ("fooling_rate", fool)):
        for key, reason in ({"all": result["skipped"]} if isinstance(result.get("skipped"), str)
                            else result.get("skipped") or {}).items():
            out["skipped"][f"{name}.{key}"] = reason
    return out


def arms_compare(feedback: Study, control: Study, feedback_rounds: list[Round], control_rounds: list[Round]) -> dict:
    """The feedback arm's last version against the control arm's last version on the shared panel (the same
    items: a paired comparison of the simulated preference and fooling rate)."""
    from annotation.stats.paired import paired_comparison

    last = [next((r.produced_version for r in reversed(rs) if r.produced_version), None)
            for rs in (feedback_rounds, control_rounds)]
    if None in last:
        return {"skipped": "an arm produced no version"}
    rows = [panel_ensure(s).scores.filter(model_version=v).first() for s, v in zip((feedback, control), last,
                                                                                  strict=True)]
    if None in rows or any("preference" not in r.scores for r in rows):
        return {"skipped": "an arm's last version was not scored on the panel"}
    pref = paired_comparison(rows[1].scores["preference"], rows[0].scores["preference"])
    fool = paired_comparison(rows[1].scores["fooling"], rows[0].scores["fooling"])
    return {"feedback_version": last[0].name, "control_version": last[1].name, "preference_gain": pref["gain"],
            "p_value": pref["p_value"], "effect_size": pref["effect_size"], "fooling_rate_gain": fool["gain"],
            "fooling_rate_p_value": fool["p_value"], "n": pref["n"], "skipped": pref["skipped"]}
