"""python manage.py run_loop --study NAME --rounds N --simulated-readers K [--json]

Runs N full feedback rounds (generate → clean → simulated reading → reward model → finetune → evaluate) through
the real Celery workflow, creating the study on phantoms when it does not exist and starting an embedded worker if
none answers. Every version is evaluated on the study's panel (fixed prompts × seeds). With --control permuted the
same rounds run in a twin study whose feedback is permuted across images before training (a negative control).
With --json the last line of output is {"rounds": [...], "summary": {...}} (and "control", "feedback_vs_control"
with a control arm)."""

from __future__ import annotations

import math

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.management.progress import ShellProgress
from annotation.models import RoundStatus
from annotation.rounds.services import round_launch
from annotation.simulation.arms import arm_summary, arms_compare, control_study_ensure
from annotation.simulation.loop import (
    PRESETS,
    embedded_worker_start,
    loop_study_ensure,
    real_pool_ensure,
    round_settings,
    round_summary,
    round_wait,
    tastes_table,
    worker_answers,
)
from training.ml.jsonable import json_safe
from training.ml.simulated_reader import parse_taste


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--study", help="Study name (created on phantoms if missing); required unless "
                                                 "--list-tastes.")
        parser.add_argument("--reader-taste", default=None,
                            help="A new study's simulated readers' taste: 'toward-real' (default: centre contrast "
                                 "moved toward the real images) or NAME[:+1|:-1], NAME any property --list-tastes "
                                 "shows (no sign = +1). Fixed when the study is created.")
        parser.add_argument("--list-tastes", action="store_true",
                            help="List the reader tastes with each one's direction relative to the real images, "
                                 "and exit.")
        parser.add_argument("--rounds", type=int, default=1, help="Rounds to run (default 1).")
        parser.add_argument("--simulated-readers", type=int, default=3, help="Simulated readers (default 3).")
        parser.add_argument("--images", type=int, default=64,
                            help="Images per round for a new study (default 64; the preset's budget wins).")
        parser.add_argument("--base", choices=["domain", "tiny"], default="domain",
                            help="New study's first version: 'domain' (tiny base adapted to phantoms, cached) or "
                                 "'tiny' (random tiny weights, fastest).")
        parser.add_argument("--preset", choices=sorted(PRESETS), default="loop",
                            help="Round settings to start from: 'loop' (sized to learn within a CPU budget, "
                                 "default) or 'tiny' (the product's tiny defaults: a smoke test).")
        parser.add_argument("--config", default="{}", help="RoundConfig overrides as JSON on top of the preset, e.g. "
                                                            "'{\"selection\": \"active\", \"oversample\": 2}'.")
        parser.add_argument("--control", choices=["none", "permuted"], default="none",
                            help="Also run a permuted-feedback control arm in the study NAME-control (same seeds, "
                                 "real images, readers and panel), round by round beside the feedback arm.")
        parser.add_argument("--panel", type=int, default=None,
                            help="Evaluation panel items (prompts × seeds) for a new study (default 64).")
        parser.add_argument("--promotion-panel", type=int, default=None,
                            help="Promotion panel items for a new study (default 32; disjoint from the evaluation "
                                 "panel, scored by the reward models only; 0: promotion on the evaluation panel).")
        parser.add_argument("--seed", type=int, default=None, help="Study seed for a new study (default random).")
        parser.add_argument("--round-timeout", type=float, default=3600.0, help="Seconds one round may take.")
        parser.add_argument("--json", action="store_true", help="End with one JSON line of per-round metrics.")

    def handle(self, *args, study: str, rounds: int, simulated_readers: int, images: int, base: str, config: str,
               round_timeout: float, json: bool, preset: str = "loop", control: str = "none",
               panel: int | None = None, seed: int | None = None, reader_taste: str | None = None,
               list_tastes: bool = False, promotion_panel: int | None = None, **options):
        if list_tastes:
            return self._list_tastes(json)
        if not study:
            raise CommandError("--study NAME is required (or --list-tastes).")
        if reader_taste is not None:
            try:
                parse_taste(reader_taste)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        if rounds < 1 or simulated_readers < 0 or images < 2 or (panel is not None and panel < 0) or (
                promotion_panel is not None and promotion_panel < 0):
            raise CommandError("--rounds must be at least 1, --simulated-readers at least 0, --images at least 2, "
                               "--panel and --promotion-panel at least 0.")
        if control != "none" and simulated_readers < 1:
            raise CommandError("--control needs simulated readers: the arms are compared on their scoring.")
        migrations_check()
        try:
            overrides = round_settings(preset, _json_loads(config))
        except ValueError as exc:
            raise CommandError(f"--config is not valid JSON: {exc}") from None
        worker = None
        if not worker_answers():
            self.stderr.write("No worker answered; starting an embedded one.")
            try:
                worker = embedded_worker_start()
            except RuntimeError as exc:
                raise CommandError(str(exc)) from None
        arms: dict[str, dict] = {}
        try:
            try:
                the_study = loop_study_ensure(name=study, readers=simulated_readers, images=images, base=base,
                                              panel_size=panel, seed=seed, taste=reader_taste,
                                              promotion_panel_size=promotion_panel)
                arms["feedback"] = {"study": the_study, "config": overrides, "rounds": [], "summaries": []}
                if control == "permuted":
                    twin = control_study_ensure(feedback=the_study)
                    arms["control"] = {"study": twin, "config": {**overrides, "control": "permuted"},
                                       "rounds": [], "summaries": []}
            except (RuntimeError, ValueError) as exc:
                raise CommandError(str(exc)) from None
            for _ in range(rounds):
                for arm_name, arm in arms.items():
                    rnd = self._round(arm["study"], arm["config"], round_timeout, label=arm_name)
                    arm["rounds"].append(rnd)
                    arm["summaries"].append(round_summary(rnd))
                    self.stdout.write(_line(arm_name if control != "none" else "", arm["summaries"][-1]))
                    if rnd.status != RoundStatus.DONE:
                        if json:
                            self.stdout.write(_json_dumps(_output(arms)))
                        raise CommandError(f"Round {rnd.number} of {arm['study'].name} {rnd.status}: "
                                           f"{rnd.stage_error or 'cancelled'}")
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=30)
        output = _output(arms)
        for name in arms:
            self.stdout.write(_summary_line(name, output["summary"] if name == "feedback" else output[name]["summary"]))
        if "feedback_vs_control" in output:
            self.stdout.write(_summary_line("feedback vs control", output["feedback_vs_control"]))
        if json:
            self.stdout.write(_json_dumps(output))

    def _list_tastes(self, as_json: bool) -> None:
        rows = tastes_table()
        if as_json:
            self.stdout.write(_json_dumps({"tastes": rows}))
            return
        self.stdout.write("taste | toward the real images | real − base, base SDs | what it measures")
        for row in rows:
            toward = "this way" if row["taste"] == "toward-real" else f"{row['toward_real']:+.0f}"
            self.stdout.write(f"{row['taste']} | {toward} | {row['shift_sd']:+.2f} | {row['description']}")
        self.stdout.write("Use --reader-taste NAME:+1 or NAME:-1; the sign in the second column points toward the "
                          "real images, the other one away from them (measured on phantoms vs the tiny domain "
                          "base's samples).")

    def _round(self, the_study, overrides: dict, timeout: float, label: str):
        the_study.refresh_from_db()
        real_pool_ensure(study=the_study, unused=max(the_study.images_per_round, overrides.get("real") or 0))
        try:
            rnd = round_launch(study=the_study, config=overrides)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        try:
            with ShellProgress() as progress:
                return round_wait(rnd, timeout_s=timeout, on_poll=progress.round_poll(f"{label} {the_study.name}"))
        except TimeoutError as exc:
            raise CommandError(str(exc)) from None


def migrations_check() -> None:
    """Refuse to start on a database whose migrations are not applied, with the command that fixes it."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        raise CommandError("The database is not migrated: run `python manage.py migrate` first.")


def _output(arms: dict) -> dict:
    feedback = arms.get("feedback")
    if feedback is None:
        return {"rounds": []}
    out = {"study": feedback["study"].name, "rounds": feedback["summaries"],
           "summary": arm_summary(feedback["study"], feedback["rounds"])}
    control = arms.get("control")
    if control is not None:
        out["control"] = {"study": control["study"].name, "rounds": control["summaries"],
                          "summary": arm_summary(control["study"], control["rounds"])}
        out["feedback_vs_control"] = arms_compare(feedback["study"], control["study"], feedback["rounds"],
                                                  control["rounds"])
    return out


def _stat(stat) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    ci = f" [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]" if stat.get("ci_low") is not None else ""
    return f"{stat['mean']:+.3f}{ci}"


def _line(arm: str, summary: dict) -> str:
    panel = summary.get("panel") or {}
    parent = ((panel.get("parent") or {}).get("preference") or {}).get("mean")
    produced = ((panel.get("produced") or {}).get("preference") or {}).get("mean")
    return (f"{arm + ' ' if arm else ''}round {summary['round']}: {summary['status']}, sampled from "
            f"{summary['model_version']}, {summary['images']} images, {summary['labels']} labels, reader accuracy "
            f"{_fmt(summary['reader_accuracy'])}, reward AUROC {_fmt(summary['reward_auroc'])}, panel preference "
            f"{_fmt(parent)} -> {_fmt(produced)} (p {_fmt(panel.get('p_value'), 4)}), new version "
            f"{summary['produced_version']} ({'promoted' if summary['promoted'] else 'not promoted'}), "
            f"{summary['seconds']} s")


def _summary_line(name: str, summary: dict) -> str:
    if summary.get("skipped") and isinstance(summary["skipped"], str):
        return f"{name}: {summary['skipped']}"
    return (f"{name}: preference gain {_stat(summary.get('preference_gain'))}, p {_fmt(summary.get('p_value'), 4)}; "
            f"fooling-rate gain {_stat(summary.get('fooling_rate_gain'))}")


def _json_loads(text: str) -> dict:
    import json as _json

    value = _json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected an object")
    return value


def _json_dumps(value) -> str:
    import json as _json


    return _json.dumps(json_safe(value), allow_nan=False, default=str)
