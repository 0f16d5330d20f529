"""Fixtures of the hardening suite (docs/reliability.md).

Everything here runs against the REAL server: `python -m service.cli serve` (granian,
2 worker processes, threads), its audit log in SQLite under the test's tmp directory,
API keys with every scope configured (tests/api/conftest.py KEYS), started and
stopped as a subprocess by tests/api/servers.py.

- `live`: the default limits; shared by the fuzzing, hostile-facts and hazard tests.
- `tight`: small limits (body, batch, depth) and its own copy of the rules directory
  (the malicious-policy-author tests rewrite it).

Both check when they stop that no worker process died or was replaced while they
ran, that it exited cleanly on SIGTERM, and that its output (stdout and stderr) holds
no API key and no traceback.

Figures (requests fuzzed, examples generated, hazards covered) are collected with
`figures.add(...)` and printed in pytest's closing summary.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from tests.api.conftest import (
    KEYS,
    RULES,
    OpenApi,
    api_keys,
    pg_database,  # noqa: F401 - a fixture (test_store_faults.py)
)
from tests.api.servers import Server, free_port, write_config


class _Answer:
    """The parts of a response OpenApi.validate reads, from any HTTP client."""

    def __init__(self, status: int, headers: Mapping[str, Any], content: bytes) -> None:
        self.status_code = status
        self.headers = CaseInsensitiveDict(
            {k: (v[0] if isinstance(v, list) else v) for k, v in headers.items()})
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class Conformance:
    """Every answer against the served OpenAPI document (status documented for the
    operation, media type, body schema; errors are problem+json), strictly: no
    tolerated deviation."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.openapi = OpenApi(doc)
        self.checked = 0

    def check(self, method: str, path: str, status: int, headers: Mapping[str, Any],
              content: bytes, *, not_implemented: bool = False) -> None:
        """`not_implemented`: a 501 is the right answer here (RFC 9112 §6.1: a transfer
        coding the server does not implement); any other 5xx still fails."""
        method = method.upper()
        answer = _Answer(status, headers, content)
        assert status < 500 or (not_implemented and status == 501), \
            f"{method} {path}: {status} {content[:500]!r}"
        self.checked += 1
        if method == "OPTIONS":
            # Answered by Flask for every route (RFC 9110): the allowed methods, no body.
            assert status in (200, 404), (path, status)
            if status == 200:
                assert "Allow" in answer.headers and content == b"", (path, content[:200])
                return
        if method == "HEAD":
            return  # a GET without its body
        self.openapi.validate(method, path, answer)

    def check_response(self, method: str, response: requests.Response) -> None:
        path = requests.utils.urlparse(response.url).path
        self.check(method, path, response.status_code, response.headers, response.content)


# ------------------------------------------------------------------ servers

#: The HTTP server's line for each worker it starts (on the server's stderr).
_BOOTED = re.compile(r"Spawning worker-[0-9]+ with PID: ([0-9]+)")


def auth(name: str = "all") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def config_keys() -> list[dict[str, Any]]:
    return [{"name": k.name, "sha256": k.sha256, "scopes": sorted(k.scopes)}
            for k in api_keys()]


@dataclass
class Live:
    """A running server and what the tests need to know about it."""

    server: Server
    config: Path
    rules: Path
    limits: dict[str, int]
    openapi_doc: dict[str, Any]
    conformance: Conformance
    boot_workers: set[int] = field(default_factory=set)
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def base(self) -> str:
        return self.server.base

    def children(self) -> set[int]:
        """The server's child processes (its workers, and any helper process)."""
        proc = self.server.proc
        assert proc is not None and proc.poll() is None, "the server is not running"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        return {int(pid) for pid in children}

    def workers(self) -> set[int]:
        """The worker processes, by pid: children the server announced as workers
        (the master may have other children). A worker
        that died and was replaced shows as a different set."""
        booted = {int(pid) for pid in _BOOTED.findall(self.log())}
        return self.children() & booted

    def log(self) -> str:
        """Everything the server wrote (stdout and stderr: access log, app log, granian)."""
        return self.server.log_path.read_text(errors="replace")

    def post(self, path: str, body: bytes | str | Any, *, key: str | None = "all",
             headers: dict[str, str] | None = None, timeout: float = 60) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        all_headers = {"Content-Type": "application/json", **(auth(key) if key else {}),
                       **(headers or {})}
        return self.session.post(self.base + path, data=data, headers=all_headers,
                                 timeout=timeout)

    def get(self, path: str, *, key: str | None = "all",
            headers: dict[str, str] | None = None, timeout: float = 60) -> requests.Response:
        return self.session.get(self.base + path,
                                headers={**(auth(key) if key else {}), **(headers or {})},
                                timeout=timeout)


def _start(tmp: Path, *, limits: dict[str, int] | None = None,
           audit_url: str | None = None, audit_timeout: int | None = None) -> Live:
    rules = tmp / "rules"
    shutil.copytree(RULES, rules, ignore=shutil.ignore_patterns("tests"))
    port = free_port()
    config = write_config(tmp / "config.yaml", port=port, workers=2,
                          audit_url=audit_url or f"sqlite:///{tmp}/audit/audit.db",
                          keys=config_keys(), rules_dir=rules, audit_timeout=audit_timeout)
    if limits:
        with config.open("a") as f:
            f.write("limits:\n" + "".join(f"  {k}: {v}\n" for k, v in limits.items()))
    server = Server(config, port, tmp / "server.log").start()
    try:
        doc = requests.get(server.base + "/openapi.json", timeout=10).json()
        live = Live(server, config, rules, dict(limits or {}), doc, Conformance(doc))
        live.boot_workers = _settled_workers(live)
    except BaseException:
        server.kill()
        raise
    return live


def _settled_workers(live: Live) -> set[int]:
    deadline = time.monotonic() + 30
    while True:
        workers = live.workers()
        if len(workers) == 2:
            return workers
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)


def _finish(live: Live, name: str) -> None:
    try:
        assert live.workers() == live.boot_workers, (
            "a worker process died or was replaced while the suite ran:\n" + live.server.log())
    finally:
        code = live.server.stop()
    log = live.log()
    assert code == 0, log[-3000:]
    leaked = [key_name for key_name, (key, _) in KEYS.items() if key in log]
    assert leaked == [], f"API keys {leaked} appear in the server's output"
    _FIGURES.add(f"{name} server: {live.conformance.checked} answers checked against "
                 f"/openapi.json; workers unchanged {sorted(live.boot_workers)}")
    at = log.find("Traceback")
    assert at < 0, "a traceback in the server's output:\n" + log[max(0, at - 2000):at + 4000]


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The real server with the default limits, every key configured."""
    srv = _start(tmp_path_factory.mktemp("hardening-live"))
    yield srv
    _finish(srv, "live")


TIGHT_LIMITS = {"max_body_bytes": 4096, "max_batch_items": 3, "max_json_depth": 6}


@pytest.fixture(scope="session")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The real server with small configured limits and its own rules directory."""
    srv = _start(tmp_path_factory.mktemp("hardening-tight"), limits=TIGHT_LIMITS)
    yield srv
    _finish(srv, "tight")


# ------------------------------------------------------------------ figures


class Figures:
    """What the suite reached, printed at the end of the run."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        print(line)
        self.lines.append(line)


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return _FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES.lines:
        terminalreporter.section("hardening figures")
        for line in _FIGURES.lines:
            terminalreporter.write_line(line)


# ------------------------------------------------------------------ small helpers

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$@-]{1,64}")


def key_path(parent: str, key: str) -> str:
    """The path the service names an object member by (SPEC §2: dotted; odd keys
    JSON-quoted in brackets, shortened to 64 characters)."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    text = key if len(key) <= 64 else key[:64] + "\u2026"
    return f"{parent}[{json.dumps(text, ensure_ascii=True)}]"
