from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from training.ml.insilico_base import SHIPPED_BASES as BASES
from training.ml.insilico_base import build_insilico_base


class Command(BaseCommand):
    help = ("Build the pretrained tiny bases shipped in the repository (CXR_WEIGHTS_DIR): tiny-domain, the loop's and "
            "the proofs' 64-px base (a few CPU minutes), and tiny-demo, the demo's 128-px base (about an hour); "
            "each only when its recipe in the code changed. Commit the result.")

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, help=f"Folder to write to (default {settings.CXR_WEIGHTS_DIR})")
        parser.add_argument("names", nargs="*", metavar="NAME", help=f"Which bases: {', '.join(BASES)} (default: both)")

    def handle(self, *args, out: Path | None, names: list[str], **options):
        def progress(stage, done, total):
            self.stdout.write(f"  {stage}: {done}/{total}")

        unknown = sorted(set(names) - set(BASES))
        if unknown:
            raise CommandError(f"No tiny base is called {', '.join(unknown)}: choose from {', '.join(BASES)}.")
        for name in names or BASES:
            path = build_insilico_base((out or settings.CXR_WEIGHTS_DIR) / name, BASES[name](), progress=progress)
            self.stdout.write(f"{name}: {path}")
