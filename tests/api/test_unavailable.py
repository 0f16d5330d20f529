"""The audit log out of reach: decisions are refused with 503 (never a 2xx for an
unrecorded decision), readiness fails, and both recover by themselves when the
database is back — in-process and through the real server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy.engine import make_url

from .conftest import CAR, ConformingClient, make_config, pg_url_via, post_json
from .servers import Server, TcpProxy, free_port, write_config


@pytest.fixture
def proxy(pg_database: str) -> Iterator[TcpProxy]:
    url = make_url(pg_database)
    p = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    yield p
    p.cut()


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_store_down_then_back_in_process(make_app: Callable[..., Flask], tmp_path: Path,
                                         proxy: TcpProxy, pg_database: str) -> None:
    proxy.restore()
    app = make_app(make_config(tmp_path, audit_url=pg_url_via(pg_database, proxy.port)))
    client = ConformingClient(app)
    assert post_json(client, "/v1/decisions", CAR, key=None).status_code == 201

    proxy.cut()
    r = post_json(client, "/v1/decisions", CAR, key=None)
    assert r.status_code == 503
    assert r.json["type"].endswith("store-unavailable")
    assert r.headers["Retry-After"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/v1/decisions").status_code == 503
    assert post_json(client, "/v1/decisions/batch", {"items": [CAR]},
                     key=None).status_code == 503

    proxy.restore()
    assert eventually(lambda: client.get("/readyz").status_code == 200)
    r = post_json(client, "/v1/decisions", CAR, key=None)
    assert r.status_code == 201
    assert client.get(r.headers["Location"]).status_code == 200


def test_store_down_at_start_up(make_app: Callable[..., Flask], tmp_path: Path,
                                proxy: TcpProxy, pg_database: str) -> None:
    app = make_app(make_config(tmp_path, audit_url=pg_url_via(pg_database, proxy.port)))
    client = ConformingClient(app)  # the app starts although the database is unreachable
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "unavailable" in ready.json["detail"]
    assert post_json(client, "/v1/decisions", CAR, key=None).status_code == 503

    proxy.restore()
    assert eventually(lambda: post_json(client, "/v1/decisions", CAR,
                                        key=None).status_code == 201)


def test_an_unusable_sqlite_location_is_503_not_a_crash(make_app: Callable[..., Flask],
                                                        tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    client = ConformingClient(make_app(make_config(
        tmp_path, audit_url=f"sqlite:///{blocker}/audit.db")))
    assert client.get("/readyz").status_code == 503
    assert post_json(client, "/v1/decisions", CAR, key=None).status_code == 503


def test_the_real_server_refuses_then_recovers(tmp_path: Path, proxy: TcpProxy,
                                               pg_database: str) -> None:
    proxy.restore()
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port=port,
                          audit_url=pg_url_via(pg_database, proxy.port))
    server = Server(config, port, tmp_path / "server.log").start()
    session = requests.Session()

    def decide() -> requests.Response:
        return session.post(server.base + "/v1/decisions", data=json.dumps(CAR),
                            headers={"Content-Type": "application/json"}, timeout=30)

    try:
        assert decide().status_code == 201
        proxy.cut()
        statuses = {decide().status_code for _ in range(6)}  # both workers, likely
        assert statuses == {503}
        assert session.get(server.base + "/readyz", timeout=10).status_code == 503
        proxy.restore()
        assert eventually(lambda: all(decide().status_code == 201 for _ in range(4)))
        # (A worker that refused and has not committed since stays unready up to 5 s.)
        assert eventually(lambda: session.get(server.base + "/readyz",
                                              timeout=10).status_code == 200)
    finally:
        assert server.stop() == 0, server.log()
