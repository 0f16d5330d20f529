"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import re

import jsonschema
from flask import Flask

from service.facts import FACT_FIELDS

from .conftest import CAR, SHORT_SALE, ConformingClient, bearer, post_json


def test_healthz_and_readyz(client: ConformingClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz").json
    assert ready["status"] == "ready" and ready["audit"] == "sqlite"
    assert ready["ruleset"]["name"] == "deficiency-default"


def test_metrics_count_decisions_latencies_and_errors(client: ConformingClient) -> None:
    post_json(client, "/v1/decisions", CAR)
    post_json(client, "/v1/decisions", SHORT_SALE)
    post_json(client, "/v1/decisions", {"nonsense": True})
    client.get("/v1/ruleset")  # 401
    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    text = r.get_data(as_text=True)
    version = client.get("/readyz").json["ruleset"]["version"]
    assert (f'deficiency_decisions_total{{bearer="borrower",ruleset_version="{version}"}} 1.0'
            in text)
    assert f'deficiency_decisions_total{{bearer="lender",ruleset_version="{version}"}} 1.0' in text
    assert "deficiency_decision_duration_seconds_count 2.0" in text
    assert "deficiency_audit_write_duration_seconds_count 2.0" in text
    assert 'deficiency_errors_total{kind="invalid_facts"} 1.0' in text
    assert 'deficiency_errors_total{kind="unauthorized"} 1.0' in text
    assert re.search(r'deficiency_http_requests_total\{method="POST",route="/v1/decisions",'
                     r'status="201"\} 2.0', text)


def test_the_openapi_document_describes_every_endpoint(client: ConformingClient,
                                                        app: Flask) -> None:
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items()
                  for method in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or "/_" in rule.rule or rule.rule.startswith("/console"):
            continue  # a hidden route ("/_..."; none today) and the console's pages
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, m) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    assert served == documented
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    for ops in doc["paths"].values():
        for op in ops.values():
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status)
                assert "$ref" in response or "content" in response


def test_the_facts_schema_covers_every_field_and_rejects_unknown_ones(
        client: ConformingClient) -> None:
    doc = client.get("/openapi.json").json
    schema = doc["components"]["schemas"]["Facts"]
    for path in FACT_FIELDS:
        node = schema
        for part in path.split("."):
            node = node["properties"][part]
    validate = client.openapi.validate_body
    validate({"$ref": "#/components/schemas/Facts"}, CAR)
    validate({"$ref": "#/components/schemas/Facts"}, SHORT_SALE)
    try:
        validate({"$ref": "#/components/schemas/Facts"}, {**CAR, "sid": 1})
    except jsonschema.ValidationError:
        pass
    else:  # pragma: no cover
        raise AssertionError("unknown field accepted by the schema")


def test_every_response_in_this_session_conformed(client: ConformingClient) -> None:
    post_json(client, "/v1/decisions", CAR)
    client.get("/v1/decisions", headers=bearer("auditor"))
    assert client.checked >= 2  # the client validated each against /openapi.json
