"""The console in-process (Flask's test client): sessions, CSRF, scopes, search and its
filters, the CSV, a decision's page, rulesets (active and archived), the log's
verification, and the headers every page carries."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.apikeys import key_sha256
from service.audit import StoreUnavailable
from service.audit.notes import Signer, write_new_key
from service.config import (
    ApiKey,
    AuditConfig,
    AuthConfig,
    Config,
    ConsoleConfig,
    RulesConfig,
    ServerConfig,
)
from service.console import decisions as console_decisions
from service.console import log as console_log
from service.console import present as console_present
from service.console import rulesets as console_rulesets
from service.console import session as console_session

from .conftest import CA_TRUSTEE_SALE, CAR, KEYS, SHORT_SALE

ROOT = Path(__file__).resolve().parents[2]


def keys(*names: str) -> tuple[ApiKey, ...]:
    return tuple(ApiKey(n, key_sha256(KEYS[n][0]), frozenset(KEYS[n][1])) for n in names)


def config(tmp: Path, *, key_names: tuple[str, ...] = tuple(KEYS),
           rules: Path = ROOT / "rules", replaced: dict[str, str] | None = None) -> Config:
    configured = keys(*key_names)
    if replaced:  # the same names, other keys
        configured = tuple(ApiKey(k.name, key_sha256(replaced[k.name]), k.scopes)
                           if k.name in replaced else k for k in configured)
    return Config(server=ServerConfig(access_log=False), rules=RulesConfig(rules),
                  audit=AuditConfig(f"sqlite:///{tmp}/audit.db"), auth=AuthConfig(configured))


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(cfg: Config | None = None) -> Flask:
        app = create_app(cfg or config(tmp_path))
        apps.append(app)
        return app

    yield build
    for app in reversed(apps):
        app.extensions["deficiency"].close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


def record(client: FlaskClient, facts: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(facts)
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    r = client.post("/v1/decisions", json=doc,
                    headers={"Authorization": f"Bearer {KEYS['author'][0]}"})
    assert r.status_code == 201, r.text
    return r.get_json()


def token(client: FlaskClient, path: str = "/console/sign-in") -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert found, path
    return found.group(1)


def signed_in(app: Flask, who: str = "author") -> FlaskClient:
    client = app.test_client()
    r = client.post("/console/sign-in", data={"api_key": KEYS[who][0],
                                              "csrf_token": token(client)})
    assert r.status_code == 302, r.text
    return client


# ------------------------------------------------------------------ sessions


def test_sign_in_needs_a_valid_key_and_the_session_never_holds_it(app: Flask) -> None:
    client = app.test_client()
    r = client.get("/console/decisions?bearer=lender")
    assert r.status_code == 302
    assert r.headers["Location"] == "/console/sign-in?next=%2Fconsole%2Fdecisions%3Fbearer%3Dlender"
    r = client.post("/console/sign-in", data={"api_key": "not-a-key", "csrf_token": token(client)})
    assert r.status_code == 401
    assert "api_key: that is not a valid API key." in r.text
    r = client.post("/console/sign-in", data={"api_key": KEYS["examiner"][0],
                                              "csrf_token": token(client),
                                              "next": "/console/decisions?bearer=lender"})
    assert r.status_code == 302 and r.headers["Location"] == "/console/decisions?bearer=lender"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    session = app.session_interface.get_signing_serializer(app).loads(value)  # type: ignore[attr-defined]
    assert session["key"] == "examiner"
    text = repr(session)
    assert KEYS["examiner"][0] not in text and key_sha256(KEYS["examiner"][0]) not in text
    assert client.get("/console/decisions").status_code == 200


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/",
                                    "/v1/decisions", "/console/\\evil", "javascript:alert(1)"])
def test_sign_in_only_returns_to_a_console_page(app: Flask, target: str) -> None:
    client = app.test_client()
    r = client.post("/console/sign-in", data={"api_key": KEYS["examiner"][0], "next": target,
                                              "csrf_token": token(client)})
    assert r.headers["Location"] == "/console/decisions"


def test_removing_or_replacing_a_key_ends_its_sessions(make_app: Callable[..., Flask],
                                                       tmp_path: Path) -> None:
    first = make_app()
    client = signed_in(first, "examiner")
    cookie = client.get_cookie("deficiency_console", path="/console")
    assert cookie is not None
    for changed in (config(tmp_path, key_names=("author", "decider")),
                    config(tmp_path, replaced={"examiner": "a-new-examiner-key"})):
        other = make_app(changed).test_client()
        other.set_cookie("deficiency_console", cookie.value, path="/console")
        r = other.get("/console/decisions")
        assert r.status_code == 302
        assert r.headers["Location"].startswith("/console/sign-in?ended=key")
        assert "no longer configured" in other.get(r.headers["Location"]).text
    # The same configuration still accepts it (the secret is shared through the file).
    same = make_app().test_client()
    same.set_cookie("deficiency_console", cookie.value, path="/console")
    assert same.get("/console/decisions").status_code == 200


def test_an_idle_session_ends(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    client = signed_in(app, "examiner")
    now = time.time()
    monkeypatch.setattr(console_session.time, "time", lambda: now + 29 * 60)
    assert client.get("/console/decisions").status_code == 200  # activity renews it
    monkeypatch.setattr(console_session.time, "time", lambda: now + 58 * 60)
    assert client.get("/console/decisions").status_code == 200
    monkeypatch.setattr(console_session.time, "time", lambda: now + 89 * 60)
    r = client.get("/console/decisions")
    assert r.headers["Location"].startswith("/console/sign-in?ended=idle")
    assert "after 30 minutes without activity" in client.get(r.headers["Location"]).text


def test_sign_out_needs_the_csrf_token_and_ends_the_session(app: Flask) -> None:
    client = signed_in(app, "examiner")
    r = client.post("/console/sign-out", data={"csrf_token": "forged"})
    assert r.status_code == 400 and "Form not accepted" in r.text
    assert client.get("/console/decisions").status_code == 200
    r = client.post("/console/sign-out", data={"csrf_token": token(client, "/console/log")})
    assert r.headers["Location"] == "/console/sign-in?ended=out"
    assert client.get("/console/decisions").status_code == 302


def test_posts_without_a_csrf_token_are_refused_but_the_api_is_not_affected(app: Flask) -> None:
    client = signed_in(app, "author")
    r = client.post("/console/playground", data={"mode": "json", "facts_json": "{}"})
    assert r.status_code == 400 and "CSRF token is missing" in r.text
    # The JSON API reads no cookie: no CSRF token needed, and the session is no key.
    r = client.post("/v1/decisions", json=CAR, headers={
        "Authorization": f"Bearer {KEYS['author'][0]}"})
    assert r.status_code == 201 and "Set-Cookie" not in r.headers
    assert client.get("/v1/decisions").status_code == 401


def test_scopes_are_the_apis(app: Flask) -> None:
    decider = signed_in(app, "decider")
    r = decider.get("/console/decisions")
    assert r.status_code == 403 and "lacks the scope &#39;audit:read&#39;" in r.text
    assert decider.get("/console/log").status_code == 403
    assert decider.get("/console/playground").status_code == 200
    examiner = signed_in(app, "examiner")
    assert examiner.get("/console/playground").status_code == 403
    assert examiner.post("/console/playground", data={
        "csrf_token": token(examiner, "/console/log")}).status_code == 403


def test_with_no_keys_configured_the_console_is_open(make_app: Callable[..., Flask],
                                                     tmp_path: Path) -> None:
    client = make_app(config(tmp_path, key_names=())).test_client()
    r = client.get("/console/decisions")
    assert r.status_code == 200 and "open console" in r.text
    assert client.get("/console/sign-in").status_code == 302


def test_every_page_forbids_scripts_and_caching(app: Flask) -> None:
    client = signed_in(app, "author")
    decision = record(client, CAR)
    for path in ("/console/decisions", f"/console/decisions/{decision['decision_id']}",
                 "/console/rulesets", "/console/playground", "/console/log",
                 "/console/sign-in", "/console/decisions/01ARZ3NDEKTSV4RRFFQ69G5FAV"):
        r = client.get(path)
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp, path
        assert "unsafe-inline" not in csp
        assert r.headers["Cache-Control"] == "no-store"
        assert "<script" not in r.text and " style=" not in r.text, path
    assert client.get("/console/decisions/01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404


# ------------------------------------------------------------------ search


@pytest.fixture
def log(app: Flask) -> dict[str, dict[str, Any]]:
    client = app.test_client()
    return {
        "car": record(client, CAR),
        "car2": record(client, CAR, loan__id="CAR-OH-3", jurisdiction="PA"),
        "short_sale": record(client, SHORT_SALE),
        "ca": record(client, CA_TRUSTEE_SALE),
        "formula": record(client, CAR, loan__id="=HYPERLINK(\"http://x\")"),
    }


def ids(page: str) -> list[str]:
    return re.findall(r'<a href="/console/decisions/([0-9A-Z]{26})" class="loan">', page)


@pytest.mark.parametrize(("query", "expected"), [
    ("", ["formula", "ca", "short_sale", "car2", "car"]),
    ("loan_id=CAR-OH-3", ["car2"]),
    ("bearer=lender", ["ca", "short_sale"]),
    ("action=write_off", ["ca", "short_sale"]),
    ("rule=non-judicial-bar", ["ca"]),
    ("rule=consumer-goods-default&jurisdiction=OH", ["formula", "car"]),
    ("jurisdiction=PA", ["car2"]),
    ("version=2026.12.0", ["formula", "ca", "short_sale", "car2", "car"]),
    ("version=2020.1.1", []),
    ("since=2000-01-01&until=2099-12-31", ["formula", "ca", "short_sale", "car2", "car"]),
    ("until=2001-01-01", []),
])
def test_search_filters(app: Flask, log: dict[str, dict[str, Any]], query: str,
                        expected: list[str]) -> None:
    r = signed_in(app, "examiner").get(f"/console/decisions?{query}")
    assert r.status_code == 200
    assert ids(r.text) == [log[name]["decision_id"] for name in expected]


@pytest.mark.parametrize(("query", "field"), [
    ("bearer=nobody", "bearer"), ("action=collect", "action"), ("jurisdiction=XX", "jurisdiction"),
    ("since=2026-13-01", "since"), ("since=2026-02-01&until=2026-01-01", "until"),
    ("loan_id=" + "x" * 129, "loan_id"), ("cursor=bogus", "cursor"),
])
def test_bad_filters_name_the_field(app: Flask, log: dict[str, dict[str, Any]], query: str,
                                    field: str) -> None:
    r = signed_in(app, "examiner").get(f"/console/decisions?{query}")
    assert r.status_code == 400
    assert f"<li><strong>{field}</strong>:" in r.text


def test_pages_go_on_where_the_last_stopped(app: Flask, log: dict[str, dict[str, Any]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_decisions, "PAGE", 2)
    client = signed_in(app, "examiner")
    seen: list[str] = []
    url = "/console/decisions"
    while url:
        r = client.get(url)
        seen += ids(r.text)
        found = re.search(r'<a rel="next" href="([^"]+)"', r.text)
        url = found.group(1).replace("&amp;", "&") if found else ""
    assert seen == [log[n]["decision_id"] for n in ("formula", "ca", "short_sale", "car2",
                                                     "car")]


def test_a_search_reads_a_bounded_number_of_records_per_page(
        app: Flask, log: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_decisions, "SCAN_BUDGET", 2)
    client = signed_in(app, "examiner")
    r = client.get("/console/decisions?rule=deficiency-waived")
    assert ids(r.text) == [] and "Stopped after reading 2 records" in r.text
    nxt = re.search(r'<a rel="next" href="([^"]+)"', r.text)
    assert nxt is not None
    r = client.get(nxt.group(1).replace("&amp;", "&"))
    assert ids(r.text) == [log["short_sale"]["decision_id"]]


def test_the_page_as_csv_cannot_carry_a_formula(app: Flask,
                                                log: dict[str, dict[str, Any]]) -> None:
    r = signed_in(app, "examiner").get("/console/decisions.csv?jurisdiction=OH")
    assert r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    lines = r.text.split("\r\n")
    assert lines[0] == ",".join(console_decisions.CSV_COLUMNS)
    assert lines[1].startswith(f"{log['formula']['decision_id']},")
    assert "'=HYPERLINK" in lines[1]
    car = lines[2].split(",")
    assert car[0] == log["car"]["decision_id"] and car[2] == "CAR-OH-2"
    assert car[7:10] == [log["car"]["amounts"]["deficiency"],
                         log["car"]["outcome"]["borrower_owes"],
                         log["car"]["outcome"]["lender_absorbs"]]
    assert len([line for line in lines if line]) == 3


# ------------------------------------------------------------------ one decision


def test_a_decision_made_by_an_older_ruleset_is_explained_by_that_ruleset(
        make_app: Callable[..., Flask], tmp_path: Path) -> None:
    old = make_app()
    decision = record(old.test_client(), CA_TRUSTEE_SALE)
    old_sha = decision["ruleset"]["sha256"]
    newer = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", newer)
    text = (newer / "ruleset.yaml").read_text()
    (newer / "ruleset.yaml").write_text(re.sub(r"version: \S+", "version: 2099.1.0", text, count=1))
    app = make_app(config(tmp_path, rules=newer))
    client = signed_in(app, "examiner")
    assert app.extensions["deficiency"].rulesets.info["version"] == "2099.1.0"
    page = client.get(f"/console/decisions/{decision['decision_id']}").text
    assert ("ca-580b-purchase-money: collateral.owner_occupied is false, the rule needs true"
            in page)
    assert f'href="/console/rulesets/{old_sha}"' in page
    r = client.get(f"/console/rulesets/{old_sha}")
    assert r.status_code == 200
    assert "2026.12.0" in r.text and 'id="tests"' not in r.text and "passes" in r.text
    listing = client.get("/console/rulesets").text
    assert old_sha in listing
    # Archived rulesets need audit:read; the active one any key.
    decider = signed_in(app, "decider")
    assert decider.get(f"/console/rulesets/{old_sha}").status_code == 403
    active = app.extensions["deficiency"].rulesets.info["sha256"]
    r = decider.get(f"/console/rulesets/{active}")
    assert r.status_code == 200 and 'id="tests-summary"' in r.text


def test_an_altered_record_fails_its_receipt_check(app: Flask, tmp_path: Path) -> None:
    client = signed_in(app, "author")
    decision = record(client, CAR)
    page = client.get(f"/console/decisions/{decision['decision_id']}").text
    assert 'id="receipt-check">✓ leaf 0 is in the signed tree of 1 records' in page
    engine = sa.create_engine(f"sqlite:///{tmp_path}/audit.db")
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE audit_records SET decision = replace(decision, "
                                   "'pursue_deficiency', 'write_off')"))
    engine.dispose()
    page = client.get(f"/console/decisions/{decision['decision_id']}").text
    assert 'id="receipt-check">✗ the record&#39;s content does not hash to its hash' in page
    r = client.post("/console/log/verify", data={"csrf_token": token(client, "/console/log")})
    assert "✗ The log does not hold" in r.text


def test_the_log_verification_stops_at_its_time_limit(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    client = signed_in(app, "author")
    for i in range(3):
        record(client, CAR, loan__id=f"L-{i}")
    r = client.post("/console/log/verify", data={"csrf_token": token(client, "/console/log")})
    assert "✓ The log holds: 3 records" in r.text
    monkeypatch.setattr(console_log, "VERIFY_SECONDS", 0.0)
    store = app.extensions["deficiency"].audit.store()
    original = store.verify
    monkeypatch.setattr(store, "verify", lambda **kw: original(batch=1, **kw))
    r = client.post("/console/log/verify", data={"csrf_token": token(client, "/console/log")})
    assert "Stopped after 0 seconds: the first 1 records are sound" in r.text


# ------------------------------------------------------------------ playground


def test_the_playground_form_spells_the_facts_the_api_takes(app: Flask) -> None:
    client = signed_in(app, "decider")
    form = {"csrf_token": token(client, "/console/playground"), "mode": "form",
            "jurisdiction": "OH", "loan.id": "P-1", "loan.type": "auto",
            "loan.unpaid_balance": "10000.00", "collateral.kind": "vehicle",
            "disposition.method": "auction", "disposition.date": "2026-06-01",
            "disposition.proceeds": "8500.00", "disposition.costs.legal": "500.00",
            "as_of": "2026-07-01", "loan.consumer": "true", "collateral.dwelling_units": ""}
    r = client.post("/console/playground", data=form)
    assert r.status_code == 200
    assert 'id="bearer">borrower<' in r.text
    assert 'data-step="deficiency" data-amount="2000.00"' in r.text
    assert "not recorded" in r.text
    assert app.extensions["deficiency"].audit.store().count() == 0
    r = client.post("/console/playground", data={**form, "loan.unpaid_balance": "1.234",
                                                  "collateral.dwelling_units": "0"})
    assert r.status_code == 400
    assert "<strong>loan.unpaid_balance</strong>" in r.text
    assert "<strong>collateral.dwelling_units</strong>" in r.text
    assert 'value="1.234"' in r.text  # the form keeps what was typed


def test_a_recorded_decisions_facts_fill_the_playground(app: Flask) -> None:
    client = signed_in(app, "author")
    decision = record(client, CA_TRUSTEE_SALE)
    page = client.get(f"/console/decisions/{decision['decision_id']}").text
    assert f'href="/console/playground?from={decision["decision_id"]}"' in page
    r = client.get(f"/console/playground?from={decision['decision_id']}")
    assert r.status_code == 200
    assert '<option selected>non_judicial_foreclosure</option>' in r.text
    assert 'name="loan.unpaid_balance" value="400000.00"' in r.text
    decider = signed_in(app, "decider")
    assert decider.get(f"/console/playground?from={decision['decision_id']}"
                       ).status_code == 403
    assert 'id="try-in-playground"' not in signed_in(app, "examiner").get(
        f"/console/decisions/{decision['decision_id']}").text


def test_without_a_usable_session_key_the_console_says_why_and_the_api_works(
        make_app: Callable[..., Flask], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    short = tmp_path / "short.key"
    short.write_text("too short\n")
    cfg = dataclasses.replace(config(tmp_path), console=ConsoleConfig(session_key=short))
    with caplog.at_level(logging.ERROR, logger="deficiency.api"):
        client = make_app(cfg).test_client()
    assert "console.session_key" in caplog.text and "at least 32" in caplog.text
    r = client.get("/console/sign-in")
    assert r.status_code == 503
    assert "console.session_key" in r.text and str(tmp_path) not in r.text
    assert client.post("/v1/decisions", json=CAR, headers={
        "Authorization": f"Bearer {KEYS['author'][0]}"}).status_code == 201


def test_one_verification_at_a_time(app: Flask) -> None:
    client = signed_in(app, "examiner")
    csrf = token(client, "/console/log")
    with console_log._one_at_a_time:  # a verification is running
        r = client.post("/console/log/verify", data={"csrf_token": csrf})
        assert r.status_code == 429 and "being verified already" in r.text
    r = client.post("/console/log/verify", data={"csrf_token": csrf})
    assert r.status_code == 200 and 'id="verify-result">✓' in r.text
    assert r.text.rstrip().endswith("</html>") and r.text.count("</html>") == 1


# ------------------------------------------------------------------ what the review found


def test_a_session_ends_at_its_age_limit_however_active(app: Flask,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    client = signed_in(app, "examiner")
    now = time.time()
    for minutes in range(20, 12 * 60, 20):  # a request every 20 minutes for 12 hours
        monkeypatch.setattr(console_session.time, "time", lambda m=minutes: now + m * 60)
        assert client.get("/console/log").status_code == 200
    monkeypatch.setattr(console_session.time, "time", lambda: now + 12 * 3600 + 60)
    r = client.get("/console/log")
    assert r.headers["Location"].startswith("/console/sign-in?ended=age")
    assert "limit of 12 hours since sign-in" in client.get(r.headers["Location"]).text


def test_console_errors_are_pages_with_the_consoles_headers(
        app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    client = signed_in(app, "author")
    r = client.get("/console/no-such-page")
    assert r.status_code == 404 and r.mimetype == "text/html"
    assert "The console has no such page." in r.text
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    r = client.get("/console/sign-out")  # a link or a reload does not sign out
    assert r.status_code == 200 and "Sign out of author" in r.text
    assert client.get("/console/log").status_code == 200
    store = app.extensions["deficiency"].audit.store()

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("audit store unavailable: the database does not answer")

    monkeypatch.setattr(store, "get", unavailable)
    r = client.get("/console/decisions/01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert r.status_code == 503 and "the database does not answer" in r.text
    assert r.mimetype == "text/html"
    monkeypatch.setattr(store, "tree_head", lambda: 1 / 0)
    r = client.get("/console/log")
    assert r.status_code == 500 and "ZeroDivisionError" not in r.text
    assert "the server&#39;s log has the details" in r.text


@pytest.mark.parametrize("typed", ["²", "--5", "١٢", "1e3", " 12 3"])
def test_the_playground_refuses_what_is_not_an_integer_by_name(app: Flask, typed: str) -> None:
    client = signed_in(app, "decider")
    r = client.post("/console/playground", data={
        "csrf_token": token(client, "/console/playground"), "mode": "form",
        "jurisdiction": "OH", "loan.id": "P-1", "loan.type": "auto",
        "loan.unpaid_balance": "10000.00", "collateral.kind": "vehicle",
        "collateral.dwelling_units": typed, "disposition.method": "auction",
        "disposition.date": "2026-06-01", "disposition.proceeds": "8500.00"})
    assert r.status_code == 400
    assert "<strong>collateral.dwelling_units</strong>" in r.text


def test_dates_are_read_as_written_and_compared_as_dates(app: Flask) -> None:
    client = signed_in(app, "examiner")
    r = client.get("/console/decisions?since=2024-01-05&until=20240101")
    assert r.status_code == 400 and "<li><strong>until</strong>: &#39;20240101&#39; is not" \
        in r.text
    r = client.get("/console/decisions?since=2024-01-05&until=2024-01-01")
    assert r.status_code == 400 and "must not be before since" in r.text


def test_the_access_log_names_the_console_user(make_app: Callable[..., Flask],
                                               tmp_path: Path) -> None:
    stream = io.StringIO()
    cfg = dataclasses.replace(config(tmp_path), server=ServerConfig(access_log=True))
    app = create_app(cfg, access_log_stream=stream)
    try:
        client = signed_in(app, "examiner")
        client.get("/console/decisions", buffered=True).close()
    finally:
        app.extensions["deficiency"].close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    seen = [line for line in lines if line["path"] == "/console/decisions"]
    assert seen and seen[-1]["client"] == "examiner"
    assert KEYS["examiner"][0] not in stream.getvalue()


def test_the_receipt_check_follows_the_receipt_to_the_latest_checkpoint(
        app: Flask, tmp_path: Path) -> None:
    client = signed_in(app, "author")
    first = record(client, CAR)
    record(client, CAR, loan__id="CAR-2")
    page = client.get(f"/console/decisions/{first['decision_id']}").text
    assert ("✓ leaf 0 is in the signed tree of 1 records (its receipt), and the latest signed "
            "checkpoint, of 2 records, extends that tree") in page
    # The latest checkpoint replaced by one signed with another key: not vouched for.
    other = Signer.from_file(_new_key(tmp_path), "deficiency-service/audit")
    engine = sa.create_engine(f"sqlite:///{tmp_path}/audit.db")
    with engine.begin() as connection:
        root = connection.execute(sa.text(
            "SELECT root FROM audit_checkpoints WHERE tree_size = 2")).scalar()
        connection.execute(sa.text("UPDATE audit_checkpoints SET note = :n WHERE tree_size = 2"),
                           {"n": other.checkpoint(2, bytes(root))})
    engine.dispose()
    page = client.get(f"/console/decisions/{first['decision_id']}").text
    assert 'id="receipt-check">✗ the latest signed checkpoint does not extend' in page


def _new_key(tmp_path: Path) -> Path:
    path = tmp_path / "other-key.pem"
    write_new_key(path)
    return path


def test_why_not_never_contradicts_the_recorded_trace(app: Flask,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    client = signed_in(app, "author")
    decision = record(client, CAR)
    real = console_present.why_not

    def drifted(rs: Any, facts: Any) -> list[dict[str, Any]]:  # as if today's code differed
        return [*real(rs, facts), {"stage": "bearer", "rule": "consumer-goods-default",
                                   "priority": 110, "path": "loan.type", "actual": "auto",
                                   "needs": "mortgage", "message": "consumer-goods-default: x"}]

    monkeypatch.setattr(console_present, "why_not", drifted)
    page = client.get(f"/console/decisions/{decision['decision_id']}").text
    assert "consumer-goods-default would not match, but the recorded trace shows it" in page
    assert "consumer-goods-default: x" not in page


def test_a_review_that_takes_too_long_says_so(app: Flask,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_rulesets, "REVIEW_SECONDS", 0.01)
    client = signed_in(app, "examiner")
    active = app.extensions["deficiency"].rulesets.info["sha256"]
    r = client.get(f"/console/rulesets/{active}")
    assert r.status_code == 200 and "The check did not finish in 0 s" in r.text
    monkeypatch.setattr(console_rulesets, "REVIEW_SECONDS", 300.0)
    r = client.get(f"/console/rulesets/{active}")  # not kept: made again, in full
    assert 'id="tests-summary"' in r.text
