"""API keys with scopes: 401 without a valid key, 403 without the scope; keys are
never logged; with no keys configured the service is open."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask

from service.api.auth import Keyring
from service.apikeys import key_sha256, new_key
from service.config import ApiKey

from .conftest import CAR, KEYS, ConformingClient, api_keys, bearer, make_config, post_json

# (method, path, required scope or None for "any valid key")
PROTECTED = [
    ("POST", "/v1/decisions", "decide"),
    ("POST", "/v1/decisions/batch", "decide"),
    ("GET", "/v1/decisions", "audit:read"),
    ("GET", "/v1/decisions/01ARZ3NDEKTSV4RRFFQ69G5FAV", "audit:read"),
    ("POST", "/v1/ruleset/reload", "admin"),
    ("GET", "/v1/ruleset", None),
]
OPEN = ["/healthz", "/readyz", "/metrics", "/openapi.json"]


def call(client: ConformingClient, method: str, path: str, headers: dict[str, str]) -> int:
    body = {"items": [CAR]} if path.endswith("batch") else CAR
    if method == "POST":
        return client.post(path, data=json.dumps(body), content_type="application/json",
                           headers=headers).status_code
    return client.get(path, headers=headers).status_code


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
def test_no_key_is_401_with_a_challenge(client: ConformingClient, method: str, path: str,
                                        scope: str | None) -> None:
    r = client.open(method, path, headers={})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.content_type == "application/problem+json"


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer dfy_not_a_configured_key"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
    {"X-API-Key": "wrong"},
    {"Authorization": "Bearer " + "x" * 5000},
])
def test_a_wrong_key_is_401(client: ConformingClient, headers: dict[str, str]) -> None:
    r = client.get("/v1/ruleset", headers=headers)
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
def test_scopes_are_enforced(client: ConformingClient, method: str, path: str,
                             scope: str | None) -> None:
    for name, (_, scopes) in KEYS.items():
        status = call(client, method, path, bearer(name))
        if scope is None or scope in scopes:
            assert status not in (401, 403), (name, method, path, status)
        else:
            assert status == 403, (name, method, path, status)


def test_x_api_key_is_accepted_too(client: ConformingClient) -> None:
    assert client.get("/v1/ruleset", headers={"X-API-Key": KEYS["auditor"][0]}).status_code == 200


def test_the_bearer_scheme_is_case_insensitive(client: ConformingClient) -> None:
    r = client.get("/v1/ruleset", headers={"Authorization": f"bearer {KEYS['admin'][0]}"})
    assert r.status_code == 200


@pytest.mark.parametrize("path", OPEN)
def test_operational_endpoints_are_open(client: ConformingClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_a_403_names_the_missing_scope(client: ConformingClient) -> None:
    r = post_json(client, "/v1/decisions", CAR, key="auditor")
    assert r.status_code == 403
    assert r.json["required_scope"] == "decide"


def test_keys_and_facts_never_reach_the_access_log(make_app: Callable[..., Flask],
                                                   tmp_path: Path) -> None:
    log = io.StringIO()
    config = make_config(tmp_path, keys=api_keys())
    config = replace(config, server=replace(config.server, access_log=True))
    client = ConformingClient(make_app(config, access_log_stream=log))
    r = post_json(client, "/v1/decisions", CAR, key="decider")
    assert r.status_code == 201
    client.get("/v1/ruleset", headers={"X-API-Key": KEYS["auditor"][0]})
    client.get("/v1/ruleset", headers={"Authorization": "Bearer dfy_wrong_secret"})
    text = log.getvalue()
    for key, _ in KEYS.values():
        assert key not in text
    assert "dfy_wrong_secret" not in text
    assert "10000.00" not in text and "seed-car" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    decided = lines[1]
    assert decided["method"] == "POST" and decided["path"] == "/v1/decisions"
    assert decided["status"] == 201 and decided["client"] == "decider"
    assert decided["decision_id"] == r.json["decision_id"]
    assert isinstance(decided["duration_ms"], float)
    assert lines[-1]["status"] == 401


def test_with_no_keys_configured_every_scope_is_granted(open_client: ConformingClient) -> None:
    assert post_json(open_client, "/v1/decisions", CAR, key=None).status_code == 201
    assert open_client.get("/v1/decisions").status_code == 200
    assert open_client.post("/v1/ruleset/reload").status_code == 200


def test_the_keyring_compares_against_every_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = [new_key() for _ in range(3)]
    ring = Keyring(tuple(ApiKey(f"k{i}", key_sha256(k), frozenset({"decide"}))
                         for i, k in enumerate(keys)))
    assert ring.authenticate(f"Bearer {keys[0]}", None).name == "k0"
    assert len(compared) == 3  # no early exit on the first match


def test_new_keys_are_random_and_prefixed() -> None:
    a, b = new_key(), new_key()
    assert a != b and a.startswith("dfy_") and len(a) >= 40
