"""Keep-alive connections end up spread over the workers (each worker uses one core)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import requests

from .conftest import CAR
from .servers import Server, free_port, write_config


def connections_per_worker(server: Server) -> dict[int, int]:
    """Established TCP connections on the server port, by the worker process holding them."""
    assert server.proc is not None
    workers = [int(p) for p in Path(
        f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()]
    established: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port == server.port and fields[3] == "01":  # ESTABLISHED
                established.add(int(fields[9]))
    counts = {}
    for pid in workers:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
        counts[pid] = len(inodes & established)
    return counts


def test_connections_are_spread_over_the_workers(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port=port, keepalive_requests=0,
                          audit_url=f"sqlite:///{tmp_path}/audit/audit.db")
    server = Server(config, port, tmp_path / "server.log").start()
    stop = threading.Event()
    body = json.dumps(CAR)

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            session.post(server.base + "/v1/decisions", data=body,
                         headers={"Content-Type": "application/json"}, timeout=30)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while True:
            counts = connections_per_worker(server)
            if len(counts) == 2 and min(counts.values()) >= 6:
                break
            assert time.monotonic() < deadline, counts
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        assert server.stop() == 0, server.log()


def test_connection_shares_decide_who_accepts_and_who_sheds() -> None:
    from service.api.server import ConnectionShares

    shares = ConnectionShares(4)
    a, b = shares.claim(101), shares.claim(102)
    assert a is not None and b is not None and a != b
    shares.publish(a, 0)
    assert shares.may_accept(a, 0)  # b has not published more than a yet
    shares.publish(b, 3)
    assert shares.may_accept(a, 0) and not shares.may_accept(b, 3)
    shares.publish(a, 9)
    assert shares.over_share(a, 9) and not shares.over_share(b, 3)
    shares.publish(a, 5)
    assert not shares.over_share(a, 5)  # within the margin of 2: no flapping
    shares.release(102)  # the master saw worker b exit
    assert shares.may_accept(a, 5) and not shares.over_share(a, 5)
    assert shares.claim(103) is not None  # the replacement gets a slot


def test_a_silent_worker_stops_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.api import server as server_mod

    shares = server_mod.ConnectionShares(2)
    a, b = shares.claim(1), shares.claim(2)
    assert a is not None and b is not None
    shares.publish(a, 5)
    shares.publish(b, 0)
    assert not shares.may_accept(a, 5)
    now = time.monotonic()
    monkeypatch.setattr(server_mod.time, "monotonic", lambda: now + 60)
    assert shares.may_accept(a, 5)  # b stopped publishing: it is ignored
