"""POST /v1/simulations: the decision POST /v1/decisions would make, and why each other
rule did not match - never recorded. In-process every answer is checked against
/openapi.json (ConformingClient); one module runs it on the real server over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import requests
from flask import Flask

from service.policy.loader import load_ruleset

from .conftest import (
    CAR,
    KEYS,
    RULES,
    SHORT_SALE,
    ConformingClient,
    OpenApi,
    api_keys,
    bearer,
    facts,
    post_json,
    problem_paths,
)
from .servers import Server, start_sqlite_server
from .test_decisions import check_car, check_short_sale

VOLATILE = ("decision_id", "evaluated_at", "duration_ms", "receipt")
ENTRY_FIELDS = ["stage", "rule", "priority", "path", "actual", "needs", "message"]
#: A California purchase-money mortgage on a home the borrower did not live in.
CA_PURCHASE_MONEY: dict[str, Any] = {
    "as_of": "2026-02-01",
    "jurisdiction": "CA",
    "loan": {"id": "SIM-CA", "type": "mortgage", "unpaid_balance": "300000.00",
             "purchase_money": True},
    "collateral": {"kind": "dwelling", "dwelling_units": 1, "owner_occupied": False},
    "disposition": {"method": "judicial_foreclosure", "date": "2026-01-10",
                    "proceeds": "200000.00"},
}


def records(app: Flask) -> int:
    return int(app.extensions["deficiency"].audit.store().count())


def stable(decision: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in decision.items() if k not in VOLATILE}


@pytest.mark.parametrize(("seed", "check"), [(SHORT_SALE, check_short_sale), (CAR, check_car)])
def test_a_simulation_answers_the_decision_and_why_not(client: ConformingClient, seed: Any,
                                                       check: Any) -> None:
    r = post_json(client, "/v1/simulations", seed, key="decider")
    assert r.status_code == 200 and r.content_type == "application/json"
    assert list(r.json) == ["decision", "why_not"]
    check(r.json["decision"])
    assert "receipt" not in r.json["decision"]
    assert r.json["why_not"] and all(list(e) == ENTRY_FIELDS for e in r.json["why_not"])
    # every rule of the active ruleset is either in the trace or in why_not, never both
    matched = {t["rule"] for t in r.json["decision"]["trace"]}
    not_matched = [e["rule"] for e in r.json["why_not"]]
    assert len(not_matched) == len(set(not_matched)) and not matched & set(not_matched)
    assert matched | set(not_matched) == {x["id"] for x in client.get(
        "/v1/ruleset", headers=bearer("decider")).json["rules"]}


def test_the_decision_is_the_one_post_decisions_makes(client: ConformingClient) -> None:
    simulated = post_json(client, "/v1/simulations", CA_PURCHASE_MONEY).json["decision"]
    decided = post_json(client, "/v1/decisions", CA_PURCHASE_MONEY).json
    assert list(simulated) == [k for k in decided if k != "receipt"]
    assert stable(simulated) == stable(decided)


def test_why_not_says_which_condition_failed(client: ConformingClient) -> None:
    r = post_json(client, "/v1/simulations", CA_PURCHASE_MONEY)
    [e] = [e for e in r.json["why_not"] if e["rule"] == "ca-580b-purchase-money"]
    assert e == {"stage": "bearer", "rule": "ca-580b-purchase-money", "priority": 900,
                 "path": "collateral.owner_occupied", "actual": False, "needs": "true",
                 "message": "ca-580b-purchase-money: collateral.owner_occupied is false, "
                            "the rule needs true"}
    # the reporting stage saw the bearer stage's outcome
    [e] = [e for e in r.json["why_not"] if e["rule"] == "credit-paid-in-full"]
    assert e["actual"] == r.json["decision"]["outcome"]["bearer"] == "borrower"


def test_a_simulation_is_never_recorded(client: ConformingClient, app: Flask) -> None:
    post_json(client, "/v1/decisions", CAR)
    before = records(app)
    assert before == 1
    r = post_json(client, "/v1/simulations", CAR)
    assert r.status_code == 200
    assert records(app) == before
    decision_id = r.json["decision"]["decision_id"]
    got = client.get(f"/v1/decisions/{decision_id}", headers=bearer("auditor"))
    assert got.status_code == 404
    page = client.get("/v1/decisions", headers=bearer("auditor")).json["decisions"]
    assert decision_id not in {d["decision_id"] for d in page} and len(page) == before


def test_invalid_facts_are_a_problem_naming_every_field(client: ConformingClient,
                                                       app: Flask) -> None:
    doc = facts(CAR, loan__unpaid_balance="-1", collateral__kind="boat")
    r = post_json(client, "/v1/simulations", doc)
    assert r.status_code == 422  # as POST /v1/decisions answers invalid facts
    assert r.json["type"].endswith("invalid-facts")
    assert set(problem_paths(r)) == {"loan.unpaid_balance", "collateral.kind"}
    assert records(app) == 0


@pytest.mark.parametrize(("body", "content_type", "status"), [
    ('{"as_of": "2026-02-01", "as_of": "2026-02-02"}', "application/json", 400),
    ('{"loan": {"unpaid_balance": NaN}}', "application/json", 400),
    ("{not json", "application/json", 400),
    (json.dumps(CAR), "text/plain", 415),
])
def test_malformed_requests_are_refused_before_the_engine(
        client: ConformingClient, body: str, content_type: str, status: int) -> None:
    r = client.post("/v1/simulations", data=body, content_type=content_type,
                    headers=bearer("decider"))
    assert r.status_code == status
    assert r.content_type == "application/problem+json"


def test_an_oversize_body_is_413(client: ConformingClient, app: Flask) -> None:
    limit = app.extensions["deficiency"].config.limits.max_body_bytes
    doc = facts(CAR, loan__id="x" * (limit + 1))
    r = post_json(client, "/v1/simulations", doc)
    assert r.status_code == 413


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("auditor", 403), ("admin", 403),
                                             ("decider", 200), ("all", 200)])
def test_the_decide_scope_is_required(client: ConformingClient, key: str | None,
                                      status: int) -> None:
    assert post_json(client, "/v1/simulations", CAR, key=key).status_code == status


def test_the_answer_validates_against_the_openapi_schema(client: ConformingClient) -> None:
    r = post_json(client, "/v1/simulations", CA_PURCHASE_MONEY)
    assert r.status_code == 200
    validate = client.openapi.validate_body
    validate(client.openapi.component("Simulation"), r.json)
    entry = client.openapi.doc["components"]["schemas"]["WhyNotEntry"]
    assert entry["required"] == ENTRY_FIELDS
    with pytest.raises(jsonschema.ValidationError, match="required"):
        validate(client.openapi.component("Simulation"),
                 {**r.json, "why_not": [{k: v for k, v in r.json["why_not"][0].items()
                                         if k != "needs"}]})


def test_why_not_uses_the_ruleset_that_decided(client: ConformingClient) -> None:
    r = post_json(client, "/v1/simulations", CAR)
    rs = load_ruleset(RULES)
    assert r.json["decision"]["ruleset"]["sha256"] == rs.sha256
    stages = {x.id: x.stage for x in rs.rules}
    assert all(stages[e["rule"]] == e["stage"] for e in r.json["why_not"])


# ------------------------------------------------------------------ the real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = [{"name": k.name, "sha256": k.sha256, "scopes": sorted(k.scopes)}
            for k in api_keys()]
    _, srv = start_sqlite_server(tmp_path_factory.mktemp("simulations"), keys=keys)
    try:
        yield srv
    finally:
        srv.stop()


def test_a_simulation_over_http(server: Server) -> None:
    openapi = OpenApi(requests.get(server.base + "/openapi.json", timeout=5).json())

    def post(key: str, doc: Any) -> requests.Response:
        return requests.post(f"{server.base}/v1/simulations", data=json.dumps(doc),
                             headers={"Content-Type": "application/json",
                                      "Authorization": f"Bearer {KEYS[key][0]}"}, timeout=30)

    r = post("decider", CA_PURCHASE_MONEY)
    assert r.status_code == 200, r.text
    openapi.validate("POST", "/v1/simulations", r)
    decision_id = r.json()["decision"]["decision_id"]
    got = requests.get(f"{server.base}/v1/decisions/{decision_id}",
                       headers={"Authorization": f"Bearer {KEYS['auditor'][0]}"}, timeout=10)
    assert got.status_code == 404
    page = requests.get(f"{server.base}/v1/decisions",
                        headers={"Authorization": f"Bearer {KEYS['auditor'][0]}"}, timeout=10)
    assert page.json()["decisions"] == []
    bad = post("decider", facts(CAR, collateral__kind="boat"))
    assert bad.status_code == 422
    openapi.validate("POST", "/v1/simulations", bad)
    assert [e["path"] for e in bad.json()["errors"]] == ["collateral.kind"]
    forbidden = post("auditor", CAR)
    assert forbidden.status_code == 403
    openapi.validate("POST", "/v1/simulations", forbidden)
