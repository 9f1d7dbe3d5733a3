"""The simulated readers of bench/portal.py: one keep-alive HTTP client per reader (real login form, queue token
from the /portal/ page), the sequential next+submit loop, the static-file floor and the concurrent phase."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter, defaultdict

from .measure import cpu_times, summary_ms

ANSWER = {"call": "real", "confidence": 3}


class Reader:
    """One reader's browser: a keep-alive httpx client with the session and CSRF cookies."""

    QUEUE_LINK = re.compile(r'href="/portal/q/(?P<token>[^/"]+)/(?:next|done|review)/"')

    def __init__(self, base, username, password, timeout, titles):
        import httpx

        self.username, self.password, self.titles = username, password, titles
        self.client = httpx.Client(base_url=base, timeout=timeout,
                                   limits=httpx.Limits(max_keepalive_connections=1, max_connections=1))
        self.queues = {}  # study title -> queue token
        self.csrf = None

    def close(self):
        self.client.close()

    def login(self):
        r = self.client.get("/accounts/login/")
        r.raise_for_status()
        m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', r.text)
        token = m.group(1) if m else self.client.cookies.get("csrftoken")
        r = self.client.post("/accounts/login/", data={
            "username": self.username, "password": self.password, "csrfmiddlewaretoken": token, "next": ""})
        if r.status_code != 302:
            raise RuntimeError(f"login of {self.username} failed: HTTP {r.status_code} {r.text[:300]}")
        self.csrf = self.client.cookies.get("csrftoken")  # rotated on login
        r = self.client.get("/portal/")
        r.raise_for_status()
        self.queues = self.parse_home(r.text)
        missing = [t for t in self.titles if t not in self.queues]
        if missing:
            raise RuntimeError(f"no queue link for {missing} on /portal/ of {self.username}: {r.text[-1500:]}")

    def parse_home(self, html):
        """{study title: queue token}: one list item per queue, holding the study title and a /portal/q/<token>/ link."""
        import html as htmllib

        queues = {}
        for block in re.split(r"<li\b", html)[1:]:
            m = self.QUEUE_LINK.search(block)
            text = htmllib.unescape(block)
            for title in self.titles:
                if m and title in text:
                    queues[title] = m.group("token")
        return queues

    def next(self, queue):
        """-> (task token | None, status string)."""
        r = self.client.get("/portal/api/next", params={"queue": queue})
        if r.status_code != 200:
            return None, f"next_{r.status_code}"
        data = r.json()
        if data.get("done"):
            return None, "done"
        return data["task"], "ok"

    def submit(self, task):
        r = self.client.post("/portal/api/submit", headers={"X-CSRFToken": self.csrf}, json={
            "task": task, "answer": ANSWER, "submission_id": str(uuid.uuid4()), "time_spent_ms": 1000})
        if r.status_code != 200 or not r.json().get("saved"):
            return f"submit_{r.status_code}"
        return "ok"


def http_pairs(reader, queue, n, max_seconds, handed):
    """n sequential next+submit pairs; returns latencies and errors. `handed` collects task tokens."""
    import httpx

    nxt, sub, errors = [], [], Counter()
    deadline = time.perf_counter() + max_seconds
    for _ in range(n):
        if time.perf_counter() > deadline:
            errors["time_bound_hit"] += 1
            break
        try:
            t0 = time.perf_counter()
            task, st = reader.next(queue)
            nxt.append(time.perf_counter() - t0)
            if task is None:
                errors[st] += 1
                if st == "done":
                    break
                continue
            handed.append(task)
            t0 = time.perf_counter()
            st = reader.submit(task)
            sub.append(time.perf_counter() - t0)
            if st != "ok":
                errors[st] += 1
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
    return nxt, sub, errors


def http_floor(reader, n, max_seconds, path="/static/portal/portal.css"):
    """Round trip of the cheapest request the server answers: gunicorn + WSGI + client, no Django view/DB."""
    lat, status = [], Counter()
    deadline = time.perf_counter() + max_seconds
    for _ in range(n):
        if time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        resp = reader.client.get(path)
        lat.append(time.perf_counter() - t0)
        status[resp.status_code] += 1
    return {"path": path, "ms": summary_ms(lat), "status": dict(status)}


def conc_phase(readers, queue_title, iters, max_seconds):
    import httpx

    lock = threading.Lock()
    nxt, sub, errors = [], [], Counter()
    handed = {}  # reader username -> [task tokens]
    ok = [0]
    start = threading.Event()
    deadline = [0.0]

    def worker(rd):
        queue = rd.queues[queue_title]
        ln, ls, le, mine = [], [], Counter(), []
        start.wait()
        for _ in range(iters):
            if time.perf_counter() > deadline[0]:
                le["time_bound_hit"] += 1
                break
            try:
                t0 = time.perf_counter()
                task, st = rd.next(queue)
                ln.append(time.perf_counter() - t0)
                if task is None:
                    le[st] += 1
                    if st == "done":
                        break
                    continue
                mine.append(task)
                t0 = time.perf_counter()
                st = rd.submit(task)
                ls.append(time.perf_counter() - t0)
                if st == "ok":
                    with lock:
                        ok[0] += 1
                else:
                    le[st] += 1
            except httpx.HTTPError as exc:
                le[type(exc).__name__] += 1
        with lock:
            nxt.extend(ln)
            sub.extend(ls)
            errors.update(le)
            handed[rd.username] = mine

    threads = [threading.Thread(target=worker, args=(rd,), daemon=True) for rd in readers]
    for t in threads:
        t.start()
    time.sleep(0.2)
    c0 = cpu_times()
    t0 = time.perf_counter()
    deadline[0] = t0 + max_seconds
    start.set()
    for t in threads:
        t.join(max_seconds + 120)
    wall = time.perf_counter() - t0
    c1 = cpu_times()
    busy = 1 - (c1[1] - c0[1]) / max(1, c1[0] - c0[0])
    # duplicate hand-outs visible in the responses alone: one task token given to two readers
    owners = defaultdict(set)
    for user, toks in handed.items():
        for tok in toks:
            owners[tok].add(user)
    return {
        "threads": len(readers), "iters_per_thread": iters, "wall_s": round(wall, 2),
        "labels_ok": ok[0], "labels_per_s": round(ok[0] / wall, 2), "pairs_per_s": round(len(sub) / wall, 2),
        "next_ms": summary_ms(nxt), "submit_ms": summary_ms(sub), "errors": dict(errors),
        "same_token_to_two_readers": sum(1 for v in owners.values() if len(v) > 1),
        "cpu_busy_pct": round(100 * busy, 1), "handed_per_reader": {u: len(t) for u, t in handed.items()},
    }, handed

