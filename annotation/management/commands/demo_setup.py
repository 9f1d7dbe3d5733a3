from django.core.management.base import BaseCommand

from annotation.demo import DEMO_USERS, demo_study_ensure


class Command(BaseCommand):
    help = "Create the demo study, a demo admin and a demo reader (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--images", type=int, default=12, help="Real and synthetic images each")

    def handle(self, *args, images: int, **options):
        study = demo_study_ensure(images=images)
        self.stdout.write(f"Demo study '{study.name}' ready: {study.images.count()} images.")
        for user, password in DEMO_USERS.items():
            self.stdout.write(f"  login: {user} / {password}")
