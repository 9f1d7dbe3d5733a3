from django.core.management.base import BaseCommand

from annotation.management.progress import ShellProgress
from annotation.rounds.domain import demo_base
from annotation.simulation.demo import DEMO_USERS, demo_study_ensure


class Command(BaseCommand):
    help = "Create the demo study, a demo admin and a demo reader (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--images", type=int, default=12, help="Real and synthetic images each")

    def handle(self, *args, images: int, **options):
        self.stdout.write("Setting up the demo: the shipped tiny base adapted to the demo's phantoms, round 1 "
                          "generated and cleaned (a CPU minute or two the first time)...")
        self.stdout.flush()
        with ShellProgress() as progress:  # shown only if the shipped base is missing and is built here
            demo_base(progress=progress)
        study = demo_study_ensure(images=images)
        rnd = study.rounds.order_by("-number").first()
        self.stdout.write(f"Demo study '{study.name}' ready: round {rnd.number} is {rnd.status}, sampled from "
                          f"{rnd.model_version}; {study.images.count()} images stored.")
        for user, password in DEMO_USERS.items():
            self.stdout.write(f"  login: {user} / {password}")
