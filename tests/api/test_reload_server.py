"""Hot reload in the real server (2 granian workers): under load a broken ruleset is
refused without a failed request, a fixed one reaches every worker; SIGHUP and the file
watcher bring every worker to the same checked ruleset."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Set
from pathlib import Path

import pytest
import requests

from service.apikeys import key_sha256

from .conftest import CAR, KEYS, RULES
from .servers import Server, free_port, write_config
from .test_reload import break_enum, samples, set_version

ADMIN = {"Authorization": f"Bearer {KEYS['all'][0]}"}
BODY = json.dumps(CAR)


def config_keys() -> list[dict[str, object]]:
    return [{"name": name, "sha256": key_sha256(key), "scopes": list(scopes)}
            for name, (key, scopes) in KEYS.items()]


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def start(tmp_path: Path, rules_dir: Path) -> tuple[Server, Path]:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port=port, rules_dir=rules_dir,
                          keys=config_keys(), audit_url=f"sqlite:///{tmp_path}/audit/audit.db")
    return Server(config, port, tmp_path / "server.log").start(), config


@pytest.fixture
def served(tmp_path: Path, rules: Path) -> Iterator[tuple[Server, Path]]:
    server, config = start(tmp_path, rules)
    try:
        yield server, config
    finally:
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()


#: Seconds a worker must have lived before it is killed (granian's crash-loop rule: a
#: worker dying within about 5.5 s of its start stops the whole server).
CRASH_LOOP_SECONDS = 6.0


def workers(server: Server) -> set[int]:
    assert server.proc is not None
    pid = server.proc.pid
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def versions_by_worker(server: Server) -> dict[int, set[str]]:
    """What each worker decides with, from /metrics (deficiency_ruleset_info per pid)."""
    text = requests.get(server.base + "/metrics", timeout=10).text
    found: dict[int, set[str]] = {}
    for labels, value in samples(text, "deficiency_ruleset_info"):
        if value == 1.0:
            found.setdefault(int(labels["pid"]), set()).add(labels["version"])
    return found


def wait_converged(server: Server, version: str, timeout: float = 10.0,
                   *, replacing: Set[int] = frozenset()) -> set[int]:
    """Until every live worker (none of `replacing`) decides with `version`."""
    deadline = time.monotonic() + timeout
    while True:
        live = workers(server)
        by_worker = versions_by_worker(server)
        if (len(live) == 2 and not live & replacing
                and all(by_worker.get(pid) == {version} for pid in live)):
            return live
        assert time.monotonic() < deadline, (version, live, by_worker, server.log())
        time.sleep(0.1)


def decide(session: requests.Session, server: Server) -> requests.Response:
    return session.post(server.base + "/v1/decisions", data=BODY, timeout=30,
                        headers={**ADMIN, "Content-Type": "application/json"})


def readyz_errors(server: Server, times: int = 6) -> list[dict | None]:
    return [requests.get(server.base + "/readyz", timeout=10).json()["ruleset_error"]
            for _ in range(times)]


def test_under_load_a_broken_ruleset_is_refused_and_a_fixed_one_reaches_every_worker(
        served: tuple[Server, Path], rules: Path) -> None:
    server, _ = served
    old = requests.get(server.base + "/v1/ruleset", headers=ADMIN, timeout=10).json()["version"]
    stop = threading.Event()
    answers: list[tuple[float, int, str | None]] = []  # (sent at, status, version)
    failures: list[str] = []

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            sent = time.monotonic()
            try:
                r = decide(session, server)
            except requests.RequestException as exc:
                failures.append(repr(exc))
                continue
            version = r.json()["ruleset"]["version"] if r.status_code == 201 else None
            answers.append((sent, r.status_code, version))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        break_enum(rules)
        set_version(rules, "2099.6.0")
        r = requests.post(server.base + "/v1/ruleset/reload", headers=ADMIN, timeout=30)
        assert r.status_code == 422, r.text
        assert r.headers["Content-Type"].startswith("application/problem+json")
        paths = [e["path"] for e in r.json()["errors"]]
        assert f"{rules / 'bearer.yaml'}:31:18" in paths
        assert r.json()["active"]["version"] == old
        deadline = time.monotonic() + 5
        while not all(readyz_errors(server)):  # every worker knows, whichever answers
            assert time.monotonic() < deadline
            time.sleep(0.1)
        error = readyz_errors(server, 1)[0]
        assert error is not None and error["problems"][0].startswith(
            f"{rules / 'bearer.yaml'}:31:18: error: loan.type: 'mortgag'")
        metrics = requests.get(server.base + "/metrics", timeout=10).text
        rejected = [v for labels, v in samples(metrics, "deficiency_ruleset_reload_total")
                    if labels["result"] == "rejected"]
        assert sum(rejected) >= 1
        assert samples(metrics, "deficiency_ruleset_reload_failed")[0][1] == 1.0
        time.sleep(1.0)  # decisions go on, on the old ruleset
        fixed_at = time.monotonic()

        shutil.copy(RULES / "bearer.yaml", rules / "bearer.yaml")
        set_version(rules, "2099.7.0")
        r = requests.post(server.base + "/v1/ruleset/reload", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["ruleset"]["version"] == "2099.7.0"
        wait_converged(server, "2099.7.0", timeout=5)
        converged_at = time.monotonic()
        assert all(e is None for e in readyz_errors(server))
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:3]
    assert answers and {status for _, status, _ in answers} == {201}
    assert {v for sent, _, v in answers if sent < fixed_at} == {old}
    after = {v for sent, _, v in answers if sent > converged_at}
    assert after == {"2099.7.0"}
    print(f"{len(answers)} decisions, all 201")


def test_sighup_restarts_the_workers_on_the_checked_ruleset_only(
        served: tuple[Server, Path], rules: Path, tmp_path: Path) -> None:
    server, config = served
    assert server.proc is not None
    old = requests.get(server.base + "/v1/ruleset", headers=ADMIN, timeout=10).json()["version"]
    first = wait_converged(server, old)

    # The configuration now names another rules directory (the watcher, which looks at
    # the old one, cannot be what brings it in): SIGHUP re-reads it.
    good = tmp_path / "rules-good"
    shutil.copytree(RULES, good)
    set_version(good, "2099.8.0")
    config.write_text(config.read_text().replace(f"dir: {rules}", f"dir: {good}"))
    os.kill(server.proc.pid, signal.SIGHUP)
    second = wait_converged(server, "2099.8.0", timeout=20, replacing=first)
    with requests.Session() as session:
        assert {decide(session, server).json()["ruleset"]["version"]
                for _ in range(10)} == {"2099.8.0"}
    assert all(e is None for e in readyz_errors(server))

    # A broken directory: the new workers keep the ruleset accepted before.
    broken = tmp_path / "rules-broken"
    shutil.copytree(good, broken)
    break_enum(broken)
    set_version(broken, "2099.9.0")
    config.write_text(config.read_text().replace(f"dir: {good}", f"dir: {broken}"))
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_converged(server, "2099.8.0", timeout=20, replacing=second)
    with requests.Session() as session:
        answers = [decide(session, server) for _ in range(10)]
    assert {r.status_code for r in answers} == {201}
    assert {r.json()["ruleset"]["version"] for r in answers} == {"2099.8.0"}
    errors = readyz_errors(server)
    assert all(e is not None and e["problems"][0].startswith(
        f"{broken / 'bearer.yaml'}:31:18: error:") for e in errors), errors
    metrics = requests.get(server.base + "/metrics", timeout=10).text
    assert samples(metrics, "deficiency_ruleset_reload_failed")[0][1] == 1.0
    assert re.search(r"using ruleset deficiency-default 2099\.8\.0", server.log_path.read_text())


def test_the_file_watcher_brings_an_edit_to_every_worker(
        served: tuple[Server, Path], rules: Path) -> None:
    server, _ = served
    old = requests.get(server.base + "/v1/ruleset", headers=ADMIN, timeout=10).json()["version"]
    wait_converged(server, old)  # both workers have started
    set_version(rules, "2099.10.0")  # no reload request
    wait_converged(server, "2099.10.0", timeout=10)
    with requests.Session() as session:
        assert {decide(session, server).json()["ruleset"]["version"]
                for _ in range(10)} == {"2099.10.0"}
    metrics = requests.get(server.base + "/metrics", timeout=10).text
    assert [v for labels, v in samples(metrics, "deficiency_ruleset_reload_total")
            if labels == {"result": "accepted", "trigger": "watcher"}] == [1.0]


def test_workers_killed_while_rulesets_are_reloaded_serve_only_accepted_rulesets(
        tmp_path: Path, rules: Path) -> None:
    # Reloads published into the shared record (state.json by atomic rename, a copy of
    # the accepted files) while workers are SIGKILLed, some in the middle of checking or
    # publishing: a replacement must start from an accepted ruleset, never a broken or
    # half-copied one, and in the end every worker follows the last one accepted.
    server, _ = start(tmp_path, rules)
    original = (rules / "bearer.yaml").read_text()
    stop = threading.Event()
    versions: list[str] = []  # the ruleset version of every decision answered
    statuses: list[int] = []

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = decide(session, server)
            except requests.RequestException:
                session = requests.Session()  # its worker was killed: reconnect
                continue
            statuses.append(r.status_code)
            if r.status_code == 201:
                versions.append(r.json()["ruleset"]["version"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    reloads: list[int | None] = []
    kills = 0
    first_seen: dict[int, float] = {pid: 0.0 for pid in workers(server)}  # booted already
    try:
        for n in range(1, 25):
            if n % 4 == 0:  # every fourth content is broken: refused, never served
                break_enum(rules)
                set_version(rules, f"2099.{n}.66")
            else:
                (rules / "bearer.yaml").write_text(original)
                set_version(rules, f"2099.{n}.0")
            try:
                r = requests.post(server.base + "/v1/ruleset/reload", headers=ADMIN,
                                  timeout=30)
                reloads.append(r.status_code)
            except requests.RequestException:  # answered by a worker killed meanwhile
                reloads.append(None)
            if n % 3 == 0:
                deadline = time.monotonic() + 30
                # Only a worker up for a while: one that dies within seconds of being
                # started stops the server (granian's crash-loop rule, about 5.5 s).
                while True:
                    now = time.monotonic()
                    live = sorted(workers(server))
                    for pid in live:
                        first_seen.setdefault(pid, now)
                    old = [pid for pid in live if now - first_seen[pid] >= CRASH_LOOP_SECONDS]
                    if len(live) >= 2 and old:
                        break
                    assert now < deadline, server.log()
                    time.sleep(0.05)
                os.kill(old[0], signal.SIGKILL)
                kills += 1
            time.sleep(0.05)
        (rules / "bearer.yaml").write_text(original)
        set_version(rules, "2099.99.0")
        deadline = time.monotonic() + 30
        while requests.post(server.base + "/v1/ruleset/reload", headers=ADMIN,
                            timeout=30).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        wait_converged(server, "2099.99.0", timeout=30)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        code = server.stop()
    assert code == 0, server.log()
    assert kills == 8
    assert set(reloads) <= {200, 422, None}, reloads
    assert reloads.count(422) >= 3  # the broken contents were refused where answered
    assert set(statuses) == {201}, set(statuses)
    broken = [v for v in versions if v.endswith(".66")]
    assert broken == [], f"decided with a refused ruleset: {sorted(set(broken))}"
    assert len(versions) > 100 and versions[-1] == "2099.99.0"
    assert "Traceback" not in server.log()
