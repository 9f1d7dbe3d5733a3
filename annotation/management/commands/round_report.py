"""python manage.py round_report STUDY ROUND [--json] [--no-images]"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from annotation.models import Round
from annotation.rounds.report import round_report_compute


def _fmt(stat: dict | None) -> str:
    if not stat or stat.get("value") is None:
        return "—" + (f" ({stat['reason']})" if stat and stat.get("reason") else "")
    ci = f" [{stat['ci_low']:.2f}, {stat['ci_high']:.2f}]" if stat.get("ci_low") is not None else ""
    return f"{stat['value']:.3f}{ci}"


class Command(BaseCommand):
    help = "Compute a round's report (reader statistics and image metrics), store it on the round and print it."

    def add_arguments(self, parser):
        parser.add_argument("study")
        parser.add_argument("round", type=int)
        parser.add_argument("--json", action="store_true", help="Print the whole report as one JSON object")
        parser.add_argument("--no-images", action="store_true", help="Skip the image metrics")

    def handle(self, *args, study: str, round: int, **options):
        rnd = Round.objects.select_related("study").filter(study__name=study, number=round).first()
        if rnd is None:
            raise CommandError(f"Study {study!r} has no round {round}.")
        report = round_report_compute(round=rnd, with_images=not options["no_images"])
        if options["json"]:
            self.stdout.write(json.dumps(report, allow_nan=False))
            return
        pooled = report["reader"]["pooled"]
        self.stdout.write(f"{rnd}: {pooled['n']} realism reads")
        for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv", "auc"):
            self.stdout.write(f"  {key:<12} {_fmt(pooled.get(key))}")
        images = report["images"] or {}
        for key in ("fid", "fid_domain"):
            if images.get(key) is not None:
                self.stdout.write(f"  {key:<12} {images[key]:.3f}")
        if images.get("prdc"):
            prdc = images["prdc"]
            self.stdout.write("  prdc         " + ", ".join(f"{k} {prdc[k]:.3f}" for k in
                                                          ("precision", "recall", "density", "coverage")))
        for metric, reason in (images.get("skipped") or {}).items():
            self.stdout.write(f"  skipped {metric}: {reason}")
