"""python manage.py import_images STUDY PATH [--reports CSV] [--round N]"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.images.importing import ArchiveRejected, images_import_path, read_reports_csv
from annotation.models import Round, Study


class Command(BaseCommand):
    help = "Import real images (a folder, a ZIP or one file of PNG/JPEG/DICOM) into a study."

    def add_arguments(self, parser):
        parser.add_argument("study", help="Study name")
        parser.add_argument("path", type=Path)
        parser.add_argument("--reports", type=Path, help="CSV with file_name,report columns")
        parser.add_argument("--round", type=int, help="Attach the images to this round number")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON")

    def handle(self, *args, study: str, path: Path, reports: Path | None, round: int | None, **options):
        found = Study.objects.filter(name=study).first()
        if found is None:
            raise CommandError(f"No study named {study!r}.")
        if not path.exists():
            raise CommandError(f"{path} does not exist.")
        rnd = None
        if round is not None:
            rnd = Round.objects.filter(study=found, number=round).first()
            if rnd is None:
                raise CommandError(f"Study {study!r} has no round {round}.")
        try:
            report_map = read_reports_csv(reports.read_bytes()) if reports else {}
            result = images_import_path(study=found, path=path, reports=report_map, round=rnd)
        except ArchiveRejected as exc:
            raise CommandError(f"Archive rejected, nothing imported: {exc.reason}.") from exc
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
        else:
            self.stdout.write(f"{len(result.imported)} imported, {len(result.duplicates)} duplicates, "
                              f"{len(result.rejected)} rejected.")
            for name, reason in result.rejected:
                self.stdout.write(f"  rejected {name}: {reason}")
        if result.rejected and not result.imported and not result.duplicates:
            raise CommandError("No file could be imported.")
