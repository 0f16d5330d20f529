"""The OpenAPI 3.1 document served at `/openapi.json`, written out by hand.

The facts schema is derived from the one field table in `service.facts`, so the
document and the validator cannot disagree about which fields exist; the rest
(decision, problem, endpoints) is spelled out below. Tests validate real
responses against these schemas.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import facts as facts_mod
from ..audit.store import MAX_QUERY_LIMIT
from ..config import Config

# Output amounts, by what bounds them (SPEC §3; every input amount is at most
# 999,999,999,999.99): an input copied through has 12 digits; debt is the sum of 3
# inputs, costs of 6, so claim (debt + costs - credits) reaches 13 digits and is
# negative when the credits exceed debt + costs; deficiency <= claim, surplus <=
# proceeds + credits; borrower_owes + lender_absorbs == deficiency, neither negative.
MONEY_OUT = {"type": "string", "pattern": r"^[0-9]{1,12}\.[0-9]{2}$",
             "description": "Exact amount, two decimals."}
MONEY_SUM = {"type": "string", "pattern": r"^[0-9]{1,13}\.[0-9]{2}$",
             "description": "Exact amount, two decimals; a sum of amounts (up to 13 digits)."}
MONEY_SIGNED = {"type": "string", "pattern": r"^-?[0-9]{1,13}\.[0-9]{2}$",
                "description": "Exact amount, two decimals; negative when the credits "
                               "exceed debt + costs."}
MONEY_RULE = {"type": "string", "pattern": r"^[0-9]+\.[0-9]{2}$",
              "description": "Exact amount, two decimals, never negative, computed by the "
                             "ruleset's rules (the default rules keep it within the "
                             "deficiency or the surplus: up to 13 digits)."}
_AMOUNTS_OUT = {"debt": MONEY_SUM, "costs": MONEY_SUM, "credits": MONEY_OUT,
                "claim": MONEY_SIGNED, "proceeds": MONEY_OUT, "deficiency": MONEY_SUM,
                "surplus": MONEY_SUM}
MONEY_IN = {
    "description": "Exact amount from 0 to 999999999999.99, at most 2 decimal places; "
                   "a JSON string (\"8500.00\") or a JSON number (read from its text, "
                   "never through a binary float).",
    "oneOf": [
        {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,2})?$"},
        {"type": "number", "minimum": 0, "maximum": 999999999999.99},
    ],
}
DATE = {"type": "string", "format": "date", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
ULID = {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$",
        "description": "ULID: unique, sortable by time."}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

_INT_BOUNDS = {"collateral.dwelling_units": (1, 1000)}
_STRING_BOUNDS = {"loan.id": (1, 128)}


def _leaf_schema(path: str, kind: str) -> dict[str, Any]:
    schema: dict[str, Any]
    if kind in ("money", "decimal"):
        schema = copy.deepcopy(MONEY_IN)
    elif kind == "date":
        schema = dict(DATE)
    elif kind == "bool":
        schema = {"type": "boolean"}
    elif kind == "int":
        schema = {"type": "integer"}
        if path in _INT_BOUNDS:
            schema["minimum"], schema["maximum"] = _INT_BOUNDS[path]
    elif kind in ("enum", "jurisdiction"):
        schema = {"type": "string", "enum": list(facts_mod.FACT_ENUMS[path])}
    else:
        low, high = _STRING_BOUNDS.get(path, (0, 1024))
        schema = {"type": "string", "minLength": low, "maxLength": high}
    default = facts_mod.FACT_DEFAULTS.get(path)
    if default is not None:
        schema["default"] = default if isinstance(default, (bool, str)) else str(default)
    if path == "as_of":
        schema["description"] = "Date the decision is made for; default today (UTC)."
    if path == "negotiation.settlement_amount":
        schema["description"] = "Required when negotiation.state is settlement_agreed."
    return schema


def facts_schema() -> dict[str, Any]:
    """The request facts (SPEC §2) as JSON Schema: strict, no unknown fields."""
    root: dict[str, Any] = {"type": "object", "properties": {}, "required": [],
                            "additionalProperties": False}
    for path, kind in facts_mod.FACT_FIELDS.items():
        node = root
        parts = path.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node["properties"].get(part)
            if child is None:
                child = node["properties"][part] = {
                    "type": "object", "properties": {}, "required": [],
                    "additionalProperties": False}
            prefix = ".".join(parts[: i + 1])
            if any(r.startswith(prefix + ".") for r in facts_mod.FACT_REQUIRED) \
                    and part not in node["required"]:
                node["required"].append(part)
            node = child
        node["properties"][parts[-1]] = _leaf_schema(path, kind)
        if path in facts_mod.FACT_REQUIRED:
            node["required"].append(parts[-1])
    _drop_empty_required(root)
    return root


def _drop_empty_required(node: dict[str, Any]) -> None:
    if node.get("required") == []:
        del node["required"]
    for child in node.get("properties", {}).values():
        if child.get("type") == "object":
            _drop_empty_required(child)


def _decision_schema() -> dict[str, Any]:
    amounts = tuple(_AMOUNTS_OUT)
    return {
        "type": "object",
        "required": ["decision_id", "loan_id", "as_of", "amounts", "outcome",
                     "credit_reporting", "tax", "explanation", "ruleset", "trace",
                     "evaluated_at", "duration_ms"],
        "properties": {
            "decision_id": ULID,
            "loan_id": {"type": "string"},
            "as_of": DATE,
            "amounts": {"type": "object", "required": list(amounts),
                        "properties": dict(_AMOUNTS_OUT),
                        "additionalProperties": False},
            "outcome": {
                "type": "object",
                "required": ["bearer", "action", "borrower_owes", "lender_absorbs",
                             "surplus_to_borrower", "deadline", "basis"],
                "properties": {
                    "bearer": {"enum": ["borrower", "lender", "shared", "none", "pending",
                                        "review"]},
                    "action": {"enum": ["pursue_deficiency", "collect_judgment",
                                        "accept_settlement", "write_off", "refund_surplus",
                                        "close", "hold_collection", "refer"]},
                    "borrower_owes": MONEY_SUM,
                    "lender_absorbs": MONEY_SUM,
                    "surplus_to_borrower": MONEY_RULE,
                    "deadline": {"oneOf": [DATE, {"type": "null"}],
                                 "description": "Last day to seek a deficiency judgment."},
                    "basis": {"type": "string"},
                },
                "additionalProperties": False,
            },
            "credit_reporting": {
                "type": "object", "required": ["category", "balance"],
                "properties": {
                    "category": {"enum": ["paid_in_full", "open_until_paid", "settled",
                                          "charged_off", "deed_in_lieu", "foreclosure",
                                          "no_change"]},
                    "balance": MONEY_RULE,
                },
                "additionalProperties": False,
            },
            "tax": {
                "type": "object", "required": ["form", "canceled_debt", "event_code", "notes"],
                "properties": {
                    "form": {"enum": ["1099-C", "1099-A", None]},
                    "canceled_debt": MONEY_RULE,
                    "event_code": {"enum": ["A", "B", "C", "D", "E", "F", "G", "H", None]},
                    "notes": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            "explanation": {"type": "array", "items": {"type": "string"}},
            "ruleset": {"$ref": "#/components/schemas/RulesetId"},
            "trace": {"type": "array", "items": {"$ref": "#/components/schemas/TraceEntry"}},
            "evaluated_at": {"type": "string", "format": "date-time"},
            "duration_ms": {"type": "number", "minimum": 0},
        },
        "additionalProperties": False,
    }


def _components(config: Config) -> dict[str, Any]:
    decision = _decision_schema()
    stored = copy.deepcopy(decision)
    stored["required"] += ["facts", "recorded_at", "audit"]
    stored["properties"].update({
        "facts": {"type": "object", "description": "The validated, normalised facts."},
        "recorded_at": {"type": "string", "format": "date-time"},
        "audit": {"type": "object", "required": ["seq", "prev_hash", "hash"],
                  "properties": {"seq": {"type": "integer", "minimum": 1},
                                 "prev_hash": SHA256, "hash": SHA256},
                  "additionalProperties": False},
    })
    return {
        "schemas": {
            "Facts": facts_schema(),
            "Decision": decision,
            "StoredDecision": stored,
            "DecisionSummary": {
                "type": "object",
                "required": ["decision_id", "loan_id", "recorded_at", "as_of", "ruleset",
                             "amounts", "outcome"],
                "properties": {
                    "decision_id": ULID,
                    "loan_id": {"type": "string"},
                    "recorded_at": {"type": "string", "format": "date-time"},
                    "as_of": DATE,
                    "ruleset": {"$ref": "#/components/schemas/RulesetId"},
                    "amounts": decision["properties"]["amounts"],
                    "outcome": decision["properties"]["outcome"],
                },
                "additionalProperties": False,
            },
            "DecisionPage": {
                "type": "object", "required": ["decisions", "next_cursor"],
                "properties": {
                    "decisions": {"type": "array",
                                  "items": {"$ref": "#/components/schemas/DecisionSummary"}},
                    "next_cursor": {"type": ["string", "null"],
                                    "description": "Pass as `cursor` for the next (older) "
                                                   "page; null when there is none."},
                },
                "additionalProperties": False,
            },
            "TraceEntry": {
                "type": "object",
                "required": ["stage", "rule", "priority", "matched", "applied",
                             "overridden_by", "set"],
                "properties": {
                    "stage": {"type": "string"},
                    "rule": {"type": "string"},
                    "priority": {"type": "integer"},
                    "matched": {"type": "object",
                                "description": "Each path the rule tested and its value."},
                    "applied": {"type": "boolean"},
                    "overridden_by": {"type": ["string", "null"]},
                    "set": {"type": "object"},
                },
                "additionalProperties": False,
            },
            "RulesetId": {
                "type": "object", "required": ["name", "version", "sha256"],
                "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                               "sha256": SHA256},
                "additionalProperties": False,
            },
            "Ruleset": {
                "type": "object",
                "required": ["name", "version", "sha256", "stages", "rules"],
                "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"},
                    "sha256": SHA256,
                    "stages": {"type": "array", "items": {"type": "string"}},
                    "rules": {"type": "array", "items": {
                        "type": "object",
                        "required": ["id", "stage", "priority", "description", "basis"],
                        "properties": {
                            "id": {"type": "string"}, "stage": {"type": "string"},
                            "priority": {"type": "integer"},
                            "description": {"type": "string"},
                            "basis": {"type": ["string", "null"]},
                        },
                        "additionalProperties": False,
                    }},
                },
                "additionalProperties": False,
            },
            "ReloadResult": {
                "type": "object", "required": ["changed", "ruleset", "previous", "rules"],
                "properties": {
                    "changed": {"type": "boolean",
                                "description": "False when the files are unchanged."},
                    "ruleset": {"$ref": "#/components/schemas/RulesetId"},
                    "previous": {"$ref": "#/components/schemas/RulesetId"},
                    "rules": {"type": "integer", "minimum": 0},
                },
                "additionalProperties": False,
            },
            "BatchRequest": {
                "type": "object", "required": ["items"],
                "properties": {"items": {
                    "type": "array", "minItems": 1, "maxItems": config.limits.max_batch_items,
                    "items": {"$ref": "#/components/schemas/Facts"}}},
                "additionalProperties": False,
            },
            "BatchResponse": {
                "type": "object", "required": ["results"],
                "properties": {"results": {"type": "array", "items": {
                    "oneOf": [
                        {"type": "object", "required": ["index", "status", "decision"],
                         "properties": {"index": {"type": "integer", "minimum": 0},
                                        "status": {"const": 201},
                                        "decision": {"$ref": "#/components/schemas/Decision"}},
                         "additionalProperties": False},
                        {"type": "object", "required": ["index", "status", "problem"],
                         "properties": {"index": {"type": "integer", "minimum": 0},
                                        "status": {"type": "integer", "minimum": 400},
                                        "problem": {"$ref": "#/components/schemas/Problem"}},
                         "additionalProperties": False},
                    ]}}},
                "additionalProperties": False,
            },
            "Problem": {
                "type": "object",
                "description": "RFC 9457 problem details.",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string", "format": "uri-reference"},
                    "title": {"type": "string"},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string"},
                    "instance": {"type": "string"},
                    "errors": {
                        "type": "array",
                        "description": "Every offending field, by JSON path (dotted).",
                        "items": {"type": "object", "required": ["path", "message"],
                                  "properties": {"path": {"type": "string"},
                                                 "message": {"type": "string"}},
                                  "additionalProperties": False}},
                },
            },
            "Health": {"type": "object", "required": ["status"],
                       "properties": {"status": {"const": "ok"}}},
            "Ready": {"type": "object", "required": ["status", "ruleset", "audit"],
                      "properties": {"status": {"const": "ready"},
                                     "ruleset": {"$ref": "#/components/schemas/RulesetId"},
                                     "audit": {"enum": ["sqlite", "postgresql"]},
                                     "ruleset_error": {"oneOf": [
                                         {"$ref": "#/components/schemas/RulesetError"},
                                         {"type": "null"}]}}},
            "RulesetError": {
                "type": "object",
                "description": "Why the rule files are not the active ruleset: the last "
                               "examination rejected them (the active ruleset keeps "
                               "deciding). Null when the last examination did not.",
                "required": ["reason", "rejected_sha256", "trigger", "at", "problems",
                             "problem_count"],
                "properties": {
                    "reason": {"type": "string"},
                    "rejected_sha256": {"oneOf": [SHA256, {"type": "null"}],
                                        "description": "Null: the files could not be read."},
                    "trigger": {"enum": ["api", "watcher", "boot"]},
                    "at": {"type": "string", "format": "date-time"},
                    "problems": {"type": "array",
                                 "description": "The first problems (problem_count: how "
                                                "many in all; POST /v1/ruleset/reload "
                                                "lists every one).",
                                 "items": {"type": "string",
                                           "description": "file:line:column: severity: "
                                                          "message"}},
                    "problem_count": {"type": "integer", "minimum": 0},
                },
                "additionalProperties": False,
            },
            "RulesetProblem": {
                "type": "object",
                "required": ["file", "line", "column", "severity", "message", "hint"],
                "properties": {
                    "file": {"type": "string"},
                    "line": {"type": "integer", "minimum": 0},
                    "column": {"type": "integer", "minimum": 0},
                    "severity": {"enum": ["error", "warning"]},
                    "message": {"type": "string"},
                    "hint": {"type": "string"},
                },
                "additionalProperties": False,
            },
            "InvalidRulesetProblem": {
                "description": "A Problem, plus the active ruleset (unchanged) and every "
                               "problem of the rejected one.",
                "allOf": [{"$ref": "#/components/schemas/Problem"}],
                "required": ["active", "rejected_sha256", "problems"],
                "properties": {
                    "active": {"$ref": "#/components/schemas/RulesetId"},
                    "rejected_sha256": {"oneOf": [SHA256, {"type": "null"}]},
                    "problems": {"type": "array", "items": {
                        "$ref": "#/components/schemas/RulesetProblem"}},
                },
            },
        },
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "An API key as a bearer token."},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
        "responses": {
            name: {"description": text, "content": {"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}}}
            for name, text in (
                ("BadRequest", "Malformed JSON, an invalid parameter, or a malformed "
                               "HTTP request (request line, header field, Content-Length)."),
                ("MalformedRequest", "A malformed HTTP request (request line, header "
                                     "field, Content-Length), refused before it is routed."),
                ("UriTooLong", "The request line is over the HTTP server's limit "
                               "(4094 bytes)."),
                ("HeadersTooLarge", "Over the HTTP server's header limits (100 fields, "
                                    "8190 bytes each)."),
                ("ExpectationFailed", "An Expect header other than 100-continue, refused "
                                      "before the request is routed."),
                ("TransferCodingNotImplemented", "A Transfer-Encoding the HTTP server does "
                                                 "not implement (other than chunked, "
                                                 "identity, gzip, deflate, compress)."),
                ("Unauthorized", "No valid API key (see WWW-Authenticate)."),
                ("Forbidden", "The API key lacks the required scope."),
                ("NotFound", "No such resource."),
                ("MethodNotAllowed", "Method not allowed (see Allow)."),
                ("Conflict", "Idempotency-Key reused with a different body."),
                ("TooLarge", "Request body over limits.max_body_bytes."),
                ("UnsupportedMediaType", "The body is not application/json."),
                ("Unprocessable", "Invalid facts: every offending field is listed."),
                ("Internal", "Unexpected server error (no internals disclosed)."),
                ("Unavailable", "The audit log cannot be reached: no decision is answered. If it "
                                "failed while committing, the decision may be recorded: "
                                "retry with the same Idempotency-Key."),
            )
        } | {
            "InvalidRuleset": {
                "description": "The rules directory does not hold a valid ruleset; the "
                               "active one stays. Every problem as file:line:column.",
                "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/InvalidRulesetProblem"}}}},
        },
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
             405: "MethodNotAllowed", 409: "Conflict", 413: "TooLarge",
             415: "UnsupportedMediaType", 422: "Unprocessable", 500: "Internal",
             503: "Unavailable"}
    return {str(c): {"$ref": f"#/components/responses/{names[c]}"} for c in codes}


def _http_refusals(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation can be refused by the HTTP server before it is routed
    (service/api/server.py `refusal`): a malformed request (400), a request line or
    header fields over its limits (414, 431), an Expect header it cannot meet (417), a
    transfer coding it does not implement (501)."""
    for item in paths.values():
        for op in item.values():
            responses = op["responses"]
            responses.setdefault("400", {"$ref": "#/components/responses/MalformedRequest"})
            responses["414"] = {"$ref": "#/components/responses/UriTooLong"}
            responses["431"] = {"$ref": "#/components/responses/HeadersTooLarge"}
            responses["417"] = {"$ref": "#/components/responses/ExpectationFailed"}
            responses["501"] = {"$ref": "#/components/responses/TransferCodingNotImplemented"}
    return paths


_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]


def openapi_document(config: Config) -> dict[str, Any]:
    location = {"Location": {"description": "Where the recorded decision can be read.",
                             "schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Deficiency decision service",
            "version": "1",
            "description": "Decides who bears a secured loan's deficiency balance and keeps "
                           "every decision in a durable, tamper-evident audit log. Errors are "
                           "application/problem+json (RFC 9457).",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": _AUTH,
        "paths": _http_refusals({
            "/v1/decisions": {
                "post": {
                    "operationId": "decide",
                    "summary": "Decide one facts document; recorded before the answer.",
                    "description": "Scope `decide`. With an Idempotency-Key, a retry with the "
                                   "same body returns the recorded decision (200).",
                    "parameters": [{"name": "Idempotency-Key", "in": "header",
                                    "required": False,
                                    "schema": {"type": "string", "minLength": 1,
                                               "maxLength": 255}}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Facts"}}}},
                    "responses": {
                        "201": {**_json("Decision", "Decided and recorded."),
                                "headers": location},
                        "200": {**_json("Decision", "Idempotent replay of a recorded "
                                                    "decision."),
                                "headers": {**location, "Idempotent-Replayed": {
                                    "description": "Always true: answered from the log.",
                                    "schema": {"type": "string"}}}},
                        **_errors(400, 401, 403, 409, 413, 415, 422, 500, 503),
                    },
                },
                "get": {
                    "operationId": "listDecisions",
                    "summary": "Recorded decisions, newest first, a page at a time.",
                    "description": "Scope `audit:read`.",
                    "parameters": [
                        {"name": "loan_id", "in": "query",
                         "schema": {"type": "string", "minLength": 1, "maxLength": 128}},
                        {"name": "since", "in": "query",
                         "description": "Recorded at or after (RFC 3339 with offset, or a "
                                        "date).", "schema": {"type": "string"}},
                        {"name": "until", "in": "query", "description": "Recorded before.",
                         "schema": {"type": "string"}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1,
                                    "maximum": MAX_QUERY_LIMIT, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _json("DecisionPage", "A page of decisions."),
                                  **_errors(400, 401, 403, 500, 503)},
                },
            },
            "/v1/decisions/batch": {
                "post": {
                    "operationId": "decideBatch",
                    "summary": "Decide several facts documents; results in order.",
                    "description": "Scope `decide`. All valid items are recorded in one "
                                   "transaction; invalid ones get a problem each.",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/BatchRequest"}}}},
                    "responses": {"200": _json("BatchResponse", "One result per item."),
                                  **_errors(400, 401, 403, 413, 415, 422, 500, 503)},
                },
            },
            "/v1/decisions/{decision_id}": {
                "get": {
                    "operationId": "getDecision",
                    "summary": "A recorded decision with its facts and trace.",
                    "description": "Scope `audit:read`.",
                    "parameters": [{"name": "decision_id", "in": "path", "required": True,
                                    "schema": ULID}],
                    "responses": {"200": _json("StoredDecision", "The recorded decision."),
                                  **_errors(401, 403, 404, 500, 503)},
                },
            },
            "/v1/ruleset": {
                "get": {
                    "operationId": "getRuleset",
                    "summary": "The active ruleset and its rules.",
                    "description": "Any valid API key.",
                    "responses": {"200": _json("Ruleset", "The active ruleset."),
                                  **_errors(401, 500)},
                },
            },
            "/v1/ruleset/reload": {
                "post": {
                    "operationId": "reloadRuleset",
                    "summary": "Load the rules directory again and switch to it.",
                    "description": "Scope `admin`. An invalid ruleset is refused (422, every "
                                   "problem as file:line:column) and the active one stays.",
                    "responses": {"200": _json("ReloadResult", "Reloaded (or unchanged)."),
                                  **_errors(401, 403, 500),
                                  "422": {"$ref": "#/components/responses/InvalidRuleset"}},
                },
            },
            "/healthz": {"get": {
                "operationId": "health", "summary": "Liveness.", "security": [],
                "responses": {"200": _json("Health", "The process is alive.")}}},
            "/readyz": {"get": {
                "operationId": "ready", "summary": "Readiness: ruleset loaded, audit log "
                                                   "reachable.", "security": [],
                "responses": {"200": _json("Ready", "Ready to decide."),
                              **_errors(503)}}},
            "/metrics": {"get": {
                "operationId": "metrics", "summary": "Prometheus metrics.", "security": [],
                "responses": {"200": {"description": "Prometheus text exposition format.",
                                      "content": {"text/plain": {
                                          "schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {
                "operationId": "openapi", "summary": "This document.", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document.",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}}}},
        }),
        "components": _components(config),
    }
