"""Fixtures for the console: the real server with keys of each scope and a few recorded
decisions, and a real headless Chromium (Debian's `chromium`, driven by Playwright)
with a fresh profile for each test."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from service.apikeys import key_sha256
from tests.api.servers import ROOT, Server, free_port

CHROMIUM = "/usr/bin/chromium"
#: Without the network flags Chromium tries to reach hosts this machine cannot.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
#: Where the tests save screenshots of the main pages (README shows two of them).
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS", ROOT / "build" / "screenshots"))

KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "examiner": ("dfy_console_examiner_key", ("audit:read",)),
    "author": ("dfy_console_author_key", ("decide", "audit:read")),
    "decider": ("dfy_console_decider_key", ("decide",)),
}
IDLE_MINUTES = 20

CAR: dict[str, Any] = {
    "as_of": "2026-07-01", "jurisdiction": "OH",
    "loan": {"id": "CAR-OH-2", "type": "auto", "unpaid_balance": "10000.00",
             "accrued_interest": "250.00", "fees": "75.00"},
    "collateral": {"kind": "vehicle"},
    "disposition": {"method": "auction", "date": "2026-06-01", "proceeds": "8500.00",
                    "costs": {"legal": "500.00", "storage": "120.00"}, "credits": "40.00"},
}
SHORT_SALE: dict[str, Any] = {
    "as_of": "2026-07-01", "jurisdiction": "TX",
    "loan": {"id": "SEED-1", "type": "mortgage", "unpaid_balance": "250000.00",
             "investor": "portfolio"},
    "collateral": {"kind": "dwelling"},
    "disposition": {"method": "short_sale", "date": "2026-06-01", "proceeds": "200000.00"},
    "negotiation": {"state": "short_sale_approved", "deficiency_waived": True},
}
#: Two bearer rules match (non-judicial-bar and mortgage-recourse-default): one is
#: overridden; ca-580b does not match because the home is not owner-occupied.
CA_TRUSTEE_SALE: dict[str, Any] = {
    "as_of": "2026-07-01", "jurisdiction": "CA",
    "loan": {"id": "CA-NJ-7", "type": "mortgage", "unpaid_balance": "400000.00",
             "purchase_money": True},
    "collateral": {"kind": "dwelling", "dwelling_units": 1, "owner_occupied": False},
    "disposition": {"method": "non_judicial_foreclosure", "date": "2026-06-01",
                    "proceeds": "350000.00"},
}
SCRIPT_LOAN_ID = "<script>alert(1)</script>"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def write_console_config(path: Path, *, port: int, data: Path) -> Path:
    lines = ["server:", f"  bind: 127.0.0.1:{port}", "  workers: 2", "  threads: 8",
             "  graceful_timeout: 10", "rules:", f"  dir: {ROOT / 'rules'}", "audit:",
             f"  url: sqlite:///{data}/audit.db", "console:",
             f"  session_idle_minutes: {IDLE_MINUTES}", "auth:", "  keys:"]
    for name, (key, scopes) in KEYS.items():
        lines += [f"    - name: {name}", f"      sha256: {key_sha256(key)}",
                  f"      scopes: [{', '.join(scopes)}]"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Console:
    """The running server, its data directory and the decisions recorded for the tests."""

    def __init__(self, server: Server, data: Path) -> None:
        self.server = server
        self.base = server.base
        self.data = data
        self.decisions: dict[str, dict[str, Any]] = {}

    def record(self, name: str, facts: dict[str, Any]) -> dict[str, Any]:
        r = requests.post(self.base + "/v1/decisions", json=facts, headers=bearer("author"),
                          timeout=30)
        assert r.status_code == 201, r.text
        self.decisions[name] = r.json()
        return r.json()

    def tree_size(self) -> int:
        r = requests.get(self.base + "/v1/log/checkpoint", headers=bearer("examiner"),
                         timeout=10)
        return int(r.text.split("\n")[1])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    data = tmp / "data"
    data.mkdir()
    port = free_port()
    config = write_console_config(tmp / "config.yaml", port=port, data=data)
    server = Server(config, port, tmp / "server.log").start()
    try:
        running = Console(server, data)
        running.record("car", CAR)
        running.record("short_sale", SHORT_SALE)
        running.record("ca", CA_TRUSTEE_SALE)
        script = copy.deepcopy(CAR)
        script["loan"]["id"] = SCRIPT_LOAN_ID
        running.record("script", script)
        yield running
    finally:
        server.stop()


class Chromium:
    """Launches Chromium with a fresh profile (its own --user-data-dir) each time."""

    def __init__(self, pw: Any, tmp_path: Path) -> None:
        self._pw = pw
        self._tmp = tmp_path
        self._open: list[Any] = []

    def launch(self, *, javascript: bool = True) -> Any:
        context = self._pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=self._tmp, prefix="profile-"), executable_path=CHROMIUM,
            headless=True, args=CHROMIUM_ARGS, accept_downloads=True,
            java_script_enabled=javascript, viewport={"width": 1280, "height": 900})
        self._open.append(context)
        return context

    def close(self) -> None:
        for context in self._open:
            context.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: the README's test " \
                                    "command installs it (apt-get install chromium)"
    with sync_playwright() as pw:
        launcher = Chromium(pw, tmp_path)
        try:
            yield launcher
        finally:
            launcher.close()


@pytest.fixture
def browser(chromium: Chromium) -> Any:
    """A Chromium (a persistent context with a fresh profile) for this test."""
    return chromium.launch()


def sign_in(page: Any, base: str, who: str, then: str = "/console/decisions") -> None:
    page.goto(base + then)
    assert "/console/sign-in" in page.url
    page.fill("#api_key", KEYS[who][0])
    page.click("form.sign-in button[type=submit]")
    page.wait_for_load_state()


def screenshot(page: Any, name: str) -> None:
    """The page as a person first sees it (1280×900), saved as SHOTS/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))
