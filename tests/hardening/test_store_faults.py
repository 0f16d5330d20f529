"""Store faults against the real server (docs/reliability.md §6).

- PostgreSQL itself stopped (`pg_ctlcluster … stop -m fast`) while 12 clients post
  decisions, then started again: during the outage every decision is refused with 503
  problem+json (never a 2xx, never another 5xx, no dropped connection) and `/readyz`
  fails; once PostgreSQL is back the service recovers by itself, within seconds,
  without a worker being replaced; everything answered 2xx is in the log exactly once,
  retries of refused requests (same Idempotency-Key) are recorded at most once, and
  the chain verifies.
- SQLite under contention: 2 workers, 16 keep-alive
  clients posting (a third with an Idempotency-Key) and reading back for 60 s: not one
  5xx or 503, no "database is locked" anywhere, every 2xx recorded once, the chain
  verifies.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy.engine import make_url

from tests.api.servers import TcpProxy
from tests.api.test_durability import audit_verify

from .conftest import Figures, Live, _finish, _start, auth
from .load import Load, Outcome, answer, check_recorded, read_store

PROBLEM = "application/problem+json"
STORE_UNAVAILABLE = "urn:deficiency:problem:store-unavailable"
#: How long PostgreSQL stays down, and the most its return may take to be noticed.
OUTAGE_SECONDS = 4.0
RECOVERY_LIMIT = 15.0


# ------------------------------------------------------------------ PostgreSQL, for real


def _cluster() -> list[str]:
    """`pg_ctlcluster --skip-systemctl-redirect VERSION main` for the local cluster."""
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*")) \
        if Path("/etc/postgresql").is_dir() else []
    if shutil.which("pg_ctlcluster") is None or len(versions) != 1:
        pytest.skip("needs the local PostgreSQL cluster and pg_ctlcluster to stop it")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main"]


def pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"],
                          timeout=30).returncode == 0


@contextlib.contextmanager
def postgresql_stopped() -> Iterator[None]:
    """Stop the real PostgreSQL server (fast: sessions are terminated, transactions
    rolled back) and ALWAYS start it again, whatever happens meanwhile."""
    cluster = _cluster()
    try:
        subprocess.run([*cluster, "stop", "-m", "fast"], check=True, capture_output=True,
                       timeout=120)
        assert not pg_ready()
        yield
    finally:
        subprocess.run([*cluster, "start"], capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while not pg_ready():
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.1)


def _behind_proxy(tmp_path: Path, pg_database: str, **start: Any) -> tuple[TcpProxy, Live]:
    """The real server with its audit log on the session's PostgreSQL database, reached
    through a proxy the test controls."""
    url = make_url(pg_database)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.restore()
    via = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        return proxy, _start(tmp_path, audit_url=via, **start)
    except BaseException:
        proxy.cut()
        raise


def _stop_behind_proxy(live: Live, proxy: TcpProxy) -> None:
    live.server.kill()
    proxy.resume()
    proxy.cut()


def _await_recovery(load: Load, since: float, what: str) -> float:
    """Wait until 200 decisions started after `since` and after the last refusal have
    been answered 201; returns when the last refusal ended."""
    deadline = since + RECOVERY_LIMIT + 15
    while True:
        outcomes = list(load.outcomes)
        last_refusal = max((o.ended for o in outcomes if not o.ok), default=0.0)
        if sum(o.ok and o.started > max(last_refusal, since) for o in outcomes) >= 200:
            return last_refusal
        assert time.monotonic() < deadline, (
            f"not recovered {deadline - since:.0f} s after {what}: {load.statuses()}")
        time.sleep(0.05)


def _readyz(live: Live) -> int:
    return requests.get(live.base + "/readyz", timeout=10).status_code


def _is_refusal(o: Outcome) -> bool:
    """A well-formed 'the audit log is unavailable' answer."""
    return (o.status == 503 and o.content_type == PROBLEM
            and o.problem_type == STORE_UNAVAILABLE and o.retry_after is not None)


@dataclass
class Outage:
    """One stop and start of PostgreSQL, as seen from the test (monotonic times)."""

    stopping: float  # `stop` called
    down: float = 0.0  # stopped: every session terminated
    starting: float = 0.0  # `start` called
    up: float = 0.0  # accepting connections again
    ready_after: float | None = None  # /readyz 200 again, seconds after `up`
    readyz: Counter[int] = field(default_factory=Counter)


@pytest.mark.parametrize("outages,seconds", [
    pytest.param(1, OUTAGE_SECONDS, id="once"),
    pytest.param(3, 10.0, id="3x10s", marks=pytest.mark.slow),
])
def test_postgresql_stopped_under_load_refuses_then_recovers_by_itself(
        tmp_path: Path, pg_database: str, figures: Figures, outages: int,
        seconds: float) -> None:
    url = make_url(pg_database)
    if (url.host, url.port or 5432) not in (("127.0.0.1", 5432), ("localhost", 5432)):
        pytest.skip("the test database is not the local cluster this test can stop")
    _cluster()
    live = _start(tmp_path, audit_url=pg_database)
    # The PostgreSQL database is the session's: loan ids and keys unique to this run.
    load = Load(live.base, prefix=f"pgdown-{uuid.uuid4().hex[:8]}", clients=12, key_every=2)
    cycles: list[Outage] = []
    try:
        with load:
            load.wait_for_answers(200, 60)
            for _ in range(outages):
                cycles.append(_outage(live, load, seconds))
        outcomes = list(load.outcomes)

        # Nothing but 201 and the store-unavailable problem, and every request answered.
        statuses = Counter(o.status for o in outcomes)
        assert set(statuses) <= {201, 503}, statuses
        assert load.unanswered() == [], [o.error for o in load.unanswered()][:5]
        refusals = [o for o in outcomes if o.status == 503]
        assert all(_is_refusal(o) for o in refusals), next(
            o for o in refusals if not _is_refusal(o))
        assert all(o.ok for o in outcomes if o.ended < cycles[0].stopping)
        results = []
        for i, cycle in enumerate(cycles):
            until = cycles[i + 1].stopping if i + 1 < len(cycles) else float("inf")
            # While PostgreSQL was down: only refusals, and not ready.
            during = [o for o in outcomes if o.started >= cycle.down
                      and o.ended <= cycle.starting]
            assert len(during) >= 50, len(during)
            assert all(o.status == 503 for o in during), Counter(o.status for o in during)
            assert set(cycle.readyz) == {503}, cycle.readyz
            # Back by itself: ready, then nothing but 201 from some moment on.
            assert cycle.ready_after is not None and cycle.ready_after < RECOVERY_LIMIT
            last_refusal = max(o.ended for o in refusals if cycle.stopping <= o.started < until)
            recovery = last_refusal - cycle.up
            assert recovery < RECOVERY_LIMIT, recovery
            after = [o for o in outcomes if last_refusal < o.started < until]
            assert len(after) >= 200 and all(o.ok for o in after), Counter(
                o.status for o in after)
            results.append((len(during), round(cycle.up - cycle.starting, 1),
                            round(last_refusal - cycle.starting, 1), len(after)))

        # A refusal may still have been recorded, but only when PostgreSQL went away
        # between COMMIT and its acknowledgement: while it was stopping.
        def stopping(o: Outcome) -> bool:
            return any(o.started < c.down and o.ended > c.stopping for c in cycles)

        recorded = read_store(pg_database).loan_ids
        refused_but_recorded = [o for o in refusals if o.loan_id in recorded]
        assert all(stopping(o) for o in refused_but_recorded), [
            (o.started, o.ended, cycles) for o in refused_but_recorded if not stopping(o)]
        # Retry refused keyed requests (those in flight while PostgreSQL was stopping
        # first): each is decided now (201), or, if its commit had gone through after
        # all, answered from the log (200) — recorded once either way.
        keyed = [o for o in refusals if o.key is not None]
        chosen = {id(o): o for o in [o for o in keyed if stopping(o)] + keyed[:100]
                  + keyed[-50:]}
        retries = _retry(live, list(chosen.values()))
        retried = Counter(o.status for o in retries)
        assert set(retried) <= {200, 201}, retried
        assert all((r.status == 200) == (r.loan_id in recorded) for r in retries)

        stored = check_recorded(pg_database, outcomes + retries, load.prefix)
        verify = audit_verify(live.config)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        _finish(live, f"postgresql-stopped-{outages}x")  # no worker replaced, exit 0
    finally:
        live.server.kill()
    assert pg_ready()
    before = sum(o.ok for o in outcomes if o.ended < cycles[0].stopping)
    figures.add(
        f"postgresql stopped under load ({outages} x {seconds:.0f} s, 12 clients): {before} "
        f"decisions 201 before the first stop; per outage (refused while down, seconds "
        f"from `start` to PostgreSQL accepting connections, and to the last 503, 201 after): "
        f"{results}; /readyz 503 x{sum(c.readyz[503] for c in cycles)} while down, ready "
        f"again {max(c.ready_after or 0 for c in cycles):.2f} s after PostgreSQL; "
        f"{statuses[503]} 503 in all ({len(refused_but_recorded)} recorded after all, each "
        f"cut while PostgreSQL was stopping), {statuses[201]} 201; "
        f"{len(retries)} refused keyed requests retried ({retried[201]} decided, "
        f"{retried[200]} already recorded); {stored.rows} records checked, "
        f"{verify.stdout.strip()}; workers unchanged")


def _outage(live: Live, load: Load, seconds: float) -> Outage:
    """Stop PostgreSQL for `seconds` under the load, start it, wait for the service to
    be ready and to have answered 200 decisions since its last refusal."""
    cycle = Outage(time.monotonic())
    with postgresql_stopped():
        cycle.down = time.monotonic()
        while time.monotonic() < cycle.down + seconds:
            cycle.readyz[_readyz(live)] += 1
            time.sleep(0.2)
        cycle.starting = time.monotonic()
    cycle.up = time.monotonic()
    deadline = cycle.up + RECOVERY_LIMIT + 15
    while time.monotonic() < deadline:
        if cycle.ready_after is None and _readyz(live) == 200:
            cycle.ready_after = time.monotonic() - cycle.up
        outcomes = list(load.outcomes)
        last_refusal = max((o.ended for o in outcomes if not o.ok), default=0.0)
        if cycle.ready_after is not None and sum(
                o.ok and o.started > last_refusal for o in outcomes) >= 200:
            break
        time.sleep(0.1)
    return cycle


def _retry(live: Live, originals: list[Outcome]) -> list[Outcome]:
    """Send each request again, same body and Idempotency-Key."""
    session = requests.Session()
    retries = []
    for o in originals:
        again = Outcome(o.client, o.loan_id, o.key, o.body, time.monotonic(), 0.0)
        response = session.post(live.base + "/v1/decisions", data=o.body, timeout=30,
                                headers={"Content-Type": "application/json",
                                         "Idempotency-Key": str(o.key), **auth("decider")})
        answer(again, response)
        again.ended = time.monotonic()
        if again.status == 200:  # answered from the log: that request's own record
            assert response.headers.get("Idempotent-Replayed") == "true"
            assert json.loads(o.body)["loan"]["id"] == again.doc["loan_id"]
        retries.append(again)
    return retries


# ------------------------------------------------------------------ PostgreSQL stalled

#: The store's deadline in the stall test (`audit.timeout`), how long the stall lasts,
#: and the longest a request may wait on a stalled database before it is answered:
#: a commit group's transaction and its "did it land?" check, each cut at the
#: deadline, and a request may queue behind one such group.
STALL_TIMEOUT = 2
STALL_SECONDS = 12.0
STALL_ANSWER_LIMIT = 4 * STALL_TIMEOUT + 2.0


def test_postgresql_that_stops_answering_is_refused_in_bounded_time_then_recovers(
        tmp_path: Path, pg_database: str, figures: Figures) -> None:
    proxy, live = _behind_proxy(tmp_path, pg_database, audit_timeout=STALL_TIMEOUT)
    load = Load(live.base, prefix=f"pgstall-{uuid.uuid4().hex[:8]}", clients=12, key_every=2)
    probes: list[tuple[float, int, float]] = []  # (started, /readyz status, seconds)
    try:
        with load:
            load.wait_for_answers(200, 60)
            proxy.stall()
            stalled = time.monotonic()
            while time.monotonic() < stalled + STALL_SECONDS:
                started = time.monotonic()
                status = _readyz(live)
                probes.append((started, status, time.monotonic() - started))
                assert requests.get(live.base + "/healthz", timeout=5).status_code == 200
                time.sleep(0.2)
            resumed = time.monotonic()
            proxy.resume()
            _await_recovery(load, resumed, "the stall ended")
        outcomes = list(load.outcomes)
        statuses = Counter(o.status for o in outcomes)
        assert set(statuses) <= {201, 503}, statuses
        assert load.unanswered() == [], [o.error for o in load.unanswered()][:5]
        refusals = [o for o in outcomes if o.status == 503]
        assert all(_is_refusal(o) for o in refusals), next(
            o for o in refusals if not _is_refusal(o))
        # Nothing waits for the database to come back: every request that met the
        # stall was answered within the limit, refused while it was still stalled.
        met = [o for o in outcomes if o.ended > stalled and o.started < resumed]
        longest = max(o.ended - o.started for o in met)
        assert longest < STALL_ANSWER_LIMIT, longest
        during = [o for o in outcomes if o.started >= stalled and o.ended <= resumed]
        assert len(during) >= 24 and all(o.status == 503 for o in during), Counter(
            o.status for o in during)
        # Readiness fails, in bounded time too; liveness holds (asserted in the loop).
        assert all(status == 503 for _, status, _ in probes[1:]), probes
        slowest_probe = max(seconds for _, _, seconds in probes)
        assert slowest_probe < STALL_ANSWER_LIMIT, probes
        # Back by itself once the database answers again.
        last_refusal = max(o.ended for o in refusals)
        assert last_refusal - resumed < RECOVERY_LIMIT
        after = [o for o in outcomes if o.started > last_refusal]
        assert len(after) >= 200 and all(o.ok for o in after)
        # A refused request may be in the log after all - its COMMIT held up by the
        # stall and delivered when it ended - but only one already committing then.
        stored = check_recorded(pg_database, outcomes, load.prefix)
        recorded_refusals = [o for o in refusals if o.loan_id in stored.loan_ids]
        assert all(o.started < stalled for o in recorded_refusals), recorded_refusals
        verify = audit_verify(live.config)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        log = live.log()
        assert "did not answer within 2 s" in log, log[-3000:]
        _finish(live, "postgresql-stalled")
        figures.add(
            f"postgresql stalled ({STALL_SECONDS:.0f} s, nothing forwarded, connections kept "
            f"open; audit.timeout {STALL_TIMEOUT} s; 12 clients): {len(during)} decisions "
            f"refused with 503 while stalled, the longest wait {longest:.2f} s (limit "
            f"{STALL_ANSWER_LIMIT:.0f}); /readyz 503 in at most {slowest_probe:.2f} s; "
            f"{len(recorded_refusals)} refused but recorded (held COMMITs); the last 503 at "
            f"{last_refusal - resumed:+.2f} s from the stall's end; {statuses[201]} 201, "
            f"{stored.rows} records checked, {verify.stdout.strip()}")
    finally:
        _stop_behind_proxy(live, proxy)


# ------------------------------------------------------------------ PostgreSQL far away

#: Latency the proxy adds to every chunk, each way (a round trip is twice this).
FAR_LATENCY = 0.025


def test_a_distant_postgresql_slows_decisions_and_group_commit_shares_the_round_trips(
        tmp_path: Path, pg_database: str, figures: Figures) -> None:
    # Every decision waits for its record's commit, and a commit waits for the
    # database twice (tests/audit/test_stalls.py); with the database far away, the
    # records that queue during one commit go together in the next, so round trips
    # per decision fall well below two. Without keys, commits are the only traffic.
    proxy, live = _behind_proxy(tmp_path, pg_database)
    load = Load(live.base, prefix=f"pgfar-{uuid.uuid4().hex[:8]}", clients=12)
    seconds = 6.0
    try:
        with load:
            load.wait_for_answers(20, 60)
            proxy.latency(FAR_LATENCY)
            time.sleep(1.0)  # requests already in flight are out of the way
            started, trips = time.monotonic(), proxy.round_trips
            time.sleep(seconds)
            trips = proxy.round_trips - trips
            probe = requests.get(live.base + "/readyz", timeout=10)
            proxy.latency(0.0)
        outcomes = list(load.outcomes)
        statuses = Counter(o.status for o in outcomes)
        assert set(statuses) == {201}, (statuses, [o.error for o in load.unanswered()][:5])
        assert probe.status_code == 200, probe.text  # slow is not down
        far = [o for o in outcomes if started <= o.started and o.ended <= started + seconds]
        waits = sorted(o.ended - o.started for o in far)
        # Every decision paid for the distance (the test measures what it says) ...
        assert waits[0] >= 2 * 2 * FAR_LATENCY, waits[0]
        # ... but shared it: 2 round trips per commit, at least 2 records per commit (each
        # worker groups the records of its own requests; 12 clients over 2 workers).
        assert trips <= len(far), (trips, len(far))
        # And nothing piles up: the slowest waited a few commits, not the whole run.
        assert waits[-1] < 1.0, waits[-1]
        stored = check_recorded(pg_database, outcomes, load.prefix)
        verify = audit_verify(live.config)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        _finish(live, "postgresql-far")
    finally:
        _stop_behind_proxy(live, proxy)
    figures.add(
        f"postgresql {FAR_LATENCY * 1000:.0f} ms away each way (12 clients, {seconds:.0f} s): "
        f"{len(far) / seconds:.0f} decisions/s, all 201, {trips} round trips for {len(far)} "
        f"decisions ({len(far) * 2 / max(trips, 1):.1f} records per commit); wait p50 "
        f"{waits[len(waits) // 2] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms; /readyz 200; "
        f"{stored.rows} records checked, {verify.stdout.strip()}")


# ------------------------------------------------------------------ COMMIT answers lost

ANSWERS_TO_DROP = 5


def test_commits_whose_answer_is_lost_in_the_network_are_found_and_answered_201(
        tmp_path: Path, pg_database: str, figures: Figures) -> None:
    # Through the real server: a proxy delivers the COMMIT, lets PostgreSQL commit,
    # and cuts the connection as the answer comes back. The worker's writer,
    # still holding the write turn, asks on a fresh connection whether the records
    # are there with the hashes it computed; they are, so the decisions are answered
    # 201 - not 503 for something recorded, nor recorded twice.
    proxy, live = _behind_proxy(tmp_path, pg_database)
    load = Load(live.base, prefix=f"pgack-{uuid.uuid4().hex[:8]}", clients=8, key_every=2)
    try:
        with load:
            load.wait_for_answers(100, 60)
            proxy.drop_commit_answers(ANSWERS_TO_DROP)
            deadline = time.monotonic() + 60
            while proxy.answers_dropped < ANSWERS_TO_DROP:
                assert time.monotonic() < deadline, proxy.answers_dropped
                time.sleep(0.05)
            after = len(load.answered())
            load.wait_for_answers(after + 100, 60)
        outcomes = list(load.outcomes)
        statuses = Counter(o.status for o in outcomes)
        assert set(statuses) == {201}, (statuses, [o.error for o in load.unanswered()][:5])
        stored = check_recorded(pg_database, outcomes, load.prefix)
        # Each exactly once, nothing extra (the database is the session's: other
        # tests' records are there too).
        ours = sum(n for loan, n in stored.loan_ids.items() if loan.startswith(load.prefix))
        assert ours == len(outcomes)
        log = live.log()
        found = log.count("records are committed")
        assert found == ANSWERS_TO_DROP, log[-3000:]
        verify = audit_verify(live.config)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        _finish(live, "postgresql-commit-answers-lost")
    finally:
        _stop_behind_proxy(live, proxy)
    figures.add(
        f"postgresql COMMIT answers cut in the network ({ANSWERS_TO_DROP}, 8 clients): "
        f"each found committed and answered 201; {statuses[201]} 201, no 503; "
        f"{ours} records, each once; {verify.stdout.strip()}")


# ------------------------------------------------------------------ SQLite contention


@pytest.mark.parametrize("seconds", [
    pytest.param(60, id="60s"),
    pytest.param(600, id="600s", marks=pytest.mark.slow),
])
def test_sqlite_under_multi_worker_contention_never_locks(
        tmp_path: Path, figures: Figures, seconds: int) -> None:
    live = _start(tmp_path)
    load = Load(live.base, prefix="contend", clients=16, key_every=3, read_every=5)
    try:
        with load:
            load.wait_for_answers(1, 60)
            started = time.monotonic()
            time.sleep(seconds)
        elapsed = time.monotonic() - started
        outcomes = list(load.outcomes)
        statuses = Counter(o.status for o in outcomes)
        assert set(statuses) == {201}, (statuses, [o.error for o in load.unanswered()][:5])
        assert set(load.reads) <= {200}, load.reads
        log = live.log()
        for symptom in ("database is locked", "database is busy", "audit store busy",
                        "store-unavailable", "Traceback"):
            assert symptom not in log, symptom
        stored = check_recorded(f"sqlite:///{tmp_path}/audit/audit.db", outcomes, "contend")
        assert stored.rows == len(outcomes)  # nothing refused, nothing extra
        verify = audit_verify(live.config)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        _finish(live, f"sqlite-contention-{seconds}s")
    finally:
        live.server.kill()
    figures.add(
        f"sqlite contention ({seconds} s, 16 keep-alive clients, 2 workers): "
        f"{len(outcomes)} decisions ({len(outcomes) / elapsed:.0f}/s, "
        f"{sum(o.key is not None for o in outcomes)} with an Idempotency-Key), "
        f"{sum(load.reads.values())} read back, 0 errors, no 'database is locked'; "
        f"{verify.stdout.strip()}")


# ------------------------------------------------------------------ SQLite, disk full

#: The audit log's file system: small enough to fill within seconds, then grown.
FULL_DISK, ROOMY_DISK = "2m", "64m"


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A tmpfs of `size` mounted at `path` (a real file system that runs out of space:
    writes fail with ENOSPC); yields a function that resizes it. Always unmounted."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                              "tmpfs", str(path)], capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"needs to mount a small tmpfs (root): {mounted.stderr.strip()}")

    def resize(new_size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True,
                       capture_output=True, timeout=30)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True, timeout=30)


def test_sqlite_disk_full_refuses_then_recovers_when_space_returns(
        tmp_path: Path, figures: Figures) -> None:
    disk = tmp_path / "disk"
    url = f"sqlite:///{disk}/audit.db"
    with small_disk(disk, FULL_DISK) as resize:
        live = _start(tmp_path, audit_url=url)
        load = Load(live.base, prefix="full", clients=8, key_every=4)
        try:
            with load:
                deadline = time.monotonic() + 120
                while not any(not o.ok for o in list(load.outcomes)):
                    assert time.monotonic() < deadline, (
                        f"{FULL_DISK} never filled: {load.statuses()}")
                    time.sleep(0.05)
                full = time.monotonic()
                time.sleep(2)  # the disk stays full for a while under the load
                # The database still answers a ping; readiness must not say "ready".
                probe = requests.get(live.base + "/readyz", timeout=10)
                ready_while_full = probe.status_code
                assert ready_while_full == 503, probe.text
                assert "disk is full" in probe.json()["detail"], probe.text
                resize(ROOMY_DISK)
                freed = time.monotonic()
                last_refusal = _await_recovery(load, freed, "the disk grew")
            outcomes = list(load.outcomes)
            odd = [(o.status, o.problem_type, o.error) for o in outcomes
                   if not o.ok and not _is_refusal(o)]
            assert odd == [], odd[:5]  # only 201 or 503 store-unavailable; none unanswered
            refused = [o for o in outcomes if not o.ok]
            full_refusals = [o for o in refused if o.started >= full and o.ended <= freed]
            assert full_refusals, "nothing was refused while the disk was full"
            assert last_refusal - freed < RECOVERY_LIMIT, last_refusal - freed
            # Ready again: at once in a worker whose commits succeed since, within 5 s
            # (WRITE_FAILURE_MEMORY) in one that has not committed since its refusal.
            deadline = time.monotonic() + 10
            while _readyz(live) != 200:
                assert time.monotonic() < deadline, "not ready 10 s after recovering"
                time.sleep(0.2)
            stored = check_recorded(url, outcomes, "full")
            # A write that ran out of space left nothing behind: refused means not recorded.
            assert stored.rows == len(outcomes) - len(refused)
            verify = audit_verify(live.config)
            assert verify.returncode == 0, verify.stdout + verify.stderr
            log = live.log()
            assert "database or disk is full" in log  # the cause, said once per failure
            _finish(live, "sqlite-disk-full")
        finally:
            live.server.kill()
    statuses = Counter(o.status for o in outcomes)
    figures.add(
        f"sqlite disk full ({FULL_DISK} tmpfs, 8 clients): {stored.rows} decisions "
        f"recorded, {len(refused)} refused with 503 ({len(full_refusals)} in the 2 s the "
        f"disk stayed full; /readyz {ready_while_full} then), last refusal "
        f"{last_refusal - freed:+.2f} s after the disk grew to {ROOMY_DISK}, "
        f"{statuses[201]} 201 in all; nothing refused was recorded; {verify.stdout.strip()}")


class Ext4Disk:
    """A real ext4 file system (a 64 MiB image on a loop device) mounted at `path` with
    `errors=remount-ro`, as production disks are."""

    def __init__(self, image: Path, path: Path, trigger: Path) -> None:
        self.image, self.path, self._trigger = image, path, trigger

    def fail(self) -> None:
        """Make the kernel see a file-system error (ext4's test trigger): the file system
        turns read-only under its users, as after a failing disk."""
        self._trigger.write_text("deficiency test: disk error\n")

    def repair(self) -> None:
        """What an operator does: unmount, check and repair (`e2fsck`), mount again."""
        deadline = time.monotonic() + 15  # the server's last process may be exiting
        while (done := _run(["umount", str(self.path)])).returncode != 0:
            assert time.monotonic() < deadline, done.stderr
            time.sleep(0.2)
        _run(["e2fsck", "-f", "-y", str(self.image)])
        _run(["mount", "-o", "loop", str(self.image), str(self.path)], check=True)


_run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def ext4_disk(tmp: Path) -> Iterator[Ext4Disk]:
    """An `Ext4Disk` at `tmp/disk`; unmounted (and its loop device released) after."""
    image, mount_at = tmp / "disk.img", tmp / "disk"
    mount_at.mkdir()
    if shutil.which("mkfs.ext4") is None or shutil.which("e2fsck") is None:
        pytest.skip("needs mkfs.ext4 and e2fsck")
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    _run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mounted = _run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mount_at)])
    if mounted.returncode != 0:
        pytest.skip(f"needs to mount an ext4 image on a loop device (root): "
                    f"{mounted.stderr.strip()}")
    try:
        device = Path(_run(["findmnt", "-n", "-o", "SOURCE", str(mount_at)],
                           check=True).stdout.strip()).name
        trigger = Path("/sys/fs/ext4") / device / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip(f"the kernel offers no {trigger}")
        yield Ext4Disk(image, mount_at, trigger)
    finally:
        # Lazily: the test may still hold the log open; the loop device goes with the
        # last user.
        _run(["umount", "--lazy", str(mount_at)])


def test_sqlite_on_a_file_system_turned_read_only_refuses_and_keeps_what_it_answered(
        tmp_path: Path, figures: Figures) -> None:
    """A disk error under the audit log: the kernel turns the file system read-only
    (ext4, `errors=remount-ro`) while 8 clients post decisions. From then on every
    decision is refused with 503 problem+json (never a 2xx, never a 500), `/readyz`
    says the log cannot be written, `/healthz` still answers, and the server stops
    cleanly. Every decision answered 201 before the error is in the log once the disk
    is repaired, and the chain verifies. (There is no recovering without an operator:
    the file system stays read-only until it is checked and mounted again.)"""
    url = f"sqlite:///{tmp_path}/disk/audit.db"
    with ext4_disk(tmp_path) as disk:
        live = _start(tmp_path, audit_url=url)
        load = Load(live.base, prefix="ro", clients=8, key_every=4)
        try:
            with load:
                deadline = time.monotonic() + 60
                while sum(o.ok for o in list(load.outcomes)) < 300:
                    assert time.monotonic() < deadline, load.statuses()
                    time.sleep(0.05)
                disk.fail()
                failed = time.monotonic()
                while not any(not o.ok and o.started > failed for o in list(load.outcomes)):
                    assert time.monotonic() < failed + 30, (
                        f"nothing refused 30 s after the disk error: {load.statuses()}")
                    time.sleep(0.05)
                time.sleep(2)  # refused under the load for a while
                probe = requests.get(live.base + "/readyz", timeout=10)
                health = requests.get(live.base + "/healthz", timeout=10)
            outcomes = list(load.outcomes)
            assert probe.status_code == 503, probe.text
            assert "could not be recorded" in probe.json()["detail"], probe.text
            assert health.status_code == 200
            odd = [(o.status, o.problem_type, o.error) for o in outcomes
                   if not o.ok and not _is_refusal(o)]
            assert odd == [], odd[:5]  # only 201 or 503 store-unavailable; none unanswered
            late = [o for o in outcomes if o.ok and o.started > failed + 1]
            assert late == [], f"{len(late)} decisions answered 2xx a second after the error"
            code = live.server.stop()
            log = live.log()
            assert code == 0, log[-3000:]
            assert "readonly database" in log or "disk I/O error" in log, log[-3000:]
            assert "Traceback" not in log, log[log.find("Traceback"):][:3000]
        finally:
            live.server.kill()
        disk.repair()
        # What was answered 201 is there.
        refused = [o for o in outcomes if not o.ok]
        stored = check_recorded(url, outcomes, "ro")
        verify = audit_verify(live.config)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    statuses = Counter(o.status for o in outcomes)
    figures.add(
        f"sqlite on ext4 turned read-only by a disk error (8 clients): {statuses[201]} "
        f"answered 201, all in the log after e2fsck ({stored.rows} rows), {len(refused)} "
        f"refused with 503 after the error, /readyz {probe.status_code}, /healthz "
        f"{health.status_code}, clean stop; {verify.stdout.strip()}")
