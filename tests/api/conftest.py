"""Fixtures for the HTTP API.

In-process tests use `client`: Flask's test client wrapped so that EVERY response
is validated against the schema /openapi.json gives for its path, method and
status (problem+json for errors). End-to-end tests start the real server
(`python -m service.cli serve`) as a subprocess, see `servers.py`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from service.api import create_app
from service.apikeys import key_sha256
from service.config import ApiKey, AuditConfig, AuthConfig, Config, RulesConfig, ServerConfig

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
PG_ADMIN_URL = os.environ.get("API_TEST_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# SPEC §6 public examples.
SHORT_SALE: dict[str, Any] = {
    "as_of": "2026-02-01",
    "jurisdiction": "TX",
    "loan": {"id": "seed-short-sale", "type": "mortgage", "unpaid_balance": "250000.00",
             "investor": "portfolio"},
    "collateral": {"kind": "dwelling", "dwelling_units": 1, "owner_occupied": True},
    "disposition": {"method": "short_sale", "date": "2026-01-10", "proceeds": "200000.00"},
    "negotiation": {"state": "short_sale_approved", "deficiency_waived": True},
}
CAR: dict[str, Any] = {
    "as_of": "2026-02-01",
    "jurisdiction": "OH",
    "loan": {"id": "seed-car", "type": "auto", "unpaid_balance": "10000.00"},
    "collateral": {"kind": "vehicle"},
    "disposition": {"method": "auction", "date": "2026-01-10", "proceeds": "8500.00",
                    "costs": {"legal": "500.00"}},
}

# Keys used by the tests: name -> (key, scopes)
KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "decider": ("dfy_test_decider_key", ("decide",)),
    "auditor": ("dfy_test_auditor_key", ("audit:read",)),
    "admin": ("dfy_test_admin_key", ("admin",)),
    "all": ("dfy_test_all_scopes_key", ("decide", "audit:read", "admin")),
}


def api_keys() -> tuple[ApiKey, ...]:
    return tuple(ApiKey(name, key_sha256(key), frozenset(scopes))
                 for name, (key, scopes) in KEYS.items())


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def facts(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `base` with dotted-path changes (`loan.id="x"`)."""
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = doc
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return doc


# ------------------------------------------------------------------ OpenAPI conformance


class OpenApi:
    """Validates responses against the served OpenAPI document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.routes = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
            for path in doc["paths"]
        ]
        jsonschema.Draft202012Validator.check_schema(
            {"$defs": doc["components"]["schemas"]})

    def schema_for(self, method: str, path: str, status: int, content_type: str) -> Any:
        template = next((t for rx, t in self.routes if rx.match(path)), None)
        if status >= 400:
            assert content_type == "application/problem+json", (status, content_type)
        if template is None or method.lower() not in self.doc["paths"][template]:
            assert status in (401, 404, 405), (method, path, status)
            return {"$ref": "#/components/schemas/Problem"}
        op = self.doc["paths"][template][method.lower()]
        response = op["responses"].get(str(status))
        assert response is not None, f"{method} {template}: status {status} not documented"
        if "$ref" in response:
            name = response["$ref"].rsplit("/", 1)[1]
            response = self.doc["components"]["responses"][name]
        media = response["content"]
        assert content_type in media, (method, template, status, content_type, list(media))
        return media[content_type]["schema"]

    def validate(self, method: str, path: str, response: TestResponse | Any) -> None:
        status = response.status_code
        content_type = (response.headers.get("Content-Type") or "").split(";")[0]
        schema = self.schema_for(method, path, status, content_type)
        if not content_type.endswith("json"):
            return
        body = response.json() if callable(response.json) else response.json
        self.validate_body(schema, body)

    def validate_body(self, schema: Any, body: Any) -> None:
        root = {**schema, "components": self.doc["components"]}
        jsonschema.Draft202012Validator(
            root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(body)

    def component(self, name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}


class ConformingClient:
    """Flask's test client; every response is checked against /openapi.json."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._client = app.test_client()
        doc = self._client.get("/openapi.json", buffered=True).json
        self.openapi = OpenApi(doc)
        self.checked = 0

    def open(self, method: str, path: str, **kwargs: Any) -> TestResponse:
        # Buffered: the answer is read whole and closed, as a server does (the access
        # log line is written when it closes).
        kwargs.setdefault("buffered", True)
        response = self._client.open(path, method=method, **kwargs)
        if method != "HEAD":
            self.openapi.validate(method, path.split("?")[0], response)
            self.checked += 1
        return response

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.open("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> TestResponse:
        return self.open("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> TestResponse:
        return self.open("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> TestResponse:
        return self.open("DELETE", path, **kw)


# ------------------------------------------------------------------ apps


def make_config(tmp_path: Path, *, keys: tuple[ApiKey, ...] = (),
                audit_url: str | None = None, rules_dir: Path = RULES,
                **limits: int) -> Config:
    config = Config(
        server=ServerConfig(access_log=False),
        rules=RulesConfig(rules_dir),
        audit=AuditConfig(audit_url or f"sqlite:///{tmp_path}/audit/audit.db"),
        auth=AuthConfig(keys),
    )
    if limits:
        config = replace(config, limits=replace(config.limits, **limits))
    return config


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(config: Config | None = None, **kwargs: Any) -> Flask:
        app = create_app(config or make_config(tmp_path), **kwargs)
        apps.append(app)
        return app

    yield build
    for app in reversed(apps):
        app.extensions["deficiency"].close()


@pytest.fixture
def app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    """An app with API keys (KEYS) and a SQLite audit log under tmp_path."""
    return make_app(make_config(tmp_path, keys=api_keys()))


@pytest.fixture
def client(app: Flask) -> ConformingClient:
    return ConformingClient(app)


@pytest.fixture
def open_client(make_app: Callable[..., Flask], tmp_path: Path) -> ConformingClient:
    """No keys configured: the service is open."""
    return ConformingClient(make_app(make_config(tmp_path)))


def post_json(client: ConformingClient, path: str, doc: Any, *, key: str | None = "all",
              headers: dict[str, str] | None = None) -> TestResponse:
    all_headers = {**(bearer(key) if key else {}), **(headers or {})}
    return client.post(path, data=json.dumps(doc), content_type="application/json",
                       headers=all_headers)


# ------------------------------------------------------------------ PostgreSQL


def _admin_engine() -> sa.Engine:
    return sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


@contextlib.contextmanager
def new_pg_database() -> Iterator[str]:
    """A uniquely named, empty PostgreSQL database (its URL), dropped afterwards."""
    name = f"api_test_{uuid.uuid4().hex[:16]}"
    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc.orig})",
                    pytrace=False)
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test session, dropped at the end."""
    with new_pg_database() as url:
        yield url


def pg_url_via(url: str, port: int) -> str:
    """The same database reached through another port (a proxy)."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def problem_paths(response: TestResponse) -> list[str]:
    body = response.json
    assert response.content_type == "application/problem+json"
    return [e["path"] for e in body.get("errors", [])]


def dumps(doc: Any) -> str:
    return json.dumps(doc)
