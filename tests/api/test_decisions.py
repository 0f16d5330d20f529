"""POST/GET /v1/decisions in-process: decisions, recording, idempotency, batches, paging."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from service.api.decisions import request_hash

from .conftest import (
    CAR,
    SHORT_SALE,
    ConformingClient,
    api_keys,
    bearer,
    facts,
    make_config,
    post_json,
    problem_paths,
)


def check_short_sale(decision: dict[str, Any]) -> None:
    """SPEC §6 example 1, every outcome field it lists."""
    assert decision["amounts"]["deficiency"] == "50000.00"
    assert decision["outcome"]["bearer"] == "lender"
    assert decision["outcome"]["action"] == "write_off"
    assert decision["outcome"]["lender_absorbs"] == "50000.00"
    assert decision["outcome"]["borrower_owes"] == "0.00"
    assert decision["credit_reporting"]["category"] == "settled"
    assert decision["tax"]["form"] == "1099-C"
    assert decision["tax"]["canceled_debt"] == "50000.00"
    assert decision["tax"]["event_code"] == "F"


def check_car(decision: dict[str, Any]) -> None:
    """SPEC §6 example 2, every outcome field it lists."""
    assert decision["amounts"]["deficiency"] == "2000.00"
    assert decision["outcome"]["bearer"] == "borrower"
    assert decision["outcome"]["action"] == "pursue_deficiency"
    assert decision["outcome"]["borrower_owes"] == "2000.00"
    assert decision["outcome"]["lender_absorbs"] == "0.00"
    assert decision["credit_reporting"]["category"] == "open_until_paid"
    assert decision["credit_reporting"]["balance"] == "2000.00"
    assert decision["tax"]["form"] is None


@pytest.mark.parametrize(("seed", "check"), [(SHORT_SALE, check_short_sale), (CAR, check_car)])
def test_the_seed_examples(client: ConformingClient, seed: dict[str, Any],
                           check: Callable[[dict[str, Any]], None]) -> None:
    r = post_json(client, "/v1/decisions", seed, key="decider")
    assert r.status_code == 201
    decision = r.json
    check(decision)
    o = decision["outcome"]
    assert float(o["borrower_owes"]) + float(o["lender_absorbs"]) == float(
        decision["amounts"]["deficiency"])
    assert decision["loan_id"] == seed["loan"]["id"]
    assert decision["trace"] and decision["ruleset"]["name"] == "deficiency-default"


def test_a_decision_is_recorded_before_the_answer_and_reads_back(
        client: ConformingClient, app: Flask) -> None:
    r = post_json(client, "/v1/decisions", CAR, key="decider")
    assert r.status_code == 201
    location = r.headers["Location"]
    assert location == f"/v1/decisions/{r.json['decision_id']}"
    # Already in the store, straight from the database:
    store = app.extensions["deficiency"].audit.store()
    assert store.get(r.json["decision_id"]) is not None

    got = client.get(location, headers=bearer("auditor"))
    assert got.status_code == 200
    stored = got.json
    for key, value in r.json.items():
        if key != "receipt":  # the answer's proof of logging, not part of the decision
            assert stored[key] == value, key
    assert stored["facts"]["loan"]["unpaid_balance"] == "10000.00"
    assert stored["facts"]["negotiation"]["state"] == "none"  # normalised, defaults filled
    assert stored["trace"] == r.json["trace"]
    assert stored["audit"]["seq"] >= 1 and len(stored["audit"]["hash"]) == 64


def test_an_unknown_decision_is_404(client: ConformingClient) -> None:
    r = client.get("/v1/decisions/01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=bearer("auditor"))
    assert r.status_code == 404


# ------------------------------------------------------------------ idempotency


def test_same_key_same_body_returns_the_recorded_decision(client: ConformingClient) -> None:
    first = post_json(client, "/v1/decisions", CAR, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == 201
    # The same document with another key order and whitespace is the same request.
    body = json.dumps(dict(reversed(list(CAR.items()))), indent=2)
    again = client.post("/v1/decisions", data=body, content_type="application/json",
                        headers={**bearer("all"), "Idempotency-Key": "retry-1"})
    assert again.status_code == 200
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]


def test_same_key_different_body_is_409(client: ConformingClient) -> None:
    assert post_json(client, "/v1/decisions", CAR,
                     headers={"Idempotency-Key": "k-409"}).status_code == 201
    r = post_json(client, "/v1/decisions", facts(CAR, loan__id="other"),
                  headers={"Idempotency-Key": "k-409"})
    assert r.status_code == 409
    assert r.json["type"].endswith("idempotency-conflict")


def test_idempotency_keys_belong_to_their_client(client: ConformingClient) -> None:
    a = post_json(client, "/v1/decisions", CAR, key="decider",
                  headers={"Idempotency-Key": "shared"})
    b = post_json(client, "/v1/decisions", facts(CAR, loan__id="b"), key="all",
                  headers={"Idempotency-Key": "shared"})
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json["decision_id"] != b.json["decision_id"]


def test_concurrent_requests_with_one_key_make_one_decision(app: Flask) -> None:
    results: list[tuple[int, str]] = []
    barrier = threading.Barrier(8)

    def post() -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post("/v1/decisions", data=json.dumps(CAR), content_type="application/json",
                        headers={**bearer("all"), "Idempotency-Key": "race"})
        results.append((r.status_code, r.json["decision_id"]))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for s, _ in results) == [200] * 7 + [201]
    assert len({d for _, d in results}) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "ünïcode"])
def test_a_malformed_idempotency_key_is_400(client: ConformingClient, key: str) -> None:
    r = client.post("/v1/decisions", data=json.dumps(CAR), content_type="application/json",
                    headers={**bearer("all"), "Idempotency-Key": key.encode().decode("latin-1")})
    assert r.status_code == 400
    assert problem_paths(r) == ["headers.Idempotency-Key"]


def test_the_request_hash_ignores_key_order_and_spelling_of_numbers() -> None:
    from service.strictjson import parse_json

    a = parse_json('{"a": 1, "b": {"x": "8500.00"}}')
    b = parse_json('{"b": {"x": 8500.00}, "a": 1}')
    c = parse_json('{"b": {"x": 8500.01}, "a": 1}')
    assert request_hash(a) == request_hash(b) != request_hash(c)


# ------------------------------------------------------------------ batches


def test_a_batch_answers_every_item_in_order_and_records_in_one_commit(
        client: ConformingClient, app: Flask) -> None:
    committed_before = app.extensions["deficiency"].audit.store().transactions
    items = [SHORT_SALE, facts(CAR, jurisdiction="??"), CAR, {"not": "facts"}]
    r = post_json(client, "/v1/decisions/batch", {"items": items}, key="decider")
    assert r.status_code == 200
    results = r.json["results"]
    assert [x["index"] for x in results] == [0, 1, 2, 3]
    assert [x["status"] for x in results] == [201, 422, 201, 422]
    check_short_sale(results[0]["decision"])
    check_car(results[2]["decision"])
    assert [e["path"] for e in results[1]["problem"]["errors"]] == ["jurisdiction"]
    assert app.extensions["deficiency"].audit.store().transactions == committed_before + 1
    for x in (results[0], results[2]):
        got = client.get(f"/v1/decisions/{x['decision']['decision_id']}",
                         headers=bearer("auditor"))
        assert got.status_code == 200


@pytest.mark.parametrize(("body", "path"), [
    ({"items": []}, "items"),
    ({"items": {}}, "items"),
    ({}, "items"),
    ({"items": [CAR], "extra": 1}, "extra"),
])
def test_a_malformed_batch_is_422(client: ConformingClient, body: Any, path: str) -> None:
    r = post_json(client, "/v1/decisions/batch", body)
    assert r.status_code == 422
    assert path in problem_paths(r)


def test_a_batch_over_the_item_limit_is_refused(make_app: Callable[..., Flask],
                                                 tmp_path: Path) -> None:
    client = ConformingClient(make_app(make_config(tmp_path, keys=api_keys(),
                                                   max_batch_items=3)))
    r = post_json(client, "/v1/decisions/batch", {"items": [CAR] * 4})
    assert r.status_code == 422
    assert problem_paths(r) == ["items"]
    assert post_json(client, "/v1/decisions/batch", {"items": [CAR] * 3}).status_code == 200


def test_a_batch_is_not_a_facts_document(client: ConformingClient) -> None:
    r = post_json(client, "/v1/decisions/batch", [CAR])
    assert r.status_code == 400


def test_idempotency_keys_are_refused_on_batches(client: ConformingClient) -> None:
    r = post_json(client, "/v1/decisions/batch", {"items": [CAR]},
                  headers={"Idempotency-Key": "b"})
    assert r.status_code == 400


# ------------------------------------------------------------------ listing


def test_paging_through_decisions_with_a_cursor(client: ConformingClient) -> None:
    ids = []
    for i in range(5):
        r = post_json(client, "/v1/decisions", facts(CAR, loan__id=f"page-{i % 2}"))
        ids.append(r.json["decision_id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "/v1/decisions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        r = client.get(query, headers=bearer("auditor"))
        assert r.status_code == 200
        pages += 1
        seen += [d["decision_id"] for d in r.json["decisions"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first

    r = client.get("/v1/decisions?loan_id=page-1", headers=bearer("auditor"))
    assert [d["decision_id"] for d in r.json["decisions"]] == [ids[3], ids[1]]
    assert all(d["loan_id"] == "page-1" for d in r.json["decisions"])


def test_time_window_filters(client: ConformingClient) -> None:
    post_json(client, "/v1/decisions", CAR)
    r = client.get("/v1/decisions?since=2000-01-01&until=2999-01-01T00:00:00Z",
                   headers=bearer("auditor"))
    assert len(r.json["decisions"]) == 1
    r = client.get("/v1/decisions?since=2999-01-01T00:00:00%2B02:00", headers=bearer("auditor"))
    assert r.json["decisions"] == []


@pytest.mark.parametrize(("query", "path"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"),
    ("since=yesterday", "since"), ("since=2026-01-01T00:00:00", "since"),
    ("until=2026-02-30", "until"), ("since=2026-02-01&until=2026-01-01", "until"),
    ("cursor=!!!", "cursor"), ("cursor=AAAA", "cursor"), ("loan=1", "loan"),
    ("limit=1&limit=2", "limit"), ("loan_id=" + "x" * 200, "loan_id"),
])
def test_bad_query_parameters_are_400(client: ConformingClient, query: str, path: str) -> None:
    r = client.get(f"/v1/decisions?{query}", headers=bearer("auditor"))
    assert r.status_code == 400
    assert path in problem_paths(r)
