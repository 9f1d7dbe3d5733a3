"""python manage.py study_create NAME [--title T] [--modalities CR,DX|any] [--views PA,AP] [--json] [settings]

Creates a study through the same validating service as the API (`POST /api/v1/studies/`) and the dashboard."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.api.serializers import StudySerializer
from annotation.models import TaskKind
from annotation.studies.services import study_create


class Command(BaseCommand):
    help = "Create a study (validated as the API and the dashboard validate it)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Short identifier: lower-case letters, digits, '-' and '_'")
        parser.add_argument("--title", default="")
        parser.add_argument("--description", default="")
        parser.add_argument("--modalities", default="CR,DX",
                            help="DICOM modalities accepted on import, comma-separated, or 'any' (default CR,DX)")
        parser.add_argument("--views", default="PA,AP",
                            help="DICOM view positions accepted, comma-separated; '' for any (default PA,AP)")
        parser.add_argument("--task-kinds", default="realism,rubric",
                            help=f"Comma-separated, from {','.join(TaskKind.values)} (default realism,rubric)")
        parser.add_argument("--readers-per-image", type=int, default=2)
        parser.add_argument("--display-size", type=int, default=512)
        parser.add_argument("--prompt-policy", choices=["truncate", "chunks"], default="truncate",
                            help="Reports longer than 77 tokens: truncated, or encoded in 77-token chunks")
        parser.add_argument("--json", action="store_true", help="Print the created study as JSON")

    def handle(self, *args, name: str, **o):
        try:
            study = study_create(
                name=name, title=o["title"], description=o["description"], modalities=o["modalities"],
                views=o["views"], task_kinds=[k.strip() for k in o["task_kinds"].split(",") if k.strip()],
                readers_per_image=o["readers_per_image"], display_size=o["display_size"],
                prompt_policy=o["prompt_policy"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        if o["json"]:

            self.stdout.write(json.dumps(StudySerializer(study).data, default=str))
        else:
            self.stdout.write(f"Created study {study.name!r} (id {study.pk}): modalities "
                              f"{', '.join(study.modalities)}, views {', '.join(study.views) or 'any'}.")
