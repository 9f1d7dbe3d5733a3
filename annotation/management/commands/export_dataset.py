"""python manage.py export_dataset --study NAME [--round N ...] --format {jsonl,csv,parquet,imagefolder,pairs,pairs-hf,mrmc}
--out PATH

Writes the export to PATH (imagefolder: a ZIP; pairs-hf: a folder of Parquet shards in Pick-a-Pic's layout) and
PATH.manifest.json (sha256 of every file, the selection, the counts). Streams at flat memory; simulated readers are left out unless --include-simulated; readers are named by
pseudonym unless --usernames. `mrmc` holds one round (--round N): the CSV `reader_stats --mrmc` reads."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.exports.formats import FORMATS, write_export
from annotation.exports.selection import selection_from
from annotation.management.progress import ShellProgress
from annotation.models import Study


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--study", required=True)
        parser.add_argument("--round", type=int, action="append", default=[], help="Round number (repeatable).")
        parser.add_argument("--since-round", type=int, help="Only rounds after this one (incremental).")
        parser.add_argument("--updated-after", help="Only labels stored after this ISO 8601 time (incremental).")
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--out", required=True, help="Output file (pairs-hf: a new or empty folder).")
        parser.add_argument("--include-simulated", action="store_true", help="Keep simulated readers' labels.")
        parser.add_argument("--current-only", action="store_true", help="Leave out superseded revisions.")
        parser.add_argument("--usernames", action="store_true", help="Name readers by username, not pseudonym.")

    def handle(self, *args, study, round, since_round, updated_after, format, out, include_simulated, current_only,
               usernames, **options):
        the_study = Study.objects.filter(name=study).first()
        if the_study is None:
            raise CommandError(f"No study named {study!r}.")
        out_path = Path(out)
        if out_path.exists() and out_path.is_dir() and format != "pairs-hf":
            raise CommandError(f"{out} is a folder; give a file name.")
        try:
            sel = selection_from({"round": round, "since_round": since_round, "updated_after": updated_after,
                                  "include_simulated": include_simulated, "include_superseded": not current_only,
                                  "identities": "username" if usernames else "pseudonym"},
                                 study=the_study, is_admin=True)
            with ShellProgress(f"Exporting {study}", unit="row") as progress:
                manifest = write_export(sel, format, out_path, on_progress=lambda rows: progress(rows, 0))
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        counts = ", ".join(f"{v} {k}" for k, v in manifest["counts"].items())
        self.stdout.write(f"Wrote {out_path} ({counts}) and {out_path.name}.manifest.json.")
