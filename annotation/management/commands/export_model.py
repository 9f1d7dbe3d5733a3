"""python manage.py export_model --study NAME [--version NAME] --out DIR

Writes a model version (default: the study's current one) as a folder diffusers loads onto its base with
`StableDiffusionPipeline.load_lora_weights(DIR)`, with a model card README.md."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.exports.model_export import model_export, study_version_for_export
from annotation.models import Study


class Command(BaseCommand):
    help = __doc__

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version names the model version here, not Django's version: let ours replace Django's option
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True)
        parser.add_argument("--version", help="Model version name (default: the study's current version)")
        parser.add_argument("--out", required=True, type=Path, help="A new or empty folder")

    def handle(self, *args, study: str, version: str | None, out: Path, **options):
        found = Study.objects.select_related("current_version").filter(name=study).first()
        if found is None:
            raise CommandError(f"No study named {study!r}.")
        try:
            written = model_export(study_version_for_export(found, version), found, out)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(f"Wrote {written['version']} to {out}: load it with "
                          f"StableDiffusionPipeline.from_pretrained({written['base']!r}).load_lora_weights({str(out)!r}).")
