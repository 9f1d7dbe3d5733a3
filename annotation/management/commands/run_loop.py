"""python manage.py run_loop --study NAME --rounds N --simulated-readers K [--json]

Runs N full feedback rounds (generate → clean → simulated reading → reward model → finetune → evaluate) through
the real Celery workflow, creating the study on phantoms when it does not exist and starting an embedded worker if
none answers. With --json the last line of output is {"rounds": [...]} with one object per round."""

from __future__ import annotations

import math

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.models import RoundStatus
from annotation.rounds.services import round_launch
from annotation.simulation.loop import (
    PRESETS,
    embedded_worker_start,
    loop_study_ensure,
    real_pool_ensure,
    round_settings,
    round_summary,
    round_wait,
    worker_answers,
)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True, help="Study name (created on phantoms if missing).")
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
        parser.add_argument("--round-timeout", type=float, default=3600.0, help="Seconds one round may take.")
        parser.add_argument("--json", action="store_true", help="End with one JSON line of per-round metrics.")

    def handle(self, *args, study: str, rounds: int, simulated_readers: int, images: int, base: str, config: str,
               round_timeout: float, json: bool, preset: str = "loop", **options):
        if rounds < 1 or simulated_readers < 0 or images < 2:
            raise CommandError("--rounds must be at least 1, --simulated-readers at least 0, --images at least 2.")
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
        summaries = []
        try:
            try:
                the_study = loop_study_ensure(name=study, readers=simulated_readers, images=images, base=base)
            except RuntimeError as exc:
                raise CommandError(str(exc)) from None
            for _ in range(rounds):
                real_pool_ensure(study=the_study, unused=max(the_study.images_per_round, overrides.get("real") or 0))
                try:
                    rnd = round_launch(study=the_study, config=overrides)
                except ValidationError as exc:
                    raise CommandError(" ".join(exc.messages)) from None
                try:
                    rnd = round_wait(rnd, timeout_s=round_timeout)
                except TimeoutError as exc:
                    raise CommandError(str(exc)) from None
                summary = round_summary(rnd)
                summaries.append(summary)
                self.stdout.write(
                    f"round {summary['round']}: {summary['status']}, sampled from {summary['model_version']}, "
                    f"{summary['images']} images, {summary['labels']} labels, reader accuracy "
                    f"{_fmt(summary['reader_accuracy'])}, simulated preference "
                    f"{_fmt(summary['simulated_preference_score'])}, reward AUROC {_fmt(summary['reward_auroc'])}, "
                    f"FID {_fmt(summary['fid'], 1)}, new version {summary['produced_version']} "
                    f"({'promoted' if summary['promoted'] else 'not promoted'}), {summary['seconds']} s")
                if rnd.status != RoundStatus.DONE:
                    if json:
                        self.stdout.write(_json_dumps({"rounds": summaries}))
                    raise CommandError(f"Round {rnd.number} of {the_study.name} {rnd.status}: "
                                       f"{rnd.stage_error or 'cancelled'}")
                the_study.refresh_from_db()
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=30)
        if json:
            self.stdout.write(_json_dumps({"rounds": summaries}))


def _json_loads(text: str) -> dict:
    import json as _json

    value = _json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected an object")
    return value


def _json_dumps(value) -> str:
    import json as _json

    from training.ml.jsonable import json_safe

    return _json.dumps(json_safe(value), allow_nan=False, default=str)
