"""Hostile facts, property-based (hostile.py generates them): wrong types, huge and tiny
numbers, exponents, NaN/Infinity literals, 64 KiB+ strings, deep nesting, hundreds of
keys, `sid` / `id` / `$` keys at any level, duplicate keys, invalid UTF-8.

(a) the validator (`parse_json` + `validate_facts`) returns valid facts or raises
    FactsInvalid whose errors are well-formed paths, never anything else;
(b) the command line (`deficiency decide -`) prints a decision and exits 0, or exits
    non-zero with one stderr line naming the offending paths, never a traceback;
(c) the HTTP API answers 201 with the right decision, or the 4xx problem the
    validator predicts with exactly its paths, and no worker process dies.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import facts as facts_mod
from service.amounts import compute_amounts
from service.engine.decide import Decider
from service.facts import FactsInvalid, FieldError, validate_facts
from service.policy.loader import load_ruleset
from service.strictjson import MAX_DEPTH, parse_json
from tests.api.servers import ROOT

from .conftest import Figures, Live
from .hostile import Hostile, hostile_bodies, valid_bodies

SLOW = "slow"
# function_scoped_fixture: `steady_workers` is meant to wrap all examples of a test.
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
          HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture]
# Not part of the decision: its id, timing, and the receipt of its logging.
VOLATILE = ("decision_id", "evaluated_at", "duration_ms", "receipt")
TODAY = datetime.date(2026, 7, 1)

_SEG = r"[A-Za-z0-9_$@-]{1,64}"
_BRACKET = r'\["(?:[^"\\]|\\.)*"\]'
PATH = re.compile(rf"^(?:{_SEG}|{_BRACKET}|\[[0-9]+\])(?:\.{_SEG}|{_BRACKET}|\[[0-9]+\])*$")


def counted() -> Counter[str]:
    return Counter()


SEEN: dict[str, Counter[str]] = {"validator": counted(), "cli": counted(), "http": counted()}


@pytest.fixture(scope="module", autouse=True)
def _report(figures: Figures) -> Iterator[None]:
    yield
    for name, seen in SEEN.items():
        if seen:
            figures.add(f"hostile facts / {name}: " + ", ".join(
                f"{k} {v}" for k, v in sorted(seen.items())))


def expected(data: bytes, max_depth: int = MAX_DEPTH,
             today: datetime.date | None = None) -> tuple[str, Any]:
    """What the validator makes of the bytes: ("json", errors), ("facts", errors) or
    ("valid", facts)."""
    try:
        doc = parse_json(data, max_depth=max_depth)
    except FactsInvalid as exc:
        return "json", exc.errors
    try:
        return "valid", validate_facts(doc, today=today)
    except FactsInvalid as exc:
        return "facts", exc.errors


def truncated(errors: list[FieldError]) -> bool:
    return bool(errors) and errors[-1].path == "" and "not listed" in errors[-1].message


def check_errors(exc: FactsInvalid) -> list[str]:
    """Well-formed errors: each a path ("" = the document) and a message, one line."""
    errors = exc.errors
    assert errors, "FactsInvalid without errors"
    assert len(errors) <= facts_mod.MAX_ERRORS
    for e in errors:
        assert isinstance(e, FieldError)
        assert isinstance(e.path, str) and isinstance(e.message, str)
        assert e.message.strip(), e
        assert e.path == "" or PATH.fullmatch(e.path), e.path
        for text in (e.path, e.message):
            assert "\n" not in text and "\r" not in text, e
    assert len(str(exc).splitlines()) == 1
    return [e.path for e in errors]


def check_parse_failure(h: Hostile, exc: FactsInvalid) -> None:
    paths = check_errors(exc)
    dups = [e.path for e in exc.errors if e.message == "duplicate key"]
    non_finite = [e for e in exc.errors if e.message.endswith("numbers must be finite")]
    if dups:
        if h.dup_path and not truncated(exc.errors):
            assert h.dup_path in dups, (h.dup_path, dups)
    elif non_finite:  # each NaN / Infinity literal: at its own path
        assert len(non_finite) == len(exc.errors) - truncated(exc.errors), exc.errors
    else:  # malformed JSON, invalid UTF-8, too deep, too long a number: the document
        assert paths == [""], exc.errors


def check_valid(facts: dict[str, Any], h: Hostile) -> None:
    assert not h.unknown_paths and not h.dup_path, h
    flat = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(facts, "")
    assert set(flat) <= set(facts_mod.FACT_FIELDS), set(flat) - set(facts_mod.FACT_FIELDS)
    assert set(flat) >= facts_mod.FACT_REQUIRED
    for path, value in flat.items():
        kind = facts_mod.FACT_FIELDS[path]
        assert not isinstance(value, float), path
        if kind in ("money", "decimal"):
            assert isinstance(value, Decimal) and value.is_finite(), (path, value)
            assert value.as_tuple().exponent == -2, (path, value)
            assert Decimal(0) <= value <= facts_mod.MAX_MONEY, (path, value)
        elif kind == "string":
            assert isinstance(value, str) and 1 <= len(value) <= 128 and value.isprintable()
        elif kind in ("enum", "jurisdiction"):
            assert value in facts_mod.FACT_ENUMS[path]
        elif kind == "bool":
            assert type(value) is bool
        elif kind == "int":
            assert type(value) is int and 1 <= value <= 1000
        elif kind == "date":
            assert type(value) is datetime.date
    # Normalised facts are a fixed point: written out and read back, they are the same.
    text = json.dumps(facts_mod.to_json_facts(facts), allow_nan=False)
    assert validate_facts(parse_json(text), today=TODAY) == facts


# ------------------------------------------------------------------ (a) the validator


def _validator_examples(n: int) -> Any:
    return settings(max_examples=n, deadline=None, suppress_health_check=HEALTH)


def _validate(h: Hostile) -> None:
    seen = SEEN["validator"]
    seen["examples"] += 1
    seen["bytes"] += len(h.data)
    try:
        doc = parse_json(h.data)
    except FactsInvalid as exc:  # anything else propagates and fails the test
        seen["400 json"] += 1
        check_parse_failure(h, exc)
        return
    assert not (h.dup_path and not h.corrupted), f"duplicate {h.dup_path} not reported"
    try:
        facts = validate_facts(doc, today=TODAY)
    except FactsInvalid as exc:
        seen["422 facts"] += 1
        paths = check_errors(exc)
        if not truncated(exc.errors):
            missing = [p for p in h.unknown_paths if p not in paths]
            assert missing == [], (missing, paths)
        return
    seen["valid"] += 1
    check_valid(facts, h)


@_validator_examples(600)
@given(h=hostile_bodies())
def test_the_validator_gives_facts_or_facts_invalid_and_nothing_else(h: Hostile) -> None:
    _validate(h)


@pytest.mark.slow
@_validator_examples(20_000)
@given(h=hostile_bodies())
def test_the_validator_gives_facts_or_facts_invalid_and_nothing_else_long(h: Hostile) -> None:
    _validate(h)


# ------------------------------------------------------------------ (b) the command line


@pytest.fixture(scope="module")
def reference() -> Iterator[Decider]:
    """The plain-Python evaluator of the default rules: the oracle for decisions."""
    decider = Decider(load_ruleset(ROOT / "rules"), "reference")
    yield decider
    decider.close()


def stable(decision: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in decision.items() if k not in VOLATILE}


def one_line(h: Hostile) -> bool:
    # One document on one line: two lines whose first parses would be JSON Lines input.
    return b"\n" not in h.data and b"\r" not in h.data


def _cli(h: Hostile, reference: Decider) -> None:
    seen = SEEN["cli"]
    seen["examples"] += 1
    proc = subprocess.run([sys.executable, "-m", "service.cli", "decide", "-"], cwd=ROOT,
                          input=h.data, capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err[-3000:]
    kind, result = expected(h.data)
    if kind == "valid":
        seen["exit 0"] += 1
        assert proc.returncode == 0, err
        assert err == ""
        decision = json.loads(proc.stdout)
        assert stable(decision) == stable(reference.decide_facts(result))
        return
    seen[f"exit {proc.returncode}"] += 1
    assert proc.returncode != 0
    assert proc.stdout == b""
    assert err.endswith("\n") and err.count("\n") == 1 and "\r" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("deficiency: invalid facts: "), err
    for e in result:  # every offending field is named
        assert e.path in err, (e.path, err)


# A third valid: the command line must decide those too.
CLI_INPUT = st.one_of(hostile_bodies(), hostile_bodies(), valid_bodies()).filter(one_line)


@settings(max_examples=24, deadline=None, suppress_health_check=HEALTH)
@given(h=CLI_INPUT)
def test_the_command_line_decides_or_names_the_field_in_one_line(h: Hostile,
                                                               reference: Decider) -> None:
    _cli(h, reference)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=HEALTH)
@given(h=CLI_INPUT)
def test_the_command_line_decides_or_names_the_field_in_one_line_long(
        h: Hostile, reference: Decider) -> None:
    _cli(h, reference)


# ------------------------------------------------------------------ (c) the HTTP API


def _http(live: Live, h: Hostile, reference: Decider) -> None:
    seen = SEEN["http"]
    seen["requests"] += 1
    r = live.post("/v1/decisions", h.data, key="decider")
    seen[str(r.status_code)] += 1
    live.conformance.check_response("POST", r)
    limit = live.limits.get("max_body_bytes", facts_mod.MAX_BODY_BYTES)
    if len(h.data) > limit:
        assert r.status_code == 413, r.text[:500]
        return
    kind, result = expected(h.data)
    if kind == "valid":
        assert r.status_code == 201, (r.status_code, r.text[:1000])
        decision = r.json()
        assert decision["loan_id"] == result["loan"]["id"]
        amounts = {k: str(v) for k, v in compute_amounts(result).items()}
        assert decision["amounts"] == amounts
        assert stable(decision) == stable(reference.decide_facts(result))
        return
    assert r.status_code == (400 if kind == "json" else 422), (kind, r.status_code, r.text[:500])
    assert r.headers["Content-Type"].startswith("application/problem+json")
    problem = r.json()
    assert [e["path"] for e in problem["errors"]] == [e.path for e in result]
    assert [e["message"] for e in problem["errors"]] == [e.message for e in result]


@pytest.fixture
def steady_workers(live: Live) -> Iterator[None]:
    before = live.workers()
    yield
    assert live.workers() == before, "a worker process died:\n" + live.log()[-3000:]


@settings(max_examples=300, deadline=None, suppress_health_check=HEALTH)
@given(h=hostile_bodies())
def test_the_api_decides_or_names_the_offending_paths(live: Live, h: Hostile,
                                                     reference: Decider,
                                                     steady_workers: None) -> None:
    _http(live, h, reference)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=HEALTH)
@given(h=hostile_bodies())
def test_the_api_decides_or_names_the_offending_paths_long(live: Live, h: Hostile,
                                                          reference: Decider,
                                                          steady_workers: None) -> None:
    _http(live, h, reference)


