"""Web processes stay light: loading every URL's views must not import torch or diffusers (GPU workers do)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_web_process_does_not_load_torch():
    code = ("import sys, django; django.setup(); import config.urls, config.wsgi; "
            "from django.urls import get_resolver; get_resolver().url_patterns; "
            "import annotation.api.urls, annotation.dashboard.views, annotation.reading.views; "
            "print(sorted(m for m in ('torch', 'diffusers', 'timm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"DJANGO_SETTINGS_MODULE": "config.settings", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
