"""Soak: the real server under a steady, paced, mixed load for a while, and nothing
about it creeps (docs/reliability.md §8).

The server is the suite's (conftest `_start`: granian, 2 worker processes with
threads, every key configured), on a new, empty audit log: SQLite in the test's tmp
directory, or a PostgreSQL database of its own (skipped when the server at
API_TEST_PG_ADMIN_URL does not answer at the start). CLIENTS threads, each on a
keep-alive session, send RATE requests/s on a fixed schedule (a late request is sent
at once: the schedule is caught up, never dropped), cycling through MIX: valid
decisions (some with an Idempotency-Key, replayed once: 200, same decision), invalid
facts (422), malformed JSON (400), a request without a key (401), batches (one
invalid item of three), reads of decisions, the ruleset, /readyz and /metrics. About
100 decisions/s are recorded.

Every ~2 s the master and each worker are sampled: RSS
(VmRSS), open file descriptors, and audit database connections (SQLite: descriptors
open on the database file, and on its -wal; PostgreSQL: pg_stat_activity rows of the
service's application name, for the whole server).

Asserted:
- every answer is exactly the one expected for its kind (2xx for every valid request,
  the exact 4xx for the invalid ones, the batch's per-item statuses); no request went
  unanswered; one answer in CONFORMANCE_EVERY is also checked against /openapi.json;
- no worker was replaced, and no process of the server replaced or added (at every
  sample and at the end); the server exits 0 on SIGTERM with no traceback and no key
  in its output (conftest `_finish`);
- the pace held: every scheduled request was sent within 1.25 x the duration + 15 s;
- after a warm-up (the first WARMUP of the samples), for each process: RSS never
  above 1.10 x the median of the warm-up samples; open descriptors and database
  connections never above the warm-up's maximum by more than 10%, with a little slack
  for what moves without leaking (descriptors: the load's CLIENTS keep-alive
  connections, which may all land on one worker; SQLite connections: 1 per process;
  PostgreSQL: 1 per process of the server);
- the audit log holds exactly the decisions answered 2xx (201s and the batches'
  201 items; the replays' ids among them), nothing else, nothing twice; and
  `deficiency audit verify` passes over every record.

Default run: 60 s per backend. `-m slow`: 600 s per backend.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.api.conftest import CAR, PG_ADMIN_URL, SHORT_SALE, facts, new_pg_database
from tests.api.test_durability import audit_verify

from .conftest import Figures, Live, _finish, _start, auth

RATE = 160  # request slots per second (a replay slot sends two requests)
CLIENTS = 8
SAMPLE_EVERY = 2.0  # seconds
WARMUP = 0.2  # the first fifth of the samples
RSS_GROWTH = 1.10
FD_GROWTH = 1.10
CONFORMANCE_EVERY = 50
CI_SECONDS = 60
SLOW_SECONDS = 600

#: One cycle of request kinds (RATE slots/s go through it in order).
MIX = ("decide", "read_one", "decide", "invalid", "decide", "list", "decide", "batch",
       "decide", "ruleset", "decide", "replay", "decide", "malformed", "decide", "read_one",
       "decide", "unauthorized", "decide", "ops")


# ------------------------------------------------------------------ the load


@dataclass
class Answered:
    kind: str
    sent: float  # monotonic, when the request was sent
    late: float  # seconds after its scheduled time
    latency: float  # seconds


@dataclass
class Load:
    live: Live
    seconds: float
    answers: list[Answered] = field(default_factory=list)
    decided: list[str] = field(default_factory=list)  # every decision id answered 2xx
    replayed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    conformance_checked: int = 0
    _checks: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, start: float) -> None:
        slots = itertools.count()
        end = start + self.seconds

        def client() -> None:
            session = requests.Session()
            while True:
                i = next(slots)
                at = start + i / RATE
                if at >= end:
                    return
                delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    self.slot(session, i, at)
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    self.fail(f"slot {i} ({MIX[i % len(MIX)]}): {type(exc).__name__}: {exc}")
                    session.close()
                    session = requests.Session()

        threads = [threading.Thread(target=client, daemon=True, name=f"soak-{n}")
                   for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.seconds + 120)
        assert not any(t.is_alive() for t in threads), "a load thread is stuck"

    def fail(self, message: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(message)
        elif len(self.failures) == 20:
            self.failures.append("... (more)")

    # -- one request ---------------------------------------------------------------------

    def call(self, session: requests.Session, kind: str, at: float, method: str, path: str,
             *, body: Any = None, key: str | None = "all",
             headers: dict[str, str] | None = None) -> requests.Response:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        sent = time.monotonic()
        r = session.request(method, self.live.base + path, data=data, timeout=30, headers={
            **({"Content-Type": "application/json"} if data is not None else {}),
            **(auth(key) if key else {}), **(headers or {})})
        self.answers.append(Answered(kind, sent, max(0.0, sent - at),
                                     time.monotonic() - sent))
        with self._lock:
            self.statuses[f"{kind} {r.status_code}"] += 1
        if next(self._checks) % CONFORMANCE_EVERY == 0:
            self.live.conformance.check(method, path.split("?")[0], r.status_code,
                                        r.headers, r.content)
            self.conformance_checked += 1
        return r

    def expect(self, r: requests.Response, status: int, what: str) -> bool:
        if r.status_code != status:
            self.fail(f"{what}: expected {status}, got {r.status_code} {r.text[:300]}")
            return False
        media = "application/problem+json" if status >= 400 else "application/json"
        if not r.headers.get("Content-Type", "").startswith(media):
            self.fail(f"{what}: {status} as {r.headers.get('Content-Type')}")
            return False
        return True

    def slot(self, session: requests.Session, i: int, at: float) -> None:
        kind = MIX[i % len(MIX)]
        doc = facts(SHORT_SALE if i % 3 == 0 else CAR, loan__id=f"soak-{i}",
                    loan__unpaid_balance=f"{10_000 + i % 90_000}.{i % 100:02d}")
        if kind == "decide":
            r = self.call(session, kind, at, "POST", "/v1/decisions", body=doc, key="decider")
            if self.expect(r, 201, kind):
                self.decided.append(r.json()["decision_id"])
        elif kind == "replay":
            headers = {"Idempotency-Key": f"soak-key-{i}"}
            first = self.call(session, kind, at, "POST", "/v1/decisions", body=doc,
                              key="decider", headers=headers)
            if not self.expect(first, 201, "keyed decision"):
                return
            self.decided.append(first.json()["decision_id"])
            again = self.call(session, kind, at, "POST", "/v1/decisions", body=doc,
                              key="decider", headers=headers)
            if self.expect(again, 200, "replay") and again.json() != first.json():
                self.fail(f"replay {i}: another decision {again.text[:200]}")
            self.replayed.append(again.json()["decision_id"])
        elif kind == "invalid":
            bad = {**facts(doc, jurisdiction="XX"), "sid": 1}
            r = self.call(session, kind, at, "POST", "/v1/decisions", body=bad, key="decider")
            if self.expect(r, 422, kind):
                paths = sorted(e["path"] for e in r.json()["errors"])
                if paths != ["jurisdiction", "sid"]:
                    self.fail(f"invalid {i}: paths {paths}")
        elif kind == "malformed":
            r = self.call(session, kind, at, "POST", "/v1/decisions",
                          body=json.dumps(doc).encode()[:-7], key="decider")
            self.expect(r, 400, kind)
        elif kind == "unauthorized":
            r = self.call(session, kind, at, "POST", "/v1/decisions", body=doc, key=None)
            self.expect(r, 401, kind)
        elif kind == "batch":
            items = [doc, facts(CAR, loan__id=f"soak-{i}-b"), {"loan": {"id": 5}}]
            r = self.call(session, kind, at, "POST", "/v1/decisions/batch",
                          body={"items": items}, key="decider")
            if self.expect(r, 200, kind):
                results = r.json()["results"]
                if [x["status"] for x in results] != [201, 201, 422]:
                    self.fail(f"batch {i}: {[x['status'] for x in results]}")
                self.decided.extend(x["decision"]["decision_id"] for x in results
                                    if x["status"] == 201)
        elif kind == "read_one":
            recent = self.decided[-1] if self.decided else None
            if recent is None:
                r = self.call(session, kind, at, "GET", "/v1/ruleset", key="auditor")
                self.expect(r, 200, kind)
                return
            r = self.call(session, kind, at, "GET", f"/v1/decisions/{recent}", key="auditor")
            if self.expect(r, 200, kind) and r.json()["decision_id"] != recent:
                self.fail(f"read {recent}: got {r.json()['decision_id']}")
        elif kind == "list":
            r = self.call(session, kind, at, "GET", "/v1/decisions?limit=5", key="auditor")
            if self.expect(r, 200, kind) and len(r.json()["decisions"]) > 5:
                self.fail(f"list {i}: more than 5")
        elif kind == "ruleset":
            r = self.call(session, kind, at, "GET", "/v1/ruleset", key="decider")
            self.expect(r, 200, kind)
        elif kind == "ops":
            path = "/metrics" if i % 40 == 19 else "/readyz"
            r = self.call(session, kind, at, "GET", path, key=None)
            if r.status_code != 200:
                self.fail(f"{path}: {r.status_code} {r.text[:300]}")
        else:  # pragma: no cover
            raise AssertionError(kind)


# ------------------------------------------------------------------ the samples


@dataclass
class Sample:
    at: float  # seconds since the load started
    rss_kib: dict[str, int]  # by process role
    fds: dict[str, int]
    db: dict[str, int]  # SQLite: descriptors on the database file, by process
    wal: dict[str, int]  # SQLite: descriptors on the -wal file
    pg: int | None  # PostgreSQL: the service's connections (all processes)
    workers: set[int]
    roles: set[str]


def _process_group(pgid: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
                if int(stat[2]) == pgid:
                    members.add(int(entry.name))
    return members


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return targets


class Sampler:
    def __init__(self, live: Live, db_file: Path | None,
                 pg_count: Callable[[], int] | None) -> None:
        self.live = live
        self.db_file = str(db_file) if db_file else None
        self.pg_count = pg_count
        self.samples: list[Sample] = []
        self.roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="soak-sampler")
        self.errors: list[str] = []

    def processes(self) -> dict[str, int]:
        """Role -> pid: the master, each worker, and the other processes of the server's
        process group (any process the server started)."""
        assert self.live.server.proc is not None
        master = self.live.server.proc.pid
        workers = self.live.workers()
        out = {"master": master}
        for pid in sorted(_process_group(master) - {master}):
            if pid not in self.roles:
                role = "worker" if pid in workers else "helper"
                n = sum(1 for r in self.roles.values() if r.startswith(role))
                self.roles[pid] = f"{role}{n + 1}"
            out[self.roles[pid]] = pid
        return out

    def sample(self, started: float) -> None:
        procs = self.processes()
        rss, fds, db, wal = {}, {}, {}, {}
        for role, pid in procs.items():
            rss[role] = _rss_kib(pid)
            targets = _fd_targets(pid)
            fds[role] = len(targets)
            if self.db_file:
                db[role] = targets.count(self.db_file)
                wal[role] = targets.count(self.db_file + "-wal")
        pg = self.pg_count() if self.pg_count else None
        self.samples.append(Sample(time.monotonic() - started, rss, fds, db, wal, pg,
                                   self.live.workers(), set(procs)))

    def start(self, started: float) -> None:
        self._started = started
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            try:
                self.sample(self._started)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


# ------------------------------------------------------------------ flatness


def creep(series: list[int], *, rule: str, slack: int = 0) -> str | None:
    """Why `series` (one value per sample) is not flat after the warm-up, or None.

    rss: max(after) <= RSS_GROWTH x median(warm-up); count: max(after) <=
    max(max(warm-up) x FD_GROWTH, max(warm-up) + slack)."""
    split = max(1, round(len(series) * WARMUP))
    warm, after = series[:split], series[split:]
    if not after:
        return f"too few samples ({len(series)})"
    if rule == "rss":
        limit = RSS_GROWTH * statistics.median(warm)
        what = f"{RSS_GROWTH:.2f} x warm-up median {statistics.median(warm):.0f}"
    else:
        limit = max(max(warm) * FD_GROWTH, max(warm) + slack)
        what = f"warm-up max {max(warm)} (+10%, at least +{slack})"
    peak = max(after)
    if peak > limit:
        at = split + after.index(peak)
        return f"{peak} at sample {at} of {len(series)} > {limit:.0f} ({what})"
    return None


def growth_mib_per_hour(at: list[float], rss_kib: list[int]) -> float:
    """The least-squares slope of RSS after the warm-up, in MiB per hour: over hours it
    shows a leak too slow for the ratio to the warm-up (a short run makes it noisy)."""
    split = max(1, round(len(at) * WARMUP))
    if len(at) - split < 2:
        return float("nan")
    slope, _ = statistics.linear_regression(at[split:], rss_kib[split:])  # KiB per s
    return slope * 3600 / 1024


def test_the_flatness_rules_catch_growth_and_tolerate_noise() -> None:
    """The rules the soak applies, on made-up series: a leak trips them, noise does not."""
    flat = [100_000 + (i * 7919) % 3000 for i in range(30)]
    assert creep(flat, rule="rss") is None
    leaking = [100_000 + 800 * i for i in range(30)]  # +24% over the run
    assert creep(leaking, rule="rss") is not None
    step = [100_000] * 20 + [112_000] * 10
    assert creep(step, rule="rss") is not None
    assert creep([30, 34, 31, 29, 33, 30] * 5, rule="count", slack=CLIENTS) is None
    assert creep([30] * 6 + list(range(30, 54)), rule="count", slack=CLIENTS) is not None
    assert creep([2, 3, 3] + [3] * 27, rule="count", slack=1) is None
    assert creep([2, 3, 3] + [3] * 20 + [5] * 7, rule="count", slack=1) is not None
    seconds = [2.0 * i for i in range(30)]
    assert abs(growth_mib_per_hour(seconds, flat)) < 200  # noise: ±1.5 MiB in a minute
    assert round(growth_mib_per_hour(seconds, leaking)) == round(400 * 3600 / 1024)


# ------------------------------------------------------------------ the backends


def _pg_reachable() -> str | None:
    engine = sa.create_engine(PG_ADMIN_URL, poolclass=sa.NullPool,
                              connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        return str(exc.orig).strip().splitlines()[0]
    finally:
        engine.dispose()
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The audit URL for the soak's server: a new, empty audit log."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/audit/audit.db"
        return
    reason = _pg_reachable()
    if reason is not None:
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({reason}): the "
                    "PostgreSQL soak needs it; the SQLite soak covers the rest")
    with new_pg_database() as url:
        yield url


def _recorded(url: str) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(
                sa.text("SELECT decision_id FROM audit_records"))]
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        return []  # no table yet: nothing recorded
    finally:
        engine.dispose()


def _pg_counter(url: str) -> Callable[[], int]:
    database = make_url(url).database
    engine = sa.create_engine(PG_ADMIN_URL, poolclass=sa.NullPool)

    def count() -> int:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND "
                "application_name = 'deficiency-audit'"), {"db": database}).scalar_one())

    return count


# ------------------------------------------------------------------ the test


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0


def soak(tmp_path: Path, audit_url: str, seconds: float, figures: Figures) -> None:
    name = "postgresql" if audit_url.startswith("postgresql") else "sqlite"
    live = _start(tmp_path / "server", audit_url=audit_url)
    finished = False
    try:
        db_file = Path(make_url(audit_url).database) if name == "sqlite" else None
        sampler = Sampler(live, db_file, _pg_counter(audit_url) if name != "sqlite" else None)
        load = Load(live, seconds)
        started = time.monotonic() + 0.5
        sampler.sample(started)  # idle, before the load
        sampler.start(started)
        try:
            load.run(started)
        finally:
            sampler.stop()
        wall = time.monotonic() - started
        sampler.sample(started)  # after the load
        _finish(live, f"soak ({name}, {seconds:g} s)")
        finished = True
    finally:
        if not finished:
            live.server.kill()

    samples = sampler.samples
    recorded = _recorded(audit_url)
    verify = audit_verify(_verify_config(tmp_path, audit_url))
    latencies = [a.latency for a in load.answers]
    thirds = [latencies[k * len(latencies) // 3:(k + 1) * len(latencies) // 3]
              for k in range(3)]

    roles = list(samples[-1].rss_kib)
    lines = [f"soak ({name}): {seconds:g} s at {RATE} slots/s, {CLIENTS} clients: "
             f"{len(load.answers)} requests in {wall:.0f} s ({len(load.answers) / wall:.0f}/s), "
             f"{len(load.decided)} decisions ({len(load.decided) / wall:.0f}/s), "
             f"{len(load.replayed)} replays, {len(samples)} samples every "
             f"{SAMPLE_EVERY:g} s; latency p50 {_percentile(latencies, 0.5):.1f} ms, p99 "
             f"{_percentile(latencies, 0.99):.1f} ms, max {_percentile(latencies, 1.0):.0f} "
             f"ms (p99 by third: " + ", ".join(f"{_percentile(t, 0.99):.1f}" for t in thirds)
             + f" ms); sent late by p99 {_percentile([a.late for a in load.answers], 0.99):.0f}"
             f" ms; {load.conformance_checked} answers checked against /openapi.json",
             "  statuses " + ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items()))]
    for role in roles:
        rss = [s.rss_kib.get(role, 0) for s in samples]
        fds = [s.fds.get(role, 0) for s in samples]
        slope = growth_mib_per_hour([s.at for s in samples[1:-1]], rss[1:-1])
        line = (f"  {role:<8} RSS MiB start {rss[1] / 1024:.1f} end {rss[-1] / 1024:.1f} "
                f"max {max(rss) / 1024:.1f} (after warm-up {slope:+.1f} MiB/h by least "
                f"squares); fds start {fds[1]} end {fds[-1]} max {max(fds)}")
        if db_file is not None:
            db = [s.db.get(role, 0) for s in samples]
            wal = [s.wal.get(role, 0) for s in samples]
            line += f"; db connections max {max(db)} end {db[-1]} (-wal max {max(wal)})"
        lines.append(line)
    if name == "postgresql":
        pg = [s.pg or 0 for s in samples]
        lines.append(f"  PostgreSQL connections (pg_stat_activity): start {pg[1]} end "
                     f"{pg[-1]} max {max(pg)}")
    lines.append(f"  audit log: {len(recorded)} records; verify: {verify.stdout.strip()}")
    for line in lines:
        figures.add(line)

    # -- what must hold ------------------------------------------------------------------
    assert load.failures == [], "\n".join(load.failures)
    assert sampler.errors == [], sampler.errors
    expected_requests = int(seconds * RATE) + int(seconds * RATE) // len(MIX)
    assert len(load.answers) >= expected_requests - CLIENTS, (len(load.answers),
                                                             expected_requests)
    assert wall < seconds * 1.25 + 15, f"the server could not keep the pace ({wall:.0f} s)"
    boot = samples[0].workers
    assert len(boot) == 2 and all(s.workers == boot for s in samples), (
        "a worker was replaced: " + str([sorted(s.workers) for s in samples]))
    assert all(s.roles == samples[0].roles for s in samples), (
        "a process of the server was replaced or appeared: "
        + str(sorted(sampler.roles.items())))

    during = samples[1:-1]  # the samples taken while the load ran
    assert len(during) >= 10, len(during)
    problems = []
    for role in roles:
        checks = [("RSS KiB", [s.rss_kib[role] for s in during], "rss", 0),
                  ("open fds", [s.fds[role] for s in during], "count", CLIENTS)]
        if db_file is not None:
            checks += [("db connections", [s.db[role] for s in during], "count", 1),
                       ("-wal descriptors", [s.wal[role] for s in during], "count", 1)]
        for what, series, rule, slack in checks:
            why = creep(series, rule=rule, slack=slack)
            if why:
                problems.append(f"{role} {what}: {why}; series {series}")
    if name == "postgresql":
        # For the whole server: one more connection per process holding a pool.
        why = creep([s.pg or 0 for s in during], rule="count", slack=len(roles) - 1)
        if why:
            problems.append(f"PostgreSQL connections: {why}")
    assert problems == [], "\n".join(problems)

    assert len(recorded) == len(set(recorded)), "a decision recorded twice"
    assert set(recorded) == set(load.decided), (
        f"{len(set(load.decided) - set(recorded))} answered 2xx but not recorded, "
        f"{len(set(recorded) - set(load.decided))} recorded but never answered 2xx")
    assert len(load.decided) == len(set(load.decided))
    assert set(load.replayed) <= set(load.decided)
    assert verify.returncode == 0 and verify.stdout.startswith("OK:"), (
        verify.stdout + verify.stderr)


def _verify_config(tmp_path: Path, audit_url: str) -> Path:
    config = tmp_path / "verify.yaml"
    config.write_text(f"audit:\n  url: {audit_url}\n")
    return config


def test_a_steady_mixed_load_leaves_nothing_creeping(backend: str, tmp_path: Path,
                                                     figures: Figures) -> None:
    soak(tmp_path, backend, CI_SECONDS, figures)


@pytest.mark.slow
def test_a_steady_mixed_load_leaves_nothing_creeping_long(backend: str, tmp_path: Path,
                                                          figures: Figures) -> None:
    soak(tmp_path, backend, SLOW_SECONDS, figures)
