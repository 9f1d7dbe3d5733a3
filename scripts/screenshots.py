"""Dashboard screenshots for docs/: the study page (evaluation-panel curves) and a round page of a study that ran
rounds (e.g. a `bench/loop.py` var folder). Runs the dev server on the given var folder, logs in as a throwaway
superuser through the login form and saves full-page PNGs with headless Chromium (Playwright, system browser).

    CXR_VAR_DIR=/tmp/cxr-loop-bench-11-xxxx .venv/bin/python scripts/screenshots.py --study bench-11 --round 3
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True)
    parser.add_argument("--round", type=int, default=None, help="Round number to capture too.")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--chromium", default=os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()
    password = secrets.token_urlsafe(12)
    manage = [sys.executable, str(ROOT / "manage.py")]
    ids = subprocess.run([*manage, "shell", "-c", f"""
from django.contrib.auth import get_user_model
from annotation.models import Round, Study
User = get_user_model()
u = User.objects.filter(username="screenshots").first() or User.objects.create_superuser("screenshots", "s@example.org", "x")
u.set_password({password!r}); u.save()
s = Study.objects.get(name={args.study!r})
r = Round.objects.filter(study=s, number={args.round or 0}).first()
print("IDS", s.pk, r.pk if r else "")
"""], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split("IDS ", 1)[1].split()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([*manage, "runserver", f"127.0.0.1:{port}", "--noreload"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from playwright.sync_api import sync_playwright

        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/accounts/login/?next=/dashboard/")
            page.fill("input[name=username]", "screenshots")
            page.fill("input[name=password]", password)
            page.click("button[type=submit], input[type=submit]")
            page.wait_for_load_state("networkidle")
            targets = [(f"/dashboard/studies/{ids[0]}/", "dashboard-study.png")]
            if len(ids) > 1:
                targets.append((f"/dashboard/rounds/{ids[1]}/", "dashboard-round.png"))
            for url, name in targets:
                page.goto(base + url)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(Path(args.out) / name), full_page=True)
                print(f"wrote {Path(args.out) / name}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
