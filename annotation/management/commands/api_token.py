"""python manage.py api_token --user NAME --scope {read,export,admin} [--name LABEL]
   python manage.py api_token --revoke PREFIX

Issues an API token (printed once; only its hash is stored) or revokes one by its prefix (the 8 characters after
`cxr_`). Scopes: read = a reader's own tasks; export = read-only access to the studies the user administers;
admin = export plus round actions and webhooks."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from annotation.api.auth import token_issue
from annotation.models import ApiToken, TokenScope


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--user")
        parser.add_argument("--scope", choices=TokenScope.values)
        parser.add_argument("--name", default="cli")
        parser.add_argument("--revoke", metavar="PREFIX")

    def handle(self, *args, user, scope, name, revoke, **options):
        if revoke:
            changed = ApiToken.objects.filter(prefix=revoke, revoked_at__isnull=True).update(revoked_at=timezone.now())
            if not changed:
                raise CommandError(f"No live token with prefix {revoke!r}.")
            self.stdout.write(f"Revoked token {revoke}.")
            return
        if not user or not scope:
            raise CommandError("Give --user and --scope (or --revoke PREFIX).")
        owner = get_user_model().objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"No user named {user!r}.")
        token, key = token_issue(user=owner, name=name, scope=scope)
        self.stdout.write(key)
        self.stderr.write(f"Token {token.prefix} ({scope}) for {user}; shown once, store it now.")
