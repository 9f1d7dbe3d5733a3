from pathlib import Path

from django.core.management.base import BaseCommand

from inference.ml.tiny import build_tiny_models
from inference.services import tiny_models_dir, tiny_models_ensure


class Command(BaseCommand):
    help = "Build the tiny random SD, SD-inpainting and SAM models offline (the demo's and tests' default)."

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, help=f"Folder to write to (default {tiny_models_dir()})")

    def handle(self, *args, out: Path | None, **options):
        paths = build_tiny_models(out) if out else tiny_models_ensure()
        for name, path in paths.items():
            self.stdout.write(f"{name}: {path}")
