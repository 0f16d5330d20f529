"""The OpenAPI 3.1 document served at `/openapi.json`, written out by hand.

It says exactly what the server accepts. The facts schema is derived from the field
table (`service.facts.FIELDS`: kinds, bounds, patterns, defaults, requirements), the
request parameters from the patterns `decisions.py` checks them with, so the document and
the validator cannot disagree; the rest (decision, problem, endpoints) is spelled out
below. Tests validate real responses against these schemas, and run Schemathesis
against the running server (tests/api/test_openapi_contract.py).
"""

from __future__ import annotations

import copy
import datetime
import functools
import unicodedata
from decimal import Decimal
from typing import Any

from ..audit.store import MAX_QUERY_LIMIT
from ..config import Config
from ..facts import DATE_TEXT, FIELDS, FIELDS_BY_PATH, NO_DEFAULT, TODAY, Field
from .decisions import CURSOR_PATTERN, IDEMPOTENCY_KEY_PATTERN
from .openapi_log import log_paths, log_schemas

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
DATE = {"type": "string", "format": "date", "pattern": f"^{DATE_TEXT}$"}
ULID = {"type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{26}$",
        "description": "ULID: unique, sortable by time."}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
PRINTABLE_TEXT = "#/components/schemas/PrintableText"


# ------------------------------------------------------------------ facts


def _json_number(value: int | Decimal) -> int | float:
    """A bound as a JSON number that spells it exactly."""
    if value == int(value):
        return int(value)
    number = float(value)
    assert Decimal(repr(number)) == value, value  # the float's shortest spelling is the bound
    return number


def _years(low: int, high: int) -> str:
    """A regular expression for the four-digit years `low` to `high`, by century."""
    parts = []
    for century in range(low // 100, high // 100 + 1):
        first, last = max(low, century * 100), min(high, century * 100 + 99)
        if (first, last) == (century * 100, century * 100 + 99):
            parts.append(f"{century:02d}[0-9]{{2}}")
        else:
            parts += [f"{year:04d}" for year in range(first, last + 1)]
    return "(?:" + "|".join(parts) + ")"


def _date_schema(f: Field) -> dict[str, Any]:
    low, high = f.minimum, f.maximum
    assert isinstance(low, datetime.date) and isinstance(high, datetime.date)
    # Whole years, so the bounds are a pattern on the year digits.
    assert (low.month, low.day, high.month, high.day) == (1, 1, 12, 31)
    assert f.pattern is not None and f.pattern.startswith("[0-9]{4}")
    years = f.pattern.replace("[0-9]{4}", _years(low.year, high.year), 1)
    return {"type": "string", "format": "date", "pattern": f"^{years}$",
            "description": f"A calendar date from {low} to {high}."}


def _amount_schema(f: Field) -> dict[str, Any]:
    assert isinstance(f.minimum, Decimal) and isinstance(f.maximum, Decimal)
    assert f.places is not None and f.pattern is not None
    return {
        "description": f"Exact amount from {f.minimum} to {f.maximum} with at most {f.places} "
                       "decimal places: a JSON string (\"8500.00\") or a JSON number, read "
                       "from its text (never through a binary float), so its spelling too has "
                       f"at most {f.places} decimal places (1.100 is refused).",
        "oneOf": [
            {"type": "string", "pattern": f"^{f.pattern}$"},
            {"type": "number", "minimum": _json_number(f.minimum),
             "maximum": _json_number(f.maximum),
             "multipleOf": _json_number(Decimal(1).scaleb(-f.places))},
        ],
    }


def _leaf_schema(f: Field) -> dict[str, Any]:
    schema: dict[str, Any]
    if f.kind in ("money", "decimal"):
        schema = _amount_schema(f)
    elif f.kind == "date":
        schema = _date_schema(f)
    elif f.kind == "bool":
        schema = {"type": "boolean"}
    elif f.kind == "int":
        schema = {"type": "integer", "description": "A JSON integer, spelled without a "
                                                    "fraction or exponent (2.0 is refused)."}
        if f.minimum is not None:
            schema["minimum"] = f.minimum
        if f.maximum is not None:
            schema["maximum"] = f.maximum
    elif f.kind in ("enum", "jurisdiction"):
        schema = {"type": "string", "enum": list(f.choices)}
    else:
        assert f.kind == "string", f.kind
        schema = _text_schema(f)
    if f.default is TODAY:
        _describe(schema, "The date the decision is made for; default today (UTC).")
    elif f.default is not NO_DEFAULT:
        schema["default"] = (f.default if isinstance(f.default, (bool, str))
                             else str(f.default))
    if f.required_when is not None:
        _describe(schema, "Required when {} is {}.".format(*f.required_when))
    return schema if f.required else _nullable(schema)


def _describe(schema: dict[str, Any], sentence: str) -> None:
    schema["description"] = " ".join(filter(None, (sentence, schema.get("description"))))


def _text_schema(f: Field) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": PRINTABLE_TEXT}
    if f.min_length is not None:
        schema["minLength"] = f.min_length
    if f.max_length is not None:
        schema["maxLength"] = f.max_length
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` or null: null in an optional field is the same as leaving it out."""
    if "oneOf" in schema:
        schema["oneOf"].append({"type": "null"})
    elif "enum" in schema:
        schema["type"], schema["enum"] = [schema["type"], "null"], [*schema["enum"], None]
    elif "type" in schema:
        schema["type"] = [schema["type"], "null"]
    else:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def facts_schema() -> dict[str, Any]:
    """The request facts (SPEC §2) as JSON Schema: strict, no unknown fields; null in an
    optional field or object counts as absent."""
    objects = {"": _object()}
    for f in FIELDS:
        parts = f.path.split(".")
        for depth, key in enumerate(parts):
            parent = objects[".".join(parts[:depth])]
            if f.required and key not in parent.setdefault("required", []):
                parent["required"].append(key)
            if depth < len(parts) - 1:
                path = ".".join(parts[: depth + 1])
                if path not in objects:
                    objects[path] = parent["properties"][key] = _object()
            else:
                parent["properties"][key] = _leaf_schema(f)
    for path, node in objects.items():
        if not node.get("required", True):
            del node["required"]
        if path and "required" not in node:  # no required field below: it may be left out
            _nullable(node)
    for f in FIELDS:
        if f.required_when is not None:
            _require_when(objects, f)
    return objects[""]


def _object() -> dict[str, Any]:
    return {"type": "object", "properties": {}, "additionalProperties": False}


def _require_when(objects: dict[str, dict[str, Any]], f: Field) -> None:
    """`f` is required (and not null) when a sibling field has a given value."""
    assert f.required_when is not None
    cond_path, value = f.required_when
    parent, _, key = f.path.rpartition(".")
    cond_parent, _, cond_key = cond_path.rpartition(".")
    assert parent == cond_parent, "a condition on a field of the same object"
    objects[parent]["if"] = {"properties": {cond_key: {"const": value}}, "required": [cond_key]}
    objects[parent]["then"] = {"properties": {key: {"not": {"type": "null"}}},
                               "required": [key]}


@functools.cache
def printable_pattern() -> str:
    """`str.isprintable` as a JSON Schema pattern: the characters it accepts, by range, from
    this Python's Unicode database (no control, format, surrogate, private-use, unassigned
    or separator character other than the space)."""
    ranges: list[tuple[int, int]] = []
    start = None
    for code in range(0x110001):
        printable = code < 0x110000 and chr(code).isprintable()
        if printable and start is None:
            start = code
        elif not printable and start is not None:
            ranges.append((start, code - 1))
            start = None

    def char(code: int) -> str:
        c = chr(code)
        return "\\" + c if c in "\\]^-[" else c

    return "^[" + "".join(char(a) if a == b else f"{char(a)}-{char(b)}"
                          for a, b in ranges) + "]*$"


def _printable_text() -> dict[str, Any]:
    return {"type": "string", "pattern": printable_pattern(),
            "description": "Printable characters only (Python's str.isprintable, Unicode "
                           f"{unicodedata.unidata_version}): no control, format, surrogate, "
                           "private-use, unassigned or separator character but the space."}


def _time_bound(description: str) -> dict[str, Any]:
    """A `since`/`until` query parameter (service.timestamps.parse_timestamp)."""
    return {"description": description + " An RFC 3339 date-time (with its offset) or "
                                         "full-date (midnight UTC); not in year 0000.",
            "schema": {"type": "string", "anyOf": [{"format": "date-time"},
                                                   {"format": "date"}],
                       "not": {"pattern": "^0000"}}}


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
            "PrintableText": _printable_text(),
            "Decision": decision,
            **log_schemas(decision),
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
                                "description": "Each path the rule tested and its value, "
                                               "and each named constant it compared with "
                                               "(`judgment_limit_days[CA]`: \"90\")."},
                    "applied": {"type": "boolean"},
                    "overridden_by": {"type": ["string", "null"]},
                    "set": {"type": "object"},
                },
                "additionalProperties": False,
            },
            "Simulation": {
                "type": "object", "required": ["decision", "why_not"],
                "properties": {
                    "decision": {"$ref": "#/components/schemas/Decision"},
                    "why_not": {"type": "array",
                                "description": "Every rule that did not match, in stage "
                                               "order then priority descending.",
                                "items": {"$ref": "#/components/schemas/WhyNotEntry"}},
                },
                "additionalProperties": False,
            },
            "WhyNotEntry": {
                "type": "object",
                "description": "A rule that did not match the context as it was when its "
                               "stage ran, and the first of its conditions that was false.",
                "required": ["stage", "rule", "priority", "path", "actual", "needs",
                             "message"],
                "properties": {
                    "stage": {"type": "string"},
                    "rule": {"type": "string"},
                    "priority": {"type": "integer"},
                    "path": {"type": "string",
                             "description": "The path the false condition tests (for "
                                            "`any`, the first alternative's)."},
                    "actual": {"type": ["string", "boolean", "integer", "null"],
                               "description": "Its value: exact decimal text, an ISO date, "
                                              "true/false, text; null when absent."},
                    "needs": {"type": "string",
                              "description": "What the condition requires (`true`, "
                                             "`<= 4`, `one of CA, OR`, an expression as "
                                             "written with its value)."},
                    "message": {"type": "string",
                                "description": "One line: `rule: path is value, the rule "
                                               "needs …`."},
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
                    "items": {"description": "Facts (#/components/schemas/Facts). Each item "
                                             "is validated on its own: one that is not valid "
                                             "facts, whatever it is, gets its problem in the "
                                             "results, in its place, and does not fail the "
                                             "batch."}}},
                "additionalProperties": False,
            },
            "BatchResponse": {
                "type": "object", "required": ["results"],
                "properties": {"results": {"type": "array", "items": {
                    "oneOf": [
                        {"type": "object", "required": ["index", "status", "decision"],
                         "properties": {"index": {"type": "integer", "minimum": 0},
                                        "status": {"const": 201},
                                        "decision": {
                                            "$ref": "#/components/schemas/RecordedDecision"}},
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
            "BadRequest": {
                "description": "Malformed JSON or an invalid parameter (problem+json); or a "
                               "malformed HTTP request (request line, header field, "
                               "Content-Length, Transfer-Encoding), refused by the HTTP "
                               "server before it is routed: then with an empty body.",
                "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}},
            "MalformedRequest": {
                "description": "A malformed HTTP request (request line, header field, "
                               "Content-Length, Transfer-Encoding), refused by the HTTP "
                               "server before it is routed: an empty body."},
            "HeadersTooLarge": {
                "description": "More than 100 header fields, or a request head over the "
                               "HTTP server's buffer: refused before it is routed, with an "
                               "empty body."},
        } | {
            name: {"description": text, "content": {"application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}}}}
            for name, text in (
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
    """Every operation can be refused by the HTTP server (granian) before it is routed,
    with an empty body (docs/reliability.md): a malformed request (400), too many or too
    large header fields (431)."""
    for item in paths.values():
        for op in item.values():
            responses = op["responses"]
            responses.setdefault("400", {"$ref": "#/components/responses/MalformedRequest"})
            responses["431"] = {"$ref": "#/components/responses/HeadersTooLarge"}
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
                           "application/problem+json (RFC 9457), except requests the HTTP "
                           "server refuses before they are routed (400, 431: no body).",
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
                                    "description": "1 to 255 visible ASCII characters.",
                                    "schema": {"type": "string",
                                               "pattern": IDEMPOTENCY_KEY_PATTERN}}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Facts"}}}},
                    "responses": {
                        "201": {**_json("RecordedDecision", "Decided and recorded; with "
                                                            "its receipt."),
                                "headers": location},
                        "200": {**_json("RecordedDecision", "Idempotent replay of a recorded "
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
                         "schema": _text_schema(FIELDS_BY_PATH["loan.id"])},
                        {"name": "since", "in": "query", **_time_bound("Recorded at or after.")},
                        {"name": "until", "in": "query",
                         **_time_bound("Recorded before; not before since (400).")},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1,
                                    "maximum": MAX_QUERY_LIMIT, "default": 50}},
                        {"name": "cursor", "in": "query",
                         "description": "next_cursor of the previous page, as it is.",
                         "schema": {"type": "string", "pattern": CURSOR_PATTERN}},
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
            "/v1/simulations": {
                "post": {
                    "operationId": "simulate",
                    "summary": "Decide one facts document without recording it, and say "
                               "why each other rule did not match.",
                    "description": "Scope `decide`. Decided by the active ruleset like POST "
                                   "/v1/decisions, but never recorded: no receipt, nothing "
                                   "in the audit log.",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Facts"}}}},
                    "responses": {"200": _json("Simulation", "The decision and why not."),
                                  **_errors(400, 401, 403, 413, 415, 422, 500)},
                },
            },
            **log_paths(_json, _errors, ULID),
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
