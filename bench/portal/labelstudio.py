"""Label Studio beside us in one run (`bench/portal.py --with-labelstudio`): its own cached venv under
var/labelstudio (never the project's), started on 127.0.0.1 by the peer harness's `run_ls.sh`, eight reader
accounts made with the harness's `ls_orm.py`, and the harness's client (`bench_ls.py suite`) run for one size at a
time so that its runs interleave with ours. Paths to the harness are relative to the checkout
(`../shared/peers/labelstudio`, or CXR_PEERS_DIR). Loopback only; the server is stopped in `finally`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .measure import log
from .server import REPO

VERSION = "1.23.2"
HARNESS = Path(os.environ.get("CXR_PEERS_DIR") or REPO.parent / "shared" / "peers") / "labelstudio"
ROOT = REPO / "var" / "labelstudio"
TOKEN = "benchtoken0123456789abcdef0123456789abcd"  # <= 40 characters (varchar(40) on PostgreSQL)
PORT = 8089


def venv_ensure() -> Path:
    """var/labelstudio/venv with label-studio VERSION (installed once, a minute or two; cached afterwards)."""
    python = ROOT / "venv" / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == VERSION:
        return python
    if not HARNESS.exists():
        sys.exit(f"--with-labelstudio: the peer harness is not at {HARNESS} (set CXR_PEERS_DIR)")
    log(f"installing label-studio {VERSION} into {ROOT / 'venv'} (once)")
    ROOT.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(ROOT / "venv")], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"label-studio=={VERSION}"], check=True)
    return python


def _env(db: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DJANGO_", "CXR_"))}
    env.update(LSB_ROOT=str(ROOT), LSB_DB=db, LSB_PORT=str(PORT), LSB_TOKEN=TOKEN, BENCH_TOKEN=TOKEN,
               LABEL_STUDIO_BASE_DATA_DIR=str(ROOT / f"data-{db}"), PYTHONUNBUFFERED="1")
    if db == "postgresql":  # the harness's names; our local cluster (trust auth) on 5432
        env.update(DJANGO_DB="postgresql", POSTGRE_NAME="labelstudio", POSTGRE_USER="lsbench",
                   POSTGRE_PASSWORD="lsbench", POSTGRE_HOST="127.0.0.1", POSTGRE_PORT="5432")
    return env


def _pg_ensure() -> None:
    """A fresh `labelstudio` database owned by `lsbench` on the local PostgreSQL (dropped and made again)."""
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'lsbench'").fetchone():
            conn.execute("CREATE ROLE lsbench LOGIN PASSWORD 'lsbench'")
        conn.execute("DROP DATABASE IF EXISTS labelstudio WITH (FORCE)")
        conn.execute("CREATE DATABASE labelstudio OWNER lsbench")


class LabelStudio:
    """One Label Studio server (one database) for the whole run; `suite(size)` measures one size with the
    harness's client and returns its per-size record."""

    def __init__(self, db: str, python: Path, *, seq_n: int, threads: int, iters: int, warmup: int,
                 max_seconds: float):
        self.db, self.python, self.env = db, python, _env(db)
        self.opts = {"seq_n": seq_n, "threads": threads, "iters": iters, "warmup": warmup, "max_seconds": max_seconds}
        self.tokens = ROOT / f"tokens-{db}.json"
        self.warmed = False

    def start(self) -> None:
        data = ROOT / f"data-{self.db}"
        if data.exists():
            subprocess.run(["rm", "-rf", str(data)], check=True)  # a fresh database per run
        if self.db == "postgresql":
            _pg_ensure()
        env = {**self.env, "PATH": f"{ROOT / 'venv' / 'bin'}:{self.env.get('PATH', '')}"}
        done = subprocess.run(["bash", str(HARNESS / "run_ls.sh"), "start"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=900)
        if done.returncode:
            raise RuntimeError(f"Label Studio did not start: {done.stdout[-500:]} {done.stderr[-1500:]}")
        log(f"label studio ({self.db}): {done.stdout.strip()}")
        made = subprocess.run([str(self.python), str(HARNESS / "ls_orm.py"), "make-users", "8"], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        lines = [ln for ln in made.stdout.splitlines() if ln.strip().startswith(("{", "["))]
        if made.returncode or not lines:
            raise RuntimeError(f"ls_orm make-users failed: {made.stderr[-1500:]}")
        self.tokens.write_text(lines[-1])

    @property
    def pid(self) -> int:
        return int((ROOT / f"ls-{self.db}.pid").read_text())

    def suite(self, size: int) -> dict:
        out = ROOT / f"results-{self.db}-{size}.json"
        o = self.opts
        cmd = [sys.executable, str(HARNESS / "bench_ls.py"), "--base", f"http://127.0.0.1:{PORT}", "--token", TOKEN,
               "--server-pid", str(self.pid), "--server-log", str(ROOT / f"ls-{self.db}.log"),
               "--max-seconds", str(o["max_seconds"]), "suite", "--sizes", str(size), "--seq-n", str(o["seq_n"]),
               "--threads", str(o["threads"]), "--iters", str(o["iters"]),
               "--warmup", "0" if self.warmed else str(o["warmup"]), "--tokens-file", str(self.tokens),
               "--formats", "JSON", "--export-fractions", "", "--out", str(out)]
        done = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=o["max_seconds"] * 4 + 900)
        if done.returncode:
            raise RuntimeError(f"bench_ls suite failed: {done.stderr[-2000:]}")
        self.warmed = True
        return json.loads(out.read_text())["sizes"][str(size)]

    def stop(self) -> None:
        subprocess.run(["bash", str(HARNESS / "run_ls.sh"), "stop"], env=self.env, cwd=ROOT, capture_output=True,
                       timeout=60)


def side_by_side(ours: dict, theirs: dict) -> dict:
    """Per metric ours, Label Studio's and the ratio ours / theirs (< 1 is better for latencies, > 1 for
    throughput) from one size's two records."""
    def get(rec, *path):
        for key in path:
            rec = (rec or {}).get(key)
        return rec

    metrics = {
        "seq next p50 ms": (("seq", "next_ms", "p50"), ("seq", "next_ms", "p50")),
        "seq next p99 ms": (("seq", "next_ms", "p99"), ("seq", "next_ms", "p99")),
        "seq submit p50 ms": (("seq", "submit_ms", "p50"), ("seq", "submit_ms", "p50")),
        "seq submit p99 ms": (("seq", "submit_ms", "p99"), ("seq", "submit_ms", "p99")),
        "concurrent labels/s": (("conc", "labels_per_s"), ("conc", "annotations_per_s")),
        "concurrent next p99 ms": (("conc", "next_ms", "p99"), ("conc", "next_ms", "p99")),
        "concurrent submit p99 ms": (("conc", "submit_ms", "p99"), ("conc", "submit_ms", "p99")),
        "duplicate hand-outs": (("conc", "duplicate_handouts"), ("conc", "duplicate_handouts")),
    }
    out = {}
    for name, (mine, peer) in metrics.items():
        a, b = get(ours, *mine), get(theirs, *peer)
        out[name] = {"ours": a, "labelstudio": b,
                     "ratio": round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
                     else None}
    return out
