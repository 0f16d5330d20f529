"""End to end: the real server (`python -m service.cli serve`, granian, 2 workers) over
HTTP, with the audit log on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from .conftest import CAR, KEYS, RULES, SHORT_SALE, OpenApi, api_keys, facts
from .servers import Server, free_port, start_sqlite_server, write_config
from .test_decisions import check_car, check_short_sale


def auth(name: str = "all") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    rules = tmp / "rules"
    shutil.copytree(RULES, rules)
    url = (f"sqlite:///{tmp}/audit/audit.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_database"))
    port = free_port()
    keys = [{"name": k.name, "sha256": k.sha256, "scopes": sorted(k.scopes)} for k in api_keys()]
    config = write_config(tmp / "config.yaml", port=port, audit_url=url, keys=keys,
                          rules_dir=rules)
    srv = Server(config, port, tmp / "server.log").start()
    yield srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture(scope="module")
def openapi(server: Server) -> OpenApi:
    return OpenApi(requests.get(server.base + "/openapi.json", timeout=5).json())


def post(server: Server, path: str, doc: Any, key: str = "all", **headers: str) -> Any:
    return requests.post(server.base + path, data=json.dumps(doc),
                         headers={"Content-Type": "application/json", **auth(key), **headers},
                         timeout=30)


def test_the_seed_examples_over_http(server: Server, openapi: OpenApi) -> None:
    for seed, check in ((SHORT_SALE, check_short_sale), (CAR, check_car)):
        r = post(server, "/v1/decisions", seed, key="decider")
        assert r.status_code == 201, r.text
        openapi.validate("POST", "/v1/decisions", r)
        check(r.json())


def test_location_round_trip(server: Server, openapi: OpenApi) -> None:
    r = post(server, "/v1/decisions", CAR)
    assert r.status_code == 201
    got = requests.get(server.base + r.headers["Location"], headers=auth("auditor"), timeout=10)
    assert got.status_code == 200
    openapi.validate("GET", r.headers["Location"], got)
    stored = got.json()
    answer = {k: v for k, v in r.json().items() if k != "receipt"}  # the answer's, not stored
    assert {k: stored[k] for k in answer} == answer
    assert stored["facts"]["jurisdiction"] == "OH"


def test_idempotent_retry(server: Server) -> None:
    first = post(server, "/v1/decisions", SHORT_SALE, **{"Idempotency-Key": "e2e-1"})
    again = post(server, "/v1/decisions", SHORT_SALE, **{"Idempotency-Key": "e2e-1"})
    other = post(server, "/v1/decisions", CAR, **{"Idempotency-Key": "e2e-1"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json() == first.json()
    assert other.headers["Content-Type"] == "application/problem+json"


def test_batch_over_http(server: Server, openapi: OpenApi) -> None:
    r = post(server, "/v1/decisions/batch", {"items": [CAR, {"bad": 1}, SHORT_SALE]})
    assert r.status_code == 200
    openapi.validate("POST", "/v1/decisions/batch", r)
    assert [x["status"] for x in r.json()["results"]] == [201, 422, 201]


def test_errors_over_http_are_problems(server: Server, openapi: OpenApi) -> None:
    cases = [
        requests.post(server.base + "/v1/decisions", data=b"{nope",
                      headers={"Content-Type": "application/json", **auth()}, timeout=10),
        requests.post(server.base + "/v1/decisions", data=b"x" * (2 * 1024 * 1024),
                      headers={"Content-Type": "application/json", **auth()}, timeout=10),
        requests.post(server.base + "/v1/decisions", data=(b"[" * 65536 for _ in range(32)),
                      headers={"Content-Type": "application/json", **auth()}, timeout=30),
        requests.post(server.base + "/v1/decisions", data=json.dumps(CAR),
                      headers={"Content-Type": "text/plain", **auth()}, timeout=10),
        requests.get(server.base + "/v1/decisions", timeout=10),
        requests.get(server.base + "/nowhere", timeout=10),
        requests.put(server.base + "/v1/ruleset", headers=auth(), timeout=10),
    ]
    assert [r.status_code for r in cases] == [400, 413, 413, 415, 401, 404, 405]
    for r in cases:
        assert r.headers["Content-Type"] == "application/problem+json"
        openapi.validate(r.request.method or "GET", r.request.path_url.split("?")[0], r)


def test_metrics_add_up_over_the_workers(server: Server) -> None:
    def count() -> float:
        text = requests.get(server.base + "/metrics", timeout=10).text
        return sum(float(m) for m in re.findall(
            r'^deficiency_decisions_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))

    before = count()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: post(server, "/v1/decisions",
                                                facts(CAR, loan__id=f"m-{i}")).status_code,
                                 range(24)))
    assert statuses == [201] * 24
    for _ in range(4):  # whichever worker answers the scrape sees all of them
        assert count() == before + 24


def test_access_log_lines_are_json_without_facts_or_keys(server: Server) -> None:
    r = post(server, "/v1/decisions", facts(CAR, loan__id="log-check-loan"), key="decider")
    deadline = time.monotonic() + 10  # the line is written once the answer is sent
    while True:
        lines = [json.loads(line) for line in server.log().splitlines()
                 if line.startswith('{"ts"') and '"event": "access"' in line]
        mine = [e for e in lines if e.get("decision_id") == r.json()["decision_id"]]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mine and mine[0]["status"] == 201 and mine[0]["client"] == "decider"
    assert {"method", "path", "status", "duration_ms"} <= set(mine[0])
    text = server.log()
    assert "log-check-loan" not in text
    assert all(key not in text for key, _ in KEYS.values())


def test_reload_reaches_every_worker(server: Server) -> None:
    rules = Path(server.config).parent / "rules"
    header = rules / "ruleset.yaml"
    text = header.read_text()
    old = next(line for line in text.splitlines() if line.startswith("version:"))
    header.write_text(text.replace(old, 'version: "2099.9.9"'))
    r = requests.post(server.base + "/v1/ruleset/reload", headers=auth("admin"), timeout=30)
    assert r.status_code == 200 and r.json()["changed"] is True
    for _ in range(8):
        assert requests.get(server.base + "/v1/ruleset", headers=auth("decider"),
                            timeout=30).json()["version"] == "2099.9.9"
        assert post(server, "/v1/decisions", CAR).json()["ruleset"]["version"] == "2099.9.9"


def _read_responses(sock: Any, count: int) -> list[tuple[int, bytes]]:
    """`count` HTTP/1.1 responses (status, body) read off a raw keep-alive socket."""
    buf = b""
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} of {count} responses"
            buf += chunk
            continue
        head = buf[:end].decode("latin-1")
        length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))
        while len(buf) < end + 4 + length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside a response"
            buf += chunk
        out.append((int(head.split(" ", 2)[1]), buf[end + 4:end + 4 + length]))
        buf = buf[end + 4 + length:]
    return out


def test_keep_alive_requests_are_answered_back_to_back_pipelined_and_after_a_pause(
        server: Server) -> None:
    """Every way a client can send its next request on a keep-alive connection is
    answered, in order: right after the last answer, pipelined, after a pause, and split
    over two writes."""
    import socket
    import time

    host, port = server.base.removeprefix("http://").split(":")
    body = json.dumps(CAR).encode()
    decide = (f"POST /v1/decisions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
              f"\r\nAuthorization: Bearer {KEYS['decider'][0]}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    health = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        ids = set()
        for _ in range(20):  # back to back: the next request follows each answer at once
            sock.sendall(decide)
            [(status, answer)] = _read_responses(sock, 1)
            assert status == 201, answer
            ids.add(json.loads(answer)["decision_id"])
        assert len(ids) == 20
        sock.sendall(health + decide + health)  # pipelined: three requests in one write
        answers = _read_responses(sock, 3)
        assert [s for s, _ in answers] == [200, 201, 200]
        assert json.loads(answers[1][1])["outcome"]["bearer"] == "borrower"
        for pause in (0.05, 0.3):  # the connection idle between two requests
            time.sleep(pause)
            sock.sendall(decide)
            [(status, answer)] = _read_responses(sock, 1)
            assert status == 201, answer
        sock.sendall(decide[:40])  # a request split over two writes
        time.sleep(0.05)
        sock.sendall(decide[40:])
        [(status, answer)] = _read_responses(sock, 1)
        assert status == 201, answer



def test_clients_gone_quiet_after_an_unread_body_hold_no_thread(tmp_path: Path) -> None:
    """A request refused before the app reads its body (401, 415) leaves that body
    unread: the connection still serves its next request, and a client that then sends
    nothing more holds no request thread. With more such clients than the server has
    threads, a decision is still answered, and so is the next request on each of those
    connections."""
    import socket

    keys = [{"name": k.name, "sha256": k.sha256, "scopes": sorted(k.scopes)} for k in api_keys()]
    _, quiet_server = start_sqlite_server(tmp_path, workers=1, threads=2, keys=keys)
    host, port = quiet_server.base.removeprefix("http://").split(":")
    body = json.dumps(CAR).encode()

    def post_with(headers: str) -> bytes:
        return (f"POST /v1/decisions HTTP/1.1\r\nHost: {host}\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    key = f"Authorization: Bearer {KEYS['decider'][0]}\r\n"
    decide = post_with(f"Content-Type: application/json\r\n{key}")
    refused = [(post_with("Content-Type: application/json\r\n"), 401),
               (post_with(f"Content-Type: text/plain\r\n{key}"), 415)]
    quiet: list[socket.socket] = []
    try:
        for n in range(6):  # three times the threads
            request, status = refused[n % 2]
            sock = socket.create_connection((host, int(port)), timeout=10)
            quiet.append(sock)
            sock.sendall(request)
            [(got, _)] = _read_responses(sock, 1)
            assert got == status
        started = time.monotonic()
        r = requests.post(quiet_server.base + "/v1/decisions", json=CAR,
                          headers=auth("decider"), timeout=10)
        assert r.status_code == 201 and time.monotonic() - started < 2
        for sock in quiet:  # the connections still work, from the next request on
            sock.sendall(decide)
            [(got, answer)] = _read_responses(sock, 1)
            assert got == 201, answer
    finally:
        for sock in quiet:
            sock.close()
        quiet_server.stop()
