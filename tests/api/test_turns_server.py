"""Turns at the interpreter in the real server (service/api/turns.py): a request that
waits on the audit log lets the others compute, and one stuck on its client holds
nobody up for longer than the patience."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import requests

from service.api.turns import PATIENCE
from tests.api.conftest import CAR, facts
from tests.api.servers import Server, start_sqlite_server
from tests.api.test_commit_process_server import commit_processes


def _bypassed(server: Server) -> float:
    text = requests.get(server.base + "/metrics", timeout=10).text
    match = re.search(r"^deficiency_turns_bypassed_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _healthz_latencies(server: Server, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        started = time.monotonic()
        assert requests.get(server.base + "/healthz", timeout=5).status_code == 200
        latencies.append(time.monotonic() - started)
    return latencies


def test_a_client_sending_its_body_slowly_holds_up_the_others_no_longer_than_the_patience(
        tmp_path: Path) -> None:
    # One worker: the slow request and the others share its interpreter. The slow one
    # holds its turn while the app waits for the rest of its body.
    _, server = start_sqlite_server(tmp_path, workers=1, threads=4)
    try:
        before = _bypassed(server)
        body = json.dumps(facts(CAR, loan__id="slow-body")).encode()
        head = (f"POST /v1/decisions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(head.encode() + body[:20])
        time.sleep(0.3)  # the head is read and the app waits for the body
        latencies = _healthz_latencies(server, 20)
        # The first waits the patience, the rest go ahead at once (the holder is past it).
        assert max(latencies) < PATIENCE + 0.5, latencies
        assert sum(latencies) < 20 * 0.1 + PATIENCE, latencies
        assert _bypassed(server) > before
        slow.sendall(body[20:])
        slow.settimeout(10)
        answer = slow.recv(65536)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:100]
        slow.close()
    finally:
        server.stop()


def test_requests_waiting_for_the_audit_commit_let_the_others_compute(tmp_path: Path) -> None:
    # The commit process frozen (SIGSTOP): decisions wait for its answer. Their turns are
    # let go meanwhile, so other requests are answered without waiting for a turn at
    # all: not one goes ahead after the patience.
    _, server = start_sqlite_server(tmp_path, workers=1, threads=4, audit_timeout=2)
    try:
        assert requests.post(server.base + "/v1/decisions", json=facts(CAR),
                             timeout=10).status_code == 201
        before = _bypassed(server)
        [process] = commit_processes(server)
        answers: list[int] = []

        def decide(n: int) -> None:
            r = requests.post(server.base + "/v1/decisions",
                              json=facts(CAR, loan__id=f"waits-{n}"), timeout=30)
            answers.append(r.status_code)

        os.kill(process, signal.SIGSTOP)
        try:
            waiting = [threading.Thread(target=decide, args=(n,)) for n in range(3)]
            for t in waiting:
                t.start()
            time.sleep(0.5)  # all three sent and waiting for the commit answer
            latencies = _healthz_latencies(server, 20)
            assert not answers  # still waiting
        finally:
            os.kill(process, signal.SIGCONT)
        for t in waiting:
            t.join(30)
        assert answers == [201, 201, 201]
        assert max(latencies) < PATIENCE, latencies
        assert _bypassed(server) == before
    finally:
        server.stop()
