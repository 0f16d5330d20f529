"""A decision answered 2xx is never lost: SIGKILL mid-stream, SIGTERM, restart; and the
audit verification still passes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from .conftest import CAR, RULES, facts
from .servers import ROOT, Server, start_sqlite_server

CLIENTS = 16


def audit_verify(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "audit", "--config", str(config),
                           "verify"], cwd=ROOT, capture_output=True, text=True, timeout=120)


def hammer(server: Server, stop: threading.Event, answered: list[str],
           statuses: list[int]) -> list[threading.Thread]:
    """CLIENTS threads posting decisions until `stop`; 2xx ids go to `answered`."""

    def client(n: int) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = session.post(server.base + "/v1/decisions",
                                 data=json.dumps(facts(CAR, loan__id=f"c{n}-{i}")),
                                 headers={"Content-Type": "application/json"}, timeout=10)
            except requests.RequestException:
                if stop.is_set():
                    return
                time.sleep(0.01)
                continue
            statuses.append(r.status_code)
            if 200 <= r.status_code < 300:
                answered.append(r.json()["decision_id"])

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    return threads


def test_sigkill_mid_stream_loses_no_answered_decision(tmp_path: Path) -> None:
    config, server = start_sqlite_server(tmp_path)
    answered: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()
    try:
        threads = hammer(server, stop, answered, statuses)
        deadline = time.monotonic() + 30
        while len(answered) < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()  # master and workers, mid-stream, no chance to clean up
        stop.set()
        for t in threads:
            t.join(15)
    finally:
        server.kill()
    assert len(answered) >= 150, server.log()
    assert all(s == 201 for s in statuses), sorted(set(statuses))

    server = Server(config, server.port, tmp_path / "server2.log").start()
    try:
        session = requests.Session()
        missing = [d for d in answered
                   if session.get(f"{server.base}/v1/decisions/{d}", timeout=10).status_code
                   != 200]
        assert missing == []
        assert session.post(server.base + "/v1/decisions", data=json.dumps(CAR),
                            headers={"Content-Type": "application/json"},
                            timeout=10).status_code == 201
    finally:
        assert server.stop() == 0
    verify = audit_verify(config)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("OK:")


def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(tmp_path: Path) -> None:
    config, server = start_sqlite_server(tmp_path)
    answered: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()
    try:
        threads = hammer(server, stop, answered, statuses)
        while len(answered) < 50:
            time.sleep(0.02)
        code = server.stop()
        stop.set()
        for t in threads:
            t.join(15)
    finally:
        server.kill()
    assert code == 0, server.log()
    assert all(s == 201 for s in statuses), sorted(set(statuses))
    assert "Traceback" not in server.log()
    # Everything answered is in the log, and the chain is intact.
    verify = audit_verify(config)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    checked = int(verify.stdout.split()[1])
    assert checked >= len(answered)


def test_a_worker_restarted_while_the_rule_files_are_broken_still_serves(
        tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    config, server = start_sqlite_server(tmp_path, rules_dir=rules)
    try:
        (rules / "bearer.yaml").write_text("rules: [oops\n")
        assert server.proc is not None
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
        worker = int(children.read_text().split()[0])
        os.kill(worker, signal.SIGKILL)  # the server starts a replacement
        deadline = time.monotonic() + 30
        while str(worker) in children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        for _ in range(6):
            r = requests.post(server.base + "/v1/decisions", data=json.dumps(CAR),
                              headers={"Content-Type": "application/json"}, timeout=30)
            assert r.status_code == 201, server.log()
        assert server.proc.poll() is None
        assert "using ruleset" in server.log()
    finally:
        assert server.stop() == 0, server.log()
