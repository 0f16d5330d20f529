"""Bad requests are 4xx application/problem+json naming every offending field, and
never reach the engine; unknown routes and methods too; a crash is a bare 500."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from service.engine.decide import Decider

from .conftest import (
    CAR,
    ConformingClient,
    api_keys,
    bearer,
    facts,
    make_config,
    post_json,
    problem_paths,
)


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call into the engine, so tests can assert bad input never got there."""
    calls: list[Any] = []
    original = Decider.decide_facts

    def spy(self: Decider, f: dict[str, Any]) -> dict[str, Any]:
        calls.append(f)
        return original(self, f)

    monkeypatch.setattr(Decider, "decide_facts", spy)
    return calls


def raw_post(client: ConformingClient, body: bytes | str, *,
             content_type: str = "application/json", path: str = "/v1/decisions",
             **headers: str) -> Any:
    return client.post(path, data=body, content_type=content_type,
                       headers={**bearer("all"), **headers})


def test_every_invalid_field_is_listed_with_its_path(client: ConformingClient,
                                                      engine_calls: list[Any]) -> None:
    bad = facts(CAR, jurisdiction="ZZ", loan__unpaid_balance="-5", loan__consumer="yes",
                collateral__dwelling_units=0, disposition__date="2026-02-30",
                disposition__costs__legal=1e-3, sid=1, loan__extra=True)
    bad["loan"]["$where"] = "x"
    r = post_json(client, "/v1/decisions", bad)
    assert r.status_code == 422
    assert r.json["type"].endswith("invalid-facts")
    assert set(problem_paths(r)) == {
        "jurisdiction", "loan.unpaid_balance", "loan.consumer", "collateral.dwelling_units",
        "disposition.date", "disposition.costs.legal", "sid", "loan.extra", "loan.$where"}
    assert all(e["message"] for e in r.json["errors"])
    assert engine_calls == []


def test_missing_required_fields_are_all_listed(client: ConformingClient) -> None:
    r = post_json(client, "/v1/decisions", {})
    assert r.status_code == 422
    assert set(problem_paths(r)) >= {"jurisdiction", "loan", "collateral", "disposition"}


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{", "malformed JSON"),
    (b"", "empty document"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": Infinity}', "Infinity"),
    (b'{"a": 1, "a": 2}', "duplicate key"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"\xef\xbb\xbf{}", "byte order mark"),
    (b"[" * 100 + b"]" * 100, "nested too deeply"),
    (b'{"loan": {"unpaid_balance": 1' + b"0" * 200 + b"}}", "number too long"),
])
def test_malformed_json_is_400(client: ConformingClient, engine_calls: list[Any],
                               body: bytes, fragment: str) -> None:
    r = raw_post(client, body)
    assert r.status_code == 400, r.json
    assert r.json["type"].endswith("malformed-json")
    assert fragment in json.dumps(r.json)
    assert engine_calls == []


@pytest.mark.parametrize("body", [b"[]", b"42", b'"facts"', b"null"])
def test_a_document_that_is_not_an_object_is_422(client: ConformingClient, body: bytes) -> None:
    r = raw_post(client, body)
    assert r.status_code == 422
    assert problem_paths(r) == [""]


@pytest.mark.parametrize(("field", "value"), [
    ("loan__unpaid_balance", 1e300),
    ("loan__unpaid_balance", "1000000000000.00"),
    ("loan__unpaid_balance", "12.345"),
    ("loan__id", "x" * 70_000),
    ("loan__id", ""),
    ("disposition__date", "99999-01-01"),
    ("as_of", "1066-10-14"),
    ("collateral__dwelling_units", 10**30),
    ("collateral__dwelling_units", True),
    ("loan__consumer", 1),
    ("jurisdiction", "ca"),
])
def test_absurd_values_are_4xx_never_500(client: ConformingClient, engine_calls: list[Any],
                                         field: str, value: Any) -> None:
    r = post_json(client, "/v1/decisions", facts(CAR, **{field: value}))
    assert r.status_code == 422
    assert problem_paths(r) == [field.replace("__", ".")]
    assert engine_calls == []


def test_a_body_over_the_limit_is_413_by_content_length(make_app: Callable[..., Flask],
                                                         tmp_path: Path) -> None:
    client = ConformingClient(make_app(make_config(tmp_path, max_body_bytes=2048)))
    r = client.post("/v1/decisions", data=b" " * 4096, content_type="application/json")
    assert r.status_code == 413
    assert r.content_type == "application/problem+json"
    assert r.json["type"].endswith("too-large")


def test_a_chunked_body_over_the_limit_is_413_while_reading(make_app: Callable[..., Flask],
                                                            tmp_path: Path) -> None:
    client = ConformingClient(make_app(make_config(tmp_path, max_body_bytes=2048)))

    body = json.dumps({**CAR, "pad": " " * 8000}).encode()
    r = client.post("/v1/decisions", input_stream=io.BytesIO(body),
                    content_type="application/json",
                    headers={"Transfer-Encoding": "chunked"},
                    environ_overrides={"wsgi.input_terminated": True})  # as granian sets
    assert r.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1", ""])
def test_wrong_content_type_is_415(client: ConformingClient, content_type: str) -> None:
    r = raw_post(client, json.dumps(CAR), content_type=content_type)
    assert r.status_code == 415
    assert r.headers["Accept-Post"] == "application/json"


def test_a_compressed_body_is_415(client: ConformingClient) -> None:
    r = raw_post(client, json.dumps(CAR), **{"Content-Encoding": "gzip"})
    assert r.status_code == 415


def test_json_with_a_utf8_charset_is_accepted(client: ConformingClient) -> None:
    r = raw_post(client, json.dumps(CAR), content_type="application/json; charset=UTF-8")
    assert r.status_code == 201


def test_unknown_routes_and_methods_are_problems(client: ConformingClient) -> None:
    r = client.get("/v2/everything")
    assert r.status_code == 404
    assert r.content_type == "application/problem+json"
    r = client.delete("/v1/decisions", headers=bearer("all"))
    assert r.status_code == 405
    assert "POST" in r.headers["Allow"]
    assert r.content_type == "application/problem+json"
    r = client.get("/v1/decisions/batch", headers=bearer("all"))
    assert r.status_code == 405
    r = client.get("/v1/decisions/not-a-ulid", headers=bearer("all"))
    assert r.status_code == 404


def test_an_unexpected_exception_is_a_500_without_internals(make_app: Callable[..., Flask],
                                                            tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    app = make_app(make_config(tmp_path, keys=api_keys()))
    client = ConformingClient(app)

    def explode(self: Decider, f: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internal state: /etc/shadow")

    monkeypatch.setattr(Decider, "decide_facts", explode)
    r = post_json(client, "/v1/decisions", CAR)
    assert r.status_code == 500
    assert r.content_type == "application/problem+json"
    assert "secret" not in r.get_data(as_text=True)
    assert "Traceback" not in r.get_data(as_text=True)


def test_problem_documents_have_the_rfc9457_members(client: ConformingClient) -> None:
    r = post_json(client, "/v1/decisions", facts(CAR, jurisdiction="XX"))
    body = r.json
    assert {"type", "title", "status", "detail", "errors"} <= set(body)
    assert body["status"] == r.status_code == 422
