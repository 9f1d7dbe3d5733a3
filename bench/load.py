"""Load test: 64 concurrent simulated readers against gunicorn + PostgreSQL over HTTP, then the invariants.

Each reader is a thread with its own keep-alive connection and session, doing what the portal's JavaScript does: GET the next
case, POST the answer (with a client-generated submission id), until its queue is empty or the time budget ends.
Reports throughput and p50 / p99 latency of next-task and submit, then checks the database: no acknowledged label
lost, none stored twice, no case read by more than K readers, every reader's queue balanced (each block of 10
realism cases within ±1 of the study's real:synthetic ratio). Only 127.0.0.1; bounded in cases and seconds.

With `--think LO,HI` each reader takes a think time drawn uniformly from LO–HI seconds per case (seeded per
reader) between receiving a case and submitting it, as a radiologist reading at their pace, and opens their list at
a time drawn from 0–HI seconds (arrivals spread, not one burst); without it readers never think and all start at
once (the saturation run). Also the server's CPU (gunicorn master and workers, user + system) per stored label and
labels/s per server core busy.

    python bench/load.py                                   # 64 readers, 2,000 images, K = 2, PostgreSQL
    python bench/load.py --think 3,10 --readers 256        # readers at human pace
    python bench/load.py --readers 16 --images 400 --db sqlite
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

from common.processes import django_script, free_port, secret_key_for_run

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
PG_DB = "cxr_bench_load"
CSRF = "loadtest" * 4  # a 32-character CSRF secret, sent as cookie and header

SETUP = r"""
import json, sys
sys.path.insert(0, "bench")
from common.reading_study import reading_study
print("SETUP " + json.dumps(reading_study("load", int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
"""

CHECK = r"""
import json, sys
from collections import Counter, defaultdict
from annotation.models import Label, ReadingCase, ReadingTask
acked = set(json.load(open(sys.argv[1])))
k = int(sys.argv[2])
labels = list(Label.objects.filter(task__round__study__name="load").values_list("submission_id", "task__case_id",
                                                                                 "reader_id"))
stored = Counter(str(s) for s, _, _ in labels)
per_case = defaultdict(set)
for _, case, reader in labels:
    per_case[case].add(reader)
blocks_off = 0
blocks = 0
for reader in {r for _, _, r in labels}:
    slots = list(ReadingTask.objects.filter(reader_id=reader, round__study__name="load", is_catch=False,
                                            repeat_of__isnull=True).order_by("position").values_list("slot", flat=True))
    for start in range(0, len(slots) - len(slots) % 10, 10):
        blocks += 1
        blocks_off += abs(slots[start:start + 10].count("real") - 5) > 1
print("CHECK " + json.dumps({
    "acknowledged": len(acked), "stored": len(labels),
    "lost": len(acked - set(stored)), "stored_twice": sum(1 for n in stored.values() if n > 1),
    "cases_over_k": sum(1 for readers in per_case.values() if len(readers) > k),
    "cases_taken_over_capacity": ReadingCase.objects.filter(round__study__name="load", taken__gt=k).count(),
    "unbalanced_blocks": blocks_off, "blocks": blocks,
}))
"""


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class _Reply:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.content = status, body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}: {self.text[:200]}")


class LightClient:
    """A reader's browser reduced to what the load needs: one keep-alive connection (`http.client`), the session
    and CSRF cookies and header, JSON in and out. It costs the load generator a fraction of httpx's CPU per request,
    so on a small machine the server, not the clients sharing its cores, is what is measured. A connection the
    server closed while the reader was idle is reopened and the request sent again (GETs are safe to repeat; a
    submit carries its submission id, so a repeat is acknowledged as a replay, never stored twice)."""

    def __init__(self, port: int, session: str) -> None:
        self.port = port
        self.headers = {"Cookie": f"sessionid={session}; csrftoken={CSRF}", "X-CSRFToken": CSRF,
                        "Referer": f"http://127.0.0.1:{port}/portal/"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def _request(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> _Reply:
        def send() -> _Reply:
            self.conn.request(method, url, body=body, headers={**self.headers, **(headers or {})})
            response = self.conn.getresponse()
            return _Reply(response.status, response.read())

        try:
            return send()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()  # http.client opens a closed connection again on the next request
            return send()

    def get(self, path: str, params: dict) -> _Reply:
        return self._request("GET", path + "?" + urllib.parse.urlencode(params))

    def post(self, path: str, json: dict) -> _Reply:  # noqa: A002 - httpx's keyword
        return self._request("POST", path, body=_json_bytes(json), headers={"Content-Type": "application/json"})

    def close(self) -> None:
        self.conn.close()


def _json_bytes(value) -> bytes:
    return json.dumps(value).encode()


def _server_cpu(pid: int) -> float:
    """User + system CPU seconds of the gunicorn master and its workers so far."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=64)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per gunicorn worker (the shipped shape: 4 x 2)")
    parser.add_argument("--worker-class", choices=["gthread", "sync"], default="gthread",
                        help="gunicorn worker class: gthread (threads, keep-alive) or sync (one request at a time, "
                             "a connection per request, so each goes to a free worker)")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--think", default="0", help="LO,HI seconds a reader spends on each case (default 0: never).")
    parser.add_argument("--client", choices=["light", "httpx"], default="light",
                        help="the readers' HTTP client: one keep-alive http.client connection each (default: cheap, "
                             "so the server is what is measured) or httpx (the earlier runs' client)")
    parser.add_argument("--redis", default="", metavar="URL",
                        help="Redis for the server (broker, cache, sessions through the cache), as in production; "
                             "default none: the embedded broker, sessions in the database")
    parser.add_argument("--label", default="", help="Row label in the results (default: from the settings).")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = parser.parse_args()
    think_lo, think_hi = (float(v) for v in (args.think.split(",") + [args.think])[:2])
    import httpx

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"cxr-load-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL", "DATABASE_URL")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", DJANGO_SECRET_KEY=secret_key_for_run(), CXR_VAR_DIR=str(work),
               CXR_CLAIM_TIMEOUT_S="3600")
    if args.redis:  # the production stack's: broker, cache and sessions (cached_db) on Redis
        env["REDIS_URL"] = args.redis
    if args.db == "postgres":
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_DB}")
            conn.execute(f"CREATE DATABASE {PG_DB}")
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{PG_DB}"
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput", "-v", "0"], env=env, cwd=ROOT,
                   check=True)
    readers = json.loads(django_script(env, SETUP, str(args.readers), str(args.images), str(args.k))
                         .split("SETUP ", 1)[1])
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "config.wsgi", "-b",
                               f"127.0.0.1:{port}", "-w", str(args.workers), "--threads", str(args.threads), "-k",
                               args.worker_class, "--log-level", "warning"], env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/accounts/login/", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    sys.exit("gunicorn did not start")
                time.sleep(0.3)
        lat_next, lat_submit, acked, errors = [], [], [], []
        lock = threading.Lock()
        barrier = threading.Barrier(len(readers))
        stop_at = [0.0]

        def reader_loop(r: dict) -> None:
            client = (LightClient(port, r["session"]) if args.client == "light" else
                      httpx.Client(base_url=base, timeout=30, cookies={"sessionid": r["session"], "csrftoken": CSRF},
                                   headers={"X-CSRFToken": CSRF, "Referer": base + "/portal/"}))
            mine_next, mine_submit, mine_acked = [], [], []
            barrier.wait()
            try:
                rng = random.Random(r["user"])
                if think_hi > 0:  # people do not all open their list in the same millisecond: arrivals spread
                    time.sleep(rng.uniform(0, think_hi))
                while time.monotonic() < stop_at[0]:
                    t0 = time.perf_counter()
                    nxt = client.get("/portal/api/next", params={"queue": r["queue"]})
                    mine_next.append(time.perf_counter() - t0)
                    nxt.raise_for_status()
                    data = nxt.json()
                    if data.get("done"):
                        break
                    if think_hi > 0:  # the reader looks at the case before answering
                        pause = rng.uniform(think_lo, think_hi)
                        if time.monotonic() + pause >= stop_at[0]:
                            break
                        time.sleep(pause)
                    sid = str(uuid.uuid4())
                    body = {"task": data["task"], "answer": {"call": "real", "confidence": 3}, "submission_id": sid,
                            "time_spent_ms": 1000}
                    t0 = time.perf_counter()
                    sub = client.post("/portal/api/submit", json=body)
                    mine_submit.append(time.perf_counter() - t0)
                    if sub.status_code == 200:
                        mine_acked.append(sid)
                    else:
                        with lock:
                            errors.append(f"submit {sub.status_code}: {sub.text[:200]}")
            except Exception as exc:  # recorded: the result says how many readers hit errors
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                client.close()
                with lock:
                    lat_next.extend(mine_next)
                    lat_submit.extend(mine_submit)
                    acked.extend(mine_acked)

        threads = [threading.Thread(target=reader_loop, args=(r,)) for r in readers]
        cpu0, client0 = _server_cpu(server.pid), time.process_time()
        started = time.perf_counter()
        stop_at[0] = time.monotonic() + args.max_seconds
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        server_cpu, client_cpu = _server_cpu(server.pid) - cpu0, time.process_time() - client0
    finally:
        server.terminate()
        server.wait(timeout=30)
    acked_file = work / "acked.json"
    acked_file.write_text(json.dumps(acked))
    check = json.loads(django_script(env, CHECK, str(acked_file), str(args.k)).split("CHECK ", 1)[1])
    ms = 1000.0
    result = {
        "benchmark": "load", "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": vars(args),
        "rows": [{"db": args.db, "readers": args.readers, "images": args.images, "k": args.k,
                  "labels": len(acked), "wall_s": round(wall, 1), "labels_per_s": round(len(acked) / wall, 1),
                  "next_p50_ms": round(_percentile(lat_next, 0.5) * ms, 1),
                  "next_p99_ms": round(_percentile(lat_next, 0.99) * ms, 1),
                  "submit_p50_ms": round(_percentile(lat_submit, 0.5) * ms, 1),
                  "submit_p99_ms": round(_percentile(lat_submit, 0.99) * ms, 1),
                  "think_s": args.think, "label": args.label or f"{args.readers} readers, think {args.think} s",
                  "server_cpu_s": round(server_cpu, 1),
                  "cpu_ms_per_label": round(1000 * server_cpu / len(acked), 1) if acked else None,
                  "server_cores_busy": round(server_cpu / wall, 2),
                  "labels_per_s_per_core": round(len(acked) / server_cpu, 1) if server_cpu else None,
                  "client": args.client, "gunicorn": f"{args.worker_class} {args.workers}x{args.threads}", "redis": bool(args.redis),
                  "client_cpu_ms_per_label": round(1000 * client_cpu / len(acked), 1) if acked else None,
                  "errors": len(errors), **check}],
        "errors_sample": errors[:10],
        "mean_next_ms": round(statistics.mean(lat_next) * ms, 1) if lat_next else None,
    }
    row = result["rows"][0]
    print(" | ".join(f"{k}={v}" for k, v in row.items()))
    ok = (check["lost"] == 0 and check["stored_twice"] == 0 and check["cases_over_k"] == 0
          and check["cases_taken_over_capacity"] == 0 and check["unbalanced_blocks"] == 0 and not errors)
    print("invariants: " + ("all hold" if ok else "VIOLATED"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
