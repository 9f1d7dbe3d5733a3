"""python manage.py import_images STUDY PATH [--reports CSV] [--round N] [--json]
python manage.py import_images STUDY --dicomweb URL [--filter KEY=VALUE ...] [--reports CSV] [--json]"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.images.dicomweb import DicomwebUnreachable, dicomweb_import, filters_parse
from annotation.images.importing import ArchiveRejected, images_import_path, read_reports_csv
from annotation.management.progress import ShellProgress
from annotation.models import Round, Study


class Command(BaseCommand):
    help = ("Import real images into a study: a folder, a ZIP or one file of PNG/JPEG/DICOM, or the instances a "
            "DICOMweb service (a PACS) finds for --filter. Each file is imported, reported as a duplicate of the "
            "image it repeats, or refused with the reason.")

    def add_arguments(self, parser):
        parser.add_argument("study", help="Study name")
        parser.add_argument("path", type=Path, nargs="?", help="Folder, ZIP or file (not with --dicomweb)")
        parser.add_argument("--dicomweb", metavar="URL", help="DICOMweb root of a PACS (QIDO-RS + WADO-RS)")
        parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                            help="QIDO-RS search filter, repeatable (e.g. Modality=CR, StudyDate=20240101-20241231)")
        parser.add_argument("--reports", type=Path,
                            help="CSV with a report column and file_name, accession_number or study_uid")
        parser.add_argument("--round", type=int, help="Attach the images to this round number")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON")

    def handle(self, *args, study: str, path: Path | None, reports: Path | None, round: int | None, **options):
        found = Study.objects.filter(name=study).first()
        if found is None:
            raise CommandError(f"No study named {study!r}.")
        url = options["dicomweb"]
        if (path is None) == (url is None):
            raise CommandError("Give a PATH to import, or --dicomweb URL (not both).")
        if path is not None and not path.exists():
            raise CommandError(f"{path} does not exist.")
        if options["filter"] and url is None:
            raise CommandError("--filter applies to --dicomweb imports only.")
        rnd = None
        if round is not None:
            rnd = Round.objects.filter(study=found, number=round).first()
            if rnd is None:
                raise CommandError(f"Study {study!r} has no round {round}.")
        progress = ShellProgress(f"Importing into {study}", unit="file")
        try:
            report_map = read_reports_csv(reports.read_bytes()) if reports else {}
            if url is not None:
                try:
                    result = dicomweb_import(study=found, url=url, filters=filters_parse(options["filter"]),
                                             reports=report_map, round=rnd, progress=progress)
                except DicomwebUnreachable as exc:
                    raise CommandError(f"{exc.reason} Images imported before the failure stay; run the same "
                                       "command again to go on.") from exc
            else:
                result = images_import_path(study=found, path=path, reports=report_map, round=rnd,
                                            progress=progress)
        except ArchiveRejected as exc:
            raise CommandError(f"Archive rejected, nothing imported: {exc.reason}.") from exc
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        finally:
            progress.close()
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
        else:
            self.stdout.write(f"{len(result.imported)} imported, {len(result.duplicates)} duplicates, "
                              f"{len(result.rejected)} rejected.")
            for name, of, how in result.duplicates:
                self.stdout.write(f"  duplicate {name}: same {how} as {of}")
            for name, reason in result.rejected:
                self.stdout.write(f"  rejected {name}: {reason}")
        if result.rejected and not result.imported and not result.duplicates:
            raise CommandError("No file could be imported.")
