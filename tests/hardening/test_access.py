"""Nobody let in, nothing given away: API keys and scopes on every route of the real
server, secrets and borrower data kept out of its output, and the configured limits.

- Every operation of /openapi.json: 401 without a key,
  with a wrong key, with a malformed Authorization header; 403 with a key lacking the
  scope; with the scope, an answer that is not about access (2xx, or a 4xx such as 404).
  ACCESS below must name every operation the document has: a new route fails this
  module until someone has decided who may call it.
- Keys never appear in the server's output (stdout and stderr: access log, application
  log, the HTTP server's), in answers, or in /metrics; facts (a unique loan id, a unique amount,
  an unknown key's name) never reach the server's output either.
- The limits of the configuration (limits.max_body_bytes, max_batch_items,
  max_json_depth; here set small on the `tight` server) are enforced with 413 / 422 /
  400 problems, and /openapi.json documents the batch limit.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.api.conftest import CAR, KEYS, facts

from .conftest import TIGHT_LIMITS, Figures, Live, auth

OPEN = "open"
ANY_KEY = "any valid key"
#: operationId -> the scope it needs (OPEN: no key; ANY_KEY: any valid key).
ACCESS = {
    "decide": "decide",
    "decideBatch": "decide",
    "simulate": "decide",
    "listDecisions": "audit:read",
    "getDecision": "audit:read",
    "getCheckpoint": "audit:read",
    "getVerifierKey": "audit:read",
    "getInclusionProof": "audit:read",
    "getConsistencyProof": "audit:read",
    "getArchivedRuleset": "audit:read",
    "getRuleset": ANY_KEY,
    "reloadRuleset": "admin",
    "health": OPEN,
    "ready": OPEN,
    "metrics": OPEN,
    "openapi": OPEN,
}
CHECKED: list[int] = []


@pytest.fixture(scope="module", autouse=True)
def _report(figures: Figures) -> Iterator[None]:
    yield
    figures.add(f"access: {len(CHECKED)} requests checked for authentication and scope "
                f"over {len(ACCESS)} documented operations")


def operations(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(operationId, METHOD, path) of every operation of the document."""
    return [(op["operationId"], method.upper(), path)
            for path, item in doc["paths"].items() for method, op in item.items()]


@pytest.fixture(scope="module")
def decision_id(live: Live) -> str:
    r = live.post("/v1/decisions", CAR, key="decider")
    assert r.status_code == 201
    return str(r.json()["decision_id"])


def call(live: Live, method: str, path: str, headers: dict[str, str],
         decision_id: str) -> requests.Response:
    if "{sha256}" in path:  # the active ruleset's, archived by the decision made first
        active = live.session.get(live.base + "/v1/ruleset", headers=auth("all"), timeout=60)
        path = path.replace("{sha256}", active.json()["sha256"])
    query = "?from=0&to=1" if path == "/v1/log/consistency" else ""
    url = live.base + path.replace("{decision_id}", decision_id) + query
    body: Any = None
    if path == "/v1/decisions/batch":
        body = json.dumps({"items": [CAR]})
    elif method == "POST" and path != "/v1/ruleset/reload":
        body = json.dumps(CAR)
    r = live.session.request(method, url, data=body, timeout=60,
                             headers={"Content-Type": "application/json", **headers})
    CHECKED.append(r.status_code)
    live.conformance.check(method, path.replace("{decision_id}", decision_id), r.status_code,
                           r.headers, r.content)
    return r


def assert_401(r: requests.Response) -> None:
    assert r.status_code == 401, (r.request.method, r.url, r.status_code, r.text[:300])
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="deficiency"')
    assert r.headers["Content-Type"].startswith("application/problem+json")


def test_every_documented_operation_has_an_access_rule(live: Live) -> None:
    ids = {op_id for op_id, _, _ in operations(live.openapi_doc)}
    assert ids == set(ACCESS), ("decide who may call the new operations", ids ^ set(ACCESS))
    for op_id, method, path in operations(live.openapi_doc):
        security = live.openapi_doc["paths"][path][method.lower()].get("security")
        assert (security == []) == (ACCESS[op_id] == OPEN), (op_id, security)


def _wrong_credentials() -> list[dict[str, str]]:
    wrong = f"dfy_{uuid.uuid4().hex}"
    return [
        {"Authorization": f"Bearer {wrong}"},
        {"X-API-Key": wrong},
        {"Authorization": f"bearer {KEYS['all'][0]}x"},  # one character more
        {"Authorization": f"Bearer {KEYS['all'][0][:-1]}"},  # one character less
        {"Authorization": f"Basic {KEYS['all'][0]}"},  # the right key, the wrong scheme
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "k" * 600},
        {"Authorization": "Bearer \u00e9\u00e8"},  # not ASCII (sent as Latin-1)
        {"X-API-Key": "-"},
    ]


def test_every_protected_operation_refuses_missing_and_wrong_keys(live: Live,
                                                                  decision_id: str) -> None:
    for op_id, method, path in operations(live.openapi_doc):
        if ACCESS[op_id] == OPEN:
            continue
        assert_401(call(live, method, path, {}, decision_id))
        for headers in _wrong_credentials():
            assert_401(call(live, method, path, headers, decision_id))


def test_scopes_are_enforced_on_every_operation(live: Live, decision_id: str) -> None:
    for op_id, method, path in operations(live.openapi_doc):
        need = ACCESS[op_id]
        for name, (_key, scopes) in KEYS.items():
            r = call(live, method, path, auth(name), decision_id)
            allowed = need in (OPEN, ANY_KEY) or need in scopes
            if allowed:
                assert r.status_code not in (401, 403), (op_id, name, r.status_code, r.text)
                assert r.status_code < 500
                assert 200 <= r.status_code < 300, (op_id, name, r.status_code, r.text[:300])
            else:
                assert r.status_code == 403, (op_id, name, r.status_code, r.text[:300])
                assert r.json()["required_scope"] == need


def test_open_operations_answer_without_a_key(live: Live, decision_id: str) -> None:
    for op_id, method, path in operations(live.openapi_doc):
        if ACCESS[op_id] == OPEN:
            r = call(live, method, path, {}, decision_id)
            assert r.status_code == 200, (op_id, r.status_code)


def test_a_request_without_a_key_learns_nothing_about_its_body(live: Live) -> None:
    for body in (b"{not json", json.dumps({**CAR, "sid": 1}).encode(), b"[" * 10_000,
                 b"\xff\xfe", b" " * (2 * 1024 * 1024)):
        oversize = len(body) > 1024 * 1024
        try:
            r = requests.post(live.base + "/v1/decisions", data=body, timeout=60,
                              headers={"Content-Type": "application/json"})
        except requests.ConnectionError:
            # Answered before the upload ended, the rest of the body unread: the server
            # may close the connection under the client. Refused either way.
            assert oversize
            continue
        CHECKED.append(r.status_code)
        # Refused before the body is read: 401 (a body over the limit may be 413 first).
        assert r.status_code in ((401, 413) if oversize else (401,)), r.text
        assert "errors" not in r.json()


def test_a_key_in_the_query_string_is_not_accepted(live: Live) -> None:
    key = KEYS["all"][0]
    for param in ("api_key", "key", "access_token"):
        r = live.session.get(f"{live.base}/v1/ruleset?{param}={key}", timeout=30)
        CHECKED.append(r.status_code)
        assert_401(r)


# ------------------------------------------------------------------ secrets and facts


def test_keys_and_facts_stay_out_of_logs_answers_and_metrics(live: Live) -> None:
    marker = uuid.uuid4().hex[:12]
    loan_id = f"LEAK-{marker}"
    amount = f"31415{int(marker[:6], 16) % 10000:04d}.27"  # unique enough, exact
    wrong_keys = [f"dfy_wrong_{marker}_{i}" for i in range(3)]
    bodies: list[bytes] = []

    def keep(r: requests.Response) -> requests.Response:
        CHECKED.append(r.status_code)
        bodies.append(r.content)
        return r

    doc = facts(CAR, loan__id=loan_id, loan__unpaid_balance=amount)
    assert keep(live.post("/v1/decisions", doc, key="decider")).status_code == 201
    assert keep(live.post("/v1/decisions/batch", {"items": [doc, {**doc, "sid": 1}]},
                          key="decider")).status_code == 200
    # Invalid facts: the answer names the fields (to the caller), the log does not.
    bad = {**facts(doc, jurisdiction=f"XX-{marker}"), f"field_{marker}": 1}
    assert keep(live.post("/v1/decisions", bad, key="decider")).status_code == 422
    assert keep(live.post("/v1/decisions", json.dumps(doc)[:-1] + f', "{marker}"',
                          key="decider")).status_code == 400
    assert keep(live.post("/v1/decisions", doc, key="decider",
                          headers={"Idempotency-Key": f"idem-{marker}"})).status_code == 201
    # Reads: the loan id in a query string is not logged either.
    r = keep(live.get(f"/v1/decisions?loan_id={loan_id}", key="auditor"))
    assert r.status_code == 200 and r.json()["decisions"]
    assert keep(live.get(f"/v1/decisions?loan_id={loan_id}", key="decider")).status_code == 403
    # Wrong keys, everywhere a key can be put.
    for wrong in wrong_keys:
        keep(live.post("/v1/decisions", doc, key=None,
                       headers={"Authorization": f"Bearer {wrong}"}))
        keep(live.get("/v1/ruleset", key=None, headers={"X-API-Key": wrong}))
        keep(live.get("/v1/decisions", key=None, headers={"Authorization": f"Token {wrong}"}))
    metrics = keep(live.get("/metrics", key=None)).text

    log = live.log()
    assert loan_id not in log and amount not in log and marker not in log, [
        line for line in log.splitlines() if marker in line or amount in line][:5]
    secrets = [key for key, _ in KEYS.values()] + wrong_keys
    for secret in secrets:
        assert secret not in log
        assert secret not in metrics
        for body in bodies:
            assert secret.encode() not in body
    assert loan_id not in metrics and amount not in metrics
    # The access log does say who asked: by key name.
    assert '"client": "decider"' in log and '"client": "auditor"' in log


def test_nothing_answered_carries_internals(live: Live) -> None:
    """Problems never show a traceback, a file path, a SQL statement or a class name."""
    probes = [
        live.post("/v1/decisions", b"\x00" * 10, key="decider"),
        live.post("/v1/decisions", {"loan": []}, key="decider"),
        live.get("/v1/decisions?cursor=" + "A" * 32, key="auditor"),
        live.get("/v1/decisions?since=2026-13-45", key="auditor"),
        live.get("/v1/decisions/" + "Z" * 26, key="auditor"),
        live.session.request("PATCH", live.base + "/v1/decisions", timeout=30),
    ]
    for r in probes:
        CHECKED.append(r.status_code)
        assert 400 <= r.status_code < 500, (r.url, r.status_code)
        for needle in ("Traceback", "File \"", ".py", "sqlalchemy", "SELECT ", "Exception",
                       "/work/", "site-packages"):
            assert needle not in r.text, (r.url, needle, r.text[:500])


# ------------------------------------------------------------------ configured limits


def padded(doc: Any, size: int) -> bytes:
    """`doc` as JSON padded with trailing spaces to exactly `size` bytes."""
    data = json.dumps(doc).encode()
    assert len(data) <= size
    return data + b" " * (size - len(data))


def nested_facts(depth: int) -> dict[str, Any]:
    """Facts whose deepest container is at `depth` (the document itself is level 1)."""
    inner: Any = 1
    for _ in range(depth - 1):  # the lists are levels 2 .. depth
        inner = [inner]
    return {**CAR, "extra": inner}


def test_the_configured_body_limit_is_enforced(tight: Live) -> None:
    limit = TIGHT_LIMITS["max_body_bytes"]
    assert tight.post("/v1/decisions", padded(CAR, limit), key="decider").status_code == 201
    for path, doc in (("/v1/decisions", CAR), ("/v1/decisions/batch", {"items": [CAR]})):
        r = tight.post(path, padded(doc, limit + 1), key="decider")
        assert r.status_code == 413, r.text
        assert r.json()["type"].endswith("too-large")
        tight.conformance.check_response("POST", r)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield json.dumps(CAR).encode()
        for _ in range(limit // 512 + 1):
            yield b" " * 512

    r = tight.session.post(tight.base + "/v1/decisions", data=chunks(), timeout=60,
                           headers={"Content-Type": "application/json", **auth("decider")})
    assert r.status_code == 413, r.text
    # Without a key the answer is 401 or 413, never a decision and never a 5xx.
    assert tight.post("/v1/decisions", padded(CAR, limit + 1),
                      key=None).status_code in (401, 413)


def test_the_configured_batch_limit_is_enforced_and_documented(tight: Live) -> None:
    most = TIGHT_LIMITS["max_batch_items"]
    schema = tight.openapi_doc["components"]["schemas"]["BatchRequest"]
    assert schema["properties"]["items"]["maxItems"] == most
    small = facts(CAR, disposition__costs={})
    r = tight.post("/v1/decisions/batch", {"items": [small] * most}, key="decider")
    assert r.status_code == 200 and [x["status"] for x in r.json()["results"]] == [201] * most
    r = tight.post("/v1/decisions/batch", {"items": [small] * (most + 1)}, key="decider")
    assert r.status_code == 422, r.text
    assert [e["path"] for e in r.json()["errors"]] == ["items"]
    tight.conformance.check_response("POST", r)


def test_the_configured_depth_limit_is_enforced(tight: Live) -> None:
    depth = TIGHT_LIMITS["max_json_depth"]
    r = tight.post("/v1/decisions", nested_facts(depth), key="decider")
    assert r.status_code == 422 and [e["path"] for e in r.json()["errors"]] == ["extra"]
    r = tight.post("/v1/decisions", nested_facts(depth + 1), key="decider")
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == [{"path": "", "message":
                                   f"JSON nested too deeply (more than {depth} levels)"}]
    # A batch adds two levels (the object and its items array).
    r = tight.post("/v1/decisions/batch", {"items": [nested_facts(depth)]}, key="decider")
    assert r.status_code == 200 and r.json()["results"][0]["status"] == 422
    r = tight.post("/v1/decisions/batch", {"items": [nested_facts(depth + 1)]}, key="decider")
    assert r.status_code == 400, r.text
    tight.conformance.check_response("POST", r)


def raw_exchange(live: Live, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client library would, read the answer to the end (the server
    closes the connection): (status, headers with lower-case names, body)."""
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ", 2)[1]), headers, body


def test_requests_refused_by_the_http_server_are_documented_and_kept_out_of_the_log(
        live: Live) -> None:
    """Malformed or oversized requests: what the HTTP server (granian) refuses before the
    app sees it is answered 400 or 431 with an empty body, statuses the document names
    for every operation; what it lets through (a long request line or header, an Expect
    it ignores) the app answers as every other error, conforming to the document. Never
    a 5xx, and nothing the client sent (it may hold a key) in the server's log."""
    secret = KEYS["all"][0]
    long_line = f"/v1/decisions?loan_id={secret}" + "x" * 5000
    sent: list[tuple[str, str, requests.Response | tuple[int, dict[str, str], bytes]]] = [
        ("GET", "/v1/decisions", live.get(long_line, key="auditor")),
        ("GET", "/v1/ruleset", live.get("/v1/ruleset", key=None, headers={
            "Authorization": f"Bearer {secret}" + "x" * 9000})),
        ("GET", "/healthz", live.get("/healthz", key=None, headers={
            f"X-Many-{i}": secret for i in range(120)})),
    ]
    host = f"Host: 127.0.0.1:{live.server.port}\r\n"
    for method, path, raw in (
        ("POST", "/v1/decisions", f"POST /v1/decisions HTTP/1.1\r\n{host}Content-Length: "
                                  f"12{secret}\r\n\r\n{{}}"),
        ("POST", "/v1/decisions", f"POST /v1/decisions HTTP/1.1\r\n{host}Content-Length: "
                                  "-1\r\n\r\n"),
        ("GET", "/readyz", f"GET /readyz HTTP/1.1\r\n{host}Bad Header{secret}: 1\r\n\r\n"),
        ("GET", "/healthz", f"GET /healthz?{secret} HTTP/9.Z\r\n{host}\r\n"),
        ("POST", "/v1/decisions", f"POST /v1/decisions HTTP/1.1\r\n{host}Expect: "
                                  f"200-{secret}\r\nContent-Length: 2\r\n\r\n{{}}"),
        ("POST", "/v1/decisions", f"POST /v1/decisions HTTP/1.1\r\n{host}Transfer-Encoding: "
                                  f"br{secret}\r\n\r\n"),
    ):
        sent.append((method, path, raw_exchange(live, raw.encode("latin-1"))))
    statuses = []
    for method, path, answer in sent:
        if isinstance(answer, requests.Response):
            status, headers, body = answer.status_code, dict(answer.headers), answer.content
        else:
            status, headers, body = answer
        CHECKED.append(status)
        statuses.append(status)
        assert 400 <= status < 500, (path, status, body[:300])
        if "content-type" in {k.lower() for k in headers}:  # the app's answer
            live.conformance.check(method, path, status, headers, body)
            assert secret not in body.decode("latin-1"), (path, body[:300])
        else:  # the HTTP server's: no body, a status documented for the operation
            assert body == b"", (path, status, body[:300])
            assert str(status) in live.openapi_doc["paths"][path][method.lower()]["responses"]
    assert statuses == [400, 401, 431, 400, 400, 400, 400, 401, 400], statuses
    assert secret not in live.log()
    for status in ("400", "431"):  # documented for every operation
        for item in live.openapi_doc["paths"].values():
            assert all(status in op["responses"] for op in item.values()), (status, item)
