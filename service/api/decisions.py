"""`/v1/decisions`: decide (singly or in batches), recording every decision in the
audit log before answering; read past decisions back.

Request flow: authenticate → media type → size → strict JSON → facts
validation → decide (engine) → audit commit → answer. Anything wrong with the
request is a 4xx problem before the engine is reached; a decision that could
not be recorded is never answered with 2xx (503 instead).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, g, request

from .. import facts as facts_mod
from .. import strictjson
from ..audit import DuplicateIdempotencyKey, NewRecord, StoreUnavailable
from ..audit.store import MAX_QUERY_LIMIT
from ..engine.decide import Decider
from ..facts import FactsInvalid, FieldError
from ..timestamps import parse_timestamp
from . import problems
from .handle import JSON, Service, authorize, json_response, service
from .problems import Problem

bp = Blueprint("decisions", __name__)
log = logging.getLogger("deficiency.api")

DEFAULT_PAGE = 50
MAX_IDEMPOTENCY_KEY = 255
#: An Idempotency-Key: 1 to 255 visible ASCII characters (matched whole).
IDEMPOTENCY_KEY_PATTERN = rf"^[\x21-\x7e]{{1,{MAX_IDEMPOTENCY_KEY}}}$"
_LOAN_ID = facts_mod.FIELDS_BY_PATH["loan.id"]
assert _LOAN_ID.min_length is not None and _LOAN_ID.max_length is not None
_LOAN_ID_LENGTH: tuple[int, int] = (_LOAN_ID.min_length, _LOAN_ID.max_length)


def _cursor_pattern() -> str:
    """What a cursor is: `next_cursor` passed back, the unpadded URL-safe base64 of a
    record number of 1 to 18 digits with no leading zero (so it fits a signed 64-bit
    integer). Each 3 digits make 4 characters: the first two spell the first digit, the
    third the second digit, the fourth the third; 1 or 2 digits left over make 2 or 3."""
    digit, nonzero = "(?:M[DTjz]|N[DTjz]|O[DT])", "(?:M[Tjz]|N[DTjz]|O[DT])"
    second, third = "[AEIMQUYcgk]", "[w-z0-5]"
    last, only = "(?:M[AQgw]|N[AQgw]|O[AQ])", "(?:M[Qgw]|N[AQgw]|O[AQ])"
    head, group = f"{nonzero}{second}{third}", f"(?:{digit}{second}{third})"
    return (f"^(?:{only}|{nonzero}{second}"  # 1 or 2 digits
            f"|{head}{group}{{0,4}}(?:{last}|{digit}{second})?"  # 3 to 17
            f"|{head}{group}{{5}})$")  # 18


CURSOR_PATTERN = _cursor_pattern()
#: Top-level order of a decision document (SPEC §4); the store keeps keys sorted.
DECISION_FIELDS = ("decision_id", "loan_id", "as_of", "amounts", "outcome", "credit_reporting",
                   "tax", "explanation", "ruleset", "trace", "evaluated_at", "duration_ms")
_QUERY_PARAMS = ("loan_id", "since", "until", "limit", "cursor")


# ------------------------------------------------------------------ request body


def read_json_body(svc: Service, max_depth: int) -> Any:
    """The request's JSON document, strictly parsed; 415/413/400 problems otherwise."""
    if request.mimetype != JSON:
        raise Problem(415, "Unsupported Media Type",
                      f"The request body must be {JSON} (got "
                      f"{request.mimetype or 'no Content-Type'}).",
                      headers={"Accept-Post": JSON}, kind="unsupported_media_type")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Problem(415, "Unsupported Media Type",
                      f"Content-Encoding {encoding!r} is not supported; send plain JSON.",
                      headers={"Accept-Encoding": "identity"}, kind="unsupported_media_type")
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise Problem(415, "Unsupported Media Type", "JSON must be encoded as UTF-8.",
                      headers={"Accept-Post": JSON}, kind="unsupported_media_type")
    limit = svc.config.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    # MAX_CONTENT_LENGTH (limit + 1) makes werkzeug stop reading a chunked body there.
    data = request.get_data(cache=False)
    if len(data) > limit:
        raise _too_large(limit)
    try:
        return strictjson.parse_json(data, max_depth=max_depth)
    except FactsInvalid as exc:
        raise problems.invalid_json(exc.errors) from None


def _too_large(limit: int) -> Problem:
    return Problem(413, "Content too large",
                   f"The request body is larger than {limit} bytes.",
                   type_="too-large", kind="too_large")


def request_hash(doc: Any) -> str:
    """sha256 of the canonical form of the request body: key order and whitespace do
    not matter; a decimal number hashes like the same digits in a string."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=_canonical_number)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical_number(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


# ------------------------------------------------------------------ deciding


def _decide(svc: Service, decider: Decider, facts: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    decision = decider.decide_facts(facts)
    svc.metrics.decision_seconds.observe(time.perf_counter() - started)
    return decision


def _record(decision: dict[str, Any], facts: dict[str, Any], files: dict[str, str], *,
            idempotency_key: str | None = None, body_hash: str | None = None) -> NewRecord:
    ruleset = decision["ruleset"]
    stored = {k: v for k, v in decision.items() if k != "trace"}  # the trace has its own column
    return NewRecord(
        decision_id=decision["decision_id"],
        recorded_at=datetime.datetime.now(datetime.UTC),
        loan_id=decision["loan_id"],
        ruleset_name=ruleset["name"],
        ruleset_version=ruleset["version"],
        ruleset_sha256=ruleset["sha256"],
        facts=facts_mod.to_json_facts(facts),
        decision=stored,
        trace=decision["trace"],
        duration_ms=decision["duration_ms"],
        idempotency_key=idempotency_key,
        request_hash=body_hash,
        ruleset_files=files,
    )


def stored_decision(record: dict[str, Any]) -> dict[str, Any]:
    """The decision as it was answered, from an audit record."""
    parts = {**record["decision"], "trace": record["trace"]}
    ordered = {k: parts[k] for k in DECISION_FIELDS if k in parts}
    ordered.update((k, v) for k, v in parts.items() if k not in ordered)
    return ordered


def _count(svc: Service, decision: dict[str, Any]) -> None:
    svc.metrics.decisions.labels(decision["outcome"]["bearer"],
                                 decision["ruleset"]["version"]).inc()


@contextlib.contextmanager
def _never_fails(what: str) -> Iterator[None]:
    try:
        yield
    except Exception:
        log.exception("%s failed after the decision was recorded; answering anyway", what)


def _location(decision_id: str) -> dict[str, str]:
    return {"Location": f"/v1/decisions/{decision_id}"}


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if re.fullmatch(IDEMPOTENCY_KEY_PATTERN, key) is None:
        raise problems.invalid_request(
            [FieldError("headers.Idempotency-Key",
                        f"must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters")],
            "The Idempotency-Key header is malformed.")
    return key


def _replay(record: dict[str, Any], body_hash: str) -> Response:
    """Answer a retried request from the log: 200 when it is the same request, else 409."""
    if record.get("request_hash") != body_hash:
        raise Problem(409, "Idempotency key reused",
                      "This Idempotency-Key was already used with a different request body.",
                      type_="idempotency-conflict", kind="idempotency_conflict",
                      extra={"decision_id": record["decision_id"]})
    g.decision_id = record["decision_id"]
    answer = stored_decision(record)
    try:
        receipt = service().audit.store().receipt(record["decision_id"])
    except StoreUnavailable:
        raise problems.store_unavailable() from None
    if receipt is not None:
        answer["receipt"] = receipt
    return json_response(answer, 200,
                         {**_location(record["decision_id"]), "Idempotent-Replayed": "true"})


def read_facts(svc: Service) -> tuple[Any, dict[str, Any]]:
    """The request's facts document and its validated facts; the 4xx problems of a
    body that is not a valid facts document otherwise (each field named)."""
    doc = read_json_body(svc, svc.config.limits.max_json_depth)
    try:
        return doc, facts_mod.validate_facts(doc)
    except FactsInvalid as exc:
        raise problems.invalid_facts(exc.errors) from None


@bp.post("/v1/decisions")
def post_decision() -> Response:
    principal = authorize("decide")
    svc = service()
    key = _idempotency_key()
    doc, facts = read_facts(svc)

    scoped_key = body_hash = None
    if key is not None:
        # Keys are per client: two clients choosing the same key do not collide.
        scoped_key = f"{principal.name}:{key}"
        body_hash = request_hash(doc)
        try:
            existing = svc.audit.find_by_idempotency_key(scoped_key)
        except StoreUnavailable:
            raise problems.store_unavailable() from None
        if existing is not None:
            return _replay(existing, body_hash)

    with svc.rulesets.use() as decider:
        decision = _decide(svc, decider, facts)
        files = dict(decider.rs.sources)
    record = _record(decision, facts, files, idempotency_key=scoped_key, body_hash=body_hash)
    started = time.perf_counter()
    try:
        receipt = svc.audit.submit(record)
    except StoreUnavailable:
        raise problems.store_unavailable() from None
    except DuplicateIdempotencyKey:
        # A concurrent request with the same key won the race: answer as its retry.
        assert scoped_key is not None and body_hash is not None
        try:
            existing = svc.audit.find_by_idempotency_key(scoped_key)
        except StoreUnavailable:
            raise problems.store_unavailable() from None
        if existing is None:  # pragma: no cover - the key was just seen
            raise
        return _replay(existing, body_hash)
    g.decision_id = decision["decision_id"]
    # Recorded: from here on nothing may turn the answer into an error (a client
    # would retry and make a second decision), so metrics failures are only logged.
    with _never_fails("metrics"):
        svc.metrics.audit_write_seconds.observe(time.perf_counter() - started)
        _count(svc, decision)
    decision["receipt"] = receipt.to_json()
    return json_response(decision, 201, _location(decision["decision_id"]))


@bp.post("/v1/decisions/batch")
def post_batch() -> Response:
    authorize("decide")
    svc = service()
    if request.headers.get("Idempotency-Key") is not None:
        raise problems.invalid_request(
            [FieldError("headers.Idempotency-Key", "not supported on batch requests")],
            "Idempotency-Key is only supported on POST /v1/decisions; "
            "retry a batch by posting its items singly with keys, or accept new decisions.")
    limits = svc.config.limits
    doc = read_json_body(svc, limits.max_json_depth + 2)
    items = _batch_items(doc, limits.max_batch_items)

    results: list[dict[str, Any] | None] = [None] * len(items)
    valid: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, facts_mod.validate_facts(item)))
        except FactsInvalid as exc:
            problem = problems.invalid_facts(exc.errors)
            svc.metrics.errors.labels(problem.kind).inc()
            results[index] = {"index": index, "status": 422, "problem": problem.body()}
    decided: list[tuple[int, dict[str, Any], NewRecord]] = []
    if valid:
        with svc.rulesets.use() as decider:
            files = dict(decider.rs.sources)
            for index, facts in valid:
                decision = _decide(svc, decider, facts)
                decided.append((index, decision, _record(decision, facts, files)))
        started = time.perf_counter()
        try:
            outcomes = svc.audit.submit_many([r for _, _, r in decided])
        except StoreUnavailable:
            raise problems.store_unavailable() from None
        if any(isinstance(e, StoreUnavailable) for e in outcomes):
            raise problems.store_unavailable()  # one transaction: none was recorded
        with _never_fails("metrics"):
            svc.metrics.audit_write_seconds.observe(time.perf_counter() - started)
        for (index, decision, _), outcome in zip(decided, outcomes, strict=True):
            if not isinstance(outcome, Exception):
                with _never_fails("metrics"):
                    _count(svc, decision)
                decision["receipt"] = outcome.to_json()
                results[index] = {"index": index, "status": 201, "decision": decision}
            else:  # pragma: no cover - fresh ids cannot collide
                results[index] = {"index": index, "status": 500, "problem": Problem(
                    500, "Not recorded", "The decision could not be recorded.",
                    kind="internal").body()}
    g.decisions = len(decided)
    return json_response({"results": results})


def _batch_items(doc: Any, max_items: int) -> list[Any]:
    if not isinstance(doc, dict):
        raise problems.invalid_request([FieldError("", "must be an object {\"items\": [...]}")],
                                       "The batch must be a JSON object with an items array.")
    errors = [FieldError(facts_mod.field_path("", k), "unknown field")
              for k in doc if k != "items"]
    items = doc.get("items")
    if items is None:
        errors.append(FieldError("items", "required"))
    elif not isinstance(items, list):
        errors.append(FieldError("items", "must be an array of facts objects"))
    elif not 1 <= len(items) <= max_items:
        errors.append(FieldError("items", f"must hold 1 to {max_items} facts objects "
                                          f"(got {len(items)})"))
    if errors:
        raise Problem(422, "Invalid batch", "The batch request is invalid.",
                      type_="invalid-batch", errors=errors, kind="invalid_batch")
    assert isinstance(items, list)
    return items


# ------------------------------------------------------------------ reading


@bp.get("/v1/decisions/<ulid:decision_id>")
def get_decision(decision_id: str) -> Response:
    authorize("audit:read")
    svc = service()
    try:
        record = svc.audit.get(decision_id.upper())
    except StoreUnavailable:
        raise problems.store_unavailable("The audit log cannot be reached. Retry later.") from None
    if record is None:
        raise Problem(404, "Not Found", f"No decision {decision_id} is recorded.",
                      kind="not_found")
    g.decision_id = record["decision_id"]
    return json_response(full_record(record))


def full_record(record: dict[str, Any]) -> dict[str, Any]:
    """A stored decision with the facts it was made on and its place in the log."""
    doc = stored_decision(record)
    doc["facts"] = record["facts"]
    doc["recorded_at"] = record["recorded_at"]
    doc["audit"] = {"seq": record["seq"], "prev_hash": record["prev_hash"],
                    "hash": record["hash"]}
    return doc


def summary(record: dict[str, Any]) -> dict[str, Any]:
    d = record["decision"]
    return {
        "decision_id": record["decision_id"],
        "loan_id": record["loan_id"],
        "recorded_at": record["recorded_at"],
        "as_of": d.get("as_of"),
        "ruleset": d.get("ruleset"),
        "amounts": d.get("amounts"),
        "outcome": d.get("outcome"),
    }


@bp.get("/v1/decisions")
def list_decisions() -> Response:
    authorize("audit:read")
    svc = service()
    params = _query_params()
    try:
        records, cursor = svc.audit.query(**params)
    except StoreUnavailable:
        raise problems.store_unavailable("The audit log cannot be reached. Retry later.") from None
    except ValueError as exc:  # a cursor that decodes but the store rejects
        raise problems.invalid_request([FieldError("cursor", str(exc))],
                                       "A query parameter is invalid.") from None
    return json_response({"decisions": [summary(r) for r in records], "next_cursor": cursor})


def _query_params() -> dict[str, Any]:
    args = request.args
    errors: list[FieldError] = []
    for name in args:
        if name not in _QUERY_PARAMS:
            errors.append(FieldError(name, "unknown query parameter"))
        elif len(args.getlist(name)) > 1:
            errors.append(FieldError(name, "given more than once"))
    params: dict[str, Any] = {"limit": DEFAULT_PAGE}
    loan_id = args.get("loan_id")
    if loan_id is not None:
        low, high = _LOAN_ID_LENGTH
        if not low <= len(loan_id) <= high or not loan_id.isprintable():
            errors.append(FieldError("loan_id", f"must be {low} to {high} printable characters"))
        params["loan_id"] = loan_id
    for name in ("since", "until"):
        text = args.get(name)
        if text is not None:
            try:
                params[name] = parse_timestamp(text)
            except ValueError as exc:
                errors.append(FieldError(name, str(exc)))
    if params.get("since") and params.get("until") and params["since"] > params["until"]:
        errors.append(FieldError("until", "must not be before since"))
    limit = args.get("limit")
    if limit is not None:
        if not re.fullmatch(r"[0-9]{1,5}", limit) or not 1 <= int(limit) <= MAX_QUERY_LIMIT:
            errors.append(FieldError("limit", f"must be an integer from 1 to {MAX_QUERY_LIMIT}"))
        else:
            params["limit"] = int(limit)
    cursor = args.get("cursor")
    if cursor is not None:
        if re.fullmatch(CURSOR_PATTERN, cursor) is None:
            errors.append(FieldError("cursor", "malformed cursor (pass next_cursor back as is)"))
        params["cursor"] = cursor
    if errors:
        raise problems.invalid_request(errors, "A query parameter is invalid.")
    return params
