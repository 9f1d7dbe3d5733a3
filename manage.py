#!/usr/bin/env python
import os
import re
import sys

# What SQLite and PostgreSQL say when a table or column a command needs has not been created by `migrate`.
UNMIGRATED = re.compile(r"no such (table|column)|(relation|column) \S+ does not exist", re.IGNORECASE)


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line
    from django.db.utils import OperationalError, ProgrammingError

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:  # the settings refused to load (e.g. no secret key with DEBUG off): the sentence
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
    except (OperationalError, ProgrammingError) as exc:
        if not UNMIGRATED.search(str(exc)):
            raise
        from django.conf import settings

        db = settings.DATABASES["default"]
        where = db["NAME"] if "sqlite" in db["ENGINE"] else f"{db.get('HOST') or 'localhost'}/{db['NAME']}"
        sys.stderr.write(f"The database ({where}) is not migrated ({str(exc).splitlines()[0]}): "
                         "run `python manage.py migrate` first.\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
