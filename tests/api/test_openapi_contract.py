"""/openapi.json says exactly what the server accepts: Schemathesis, run from outside
against the real server (`deficiency serve`, API keys configured, one key with every
scope) with every check, finds no schema-valid request refused, no schema-violating
request accepted, no 5xx, no undocumented answer and no access hole.

The two rules JSON Schema cannot state (an inverted time window, an integer spelled
`2.0`) are in the document's descriptions; openapi_contract_hooks.py keeps the generated
requests within them. Below, the edges the run found (or could) are pinned one by one,
and the facts schema is checked against the validator field by field, in-process.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import requests

from service.api.decisions import CURSOR_PATTERN
from service.api.openapi import printable_pattern
from service.facts import FIELDS, FactsInvalid, validate_facts
from service.strictjson import parse_json

from .conftest import CAR, KEYS, ConformingClient, api_keys, bearer, facts
from .servers import ROOT, Server, start_sqlite_server

HOOKS = Path(__file__).with_name("openapi_contract_hooks.py")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 80
SEED = 4242
#: Wall-clock budget of the run (it took about 25 s on 2 shared cores).
BUDGET_SECONDS = 180


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = [{"name": k.name, "sha256": k.sha256, "scopes": sorted(k.scopes)}
            for k in api_keys()]
    _, srv = start_sqlite_server(tmp_path_factory.mktemp("contract"), keys=keys)
    try:
        yield srv
    finally:
        srv.stop()


def test_schemathesis_finds_the_document_and_the_server_in_agreement(
        server: Server, tmp_path: Path) -> None:
    # No example database: the seed alone decides what is generated.
    proc = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{server.base}/openapi.json", "--checks", "all",
         "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
         "--generation-database", "none",
         "-H", f"Authorization: Bearer {KEYS['all'][0]}", "--no-color"],
        capture_output=True, text=True, timeout=BUDGET_SECONDS, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS),
             "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                          os.environ.get("PYTHONPATH")]))},
    )
    assert proc.returncode == 0, proc.stdout[-20_000:] + proc.stderr[-5_000:]
    # every operation was exercised
    assert re.search(r"Operations: +(\d+) selected / \1 total", proc.stdout), proc.stdout


@pytest.mark.parametrize(("query", "status"), [
    ("since=&until=&cursor=", 400),          # empty values: refused, and the schema says so
    ("cursor=" + "OTk5" * 6 + "OQ", 400),     # 19 digits: past a 64-bit record number
    ("cursor=OTk5OTk5OTk5OTk5OTk5OTk5", 200),  # 18 digits
    ("since=9999-12-31T23:59:59-23:59", 200),  # past the last moment datetime holds
    ("until=0001-01-01T00:00:00%2B01:00", 200),
    ("since=2026-01-31T23:59:60Z", 200),       # a leap second
    ("since=2026-01-31T12:00:60Z", 400),       # not one
    ("since=2026-01-31T12:00Z", 400),          # RFC 3339 requires the seconds
])
def test_query_values_on_the_edges(server: Server, query: str, status: int) -> None:
    r = requests.get(f"{server.base}/v1/decisions?{query}", headers=bearer("auditor"),
                     timeout=10)
    assert r.status_code == status, r.text


@pytest.mark.parametrize(("key", "status"), [("k" * 255, 201), ("k" * 256, 400),
                                             ("a b", 400), ("caf\u00e9", 400)])
def test_idempotency_keys_the_schema_allows_are_accepted(server: Server, key: str,
                                                         status: int) -> None:
    r = requests.post(f"{server.base}/v1/decisions", json=facts(CAR),
                      headers={**bearer("decider"), "Idempotency-Key": key.encode()},
                      timeout=10)
    assert r.status_code == status, r.text


# ------------------------------------------------------------------ the facts schema, in-process

#: JSON tokens to try in a field of each kind: on, inside and past each bound, null, and
#: the wrong types. Left out: the two spellings JSON Schema cannot tell apart (`1.100` for
#: an amount, `2.0` for an integer), which the descriptions state.
CANDIDATES = {
    "money": ['"0"', '"0.00"', '"007.5"', '"999999999999.99"', '"1000000000000"', '"1.234"',
              '"-1"', '""', '"1e2"', "0", "12.5", "999999999999.99", "1000000000000",
              "0.001", "-0.01", "1E+2", "true", "null", "[]"],
    "date": ['"1900-01-01"', '"1899-12-31"', '"2199-12-31"', '"2200-01-01"', '"2024-02-29"',
             '"2023-02-29"', '"2026-1-01"', "20260101", "null"],
    "int": ["1", "0", "1000", "1001", '"2"', "true", "null", "2.5", "-1"],
    "bool": ["true", "false", "1", '"true"', "null"],
    "string": ['"L"', '""', '"' + "x" * 128 + '"', '"' + "x" * 129 + '"', '"a\\nb"',
               '"\\u00e9"', '"\\u200b"', '"\\ue000"', '"\\ud83d\\ude00"', "null", "7"],
}


def _tokens(field: Any) -> list[str]:
    if field.kind in ("enum", "jurisdiction"):
        first = field.choices[0]
        return [json.dumps(first), json.dumps(first.upper() if first.islower()
                                              else first.lower()), '""', "null", "1"]
    return CANDIDATES["money" if field.kind == "decimal" else field.kind]


def _documents() -> Iterator[tuple[str, str]]:
    base = facts(CAR, collateral__kind="dwelling", loan__type="mortgage")
    for field in FIELDS:
        for token in _tokens(field):
            doc = copy.deepcopy(base)
            node = doc
            *parents, leaf = field.path.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = "@token@"
            yield f"{field.path}={token}", json.dumps(doc).replace('"@token@"', token)
    for state, amount in (("settlement_agreed", None), ("settlement_agreed", "null"),
                          ("settlement_agreed", '"10.00"'), ("none", None)):
        doc = facts(CAR, negotiation__state=state)
        if amount is not None:
            doc["negotiation"]["settlement_amount"] = "@token@"
        yield f"{state}/{amount}", json.dumps(doc).replace('"@token@"', str(amount))


def test_the_facts_schema_and_the_validator_agree(client: ConformingClient) -> None:
    doc = client.openapi.doc
    schema = jsonschema_rs.validator_for(
        {"$ref": "#/components/schemas/Facts", "components": doc["components"]},
        validate_formats=True)
    disagreements = []
    for name, text in _documents():
        try:
            validate_facts(parse_json(text))
            accepted = True
        except FactsInvalid:
            accepted = False
        if schema.is_valid(json.loads(text)) != accepted:
            disagreements.append((name, "accepted" if accepted else "refused"))
    assert disagreements == []


def _cursor(number: int) -> str:
    return base64.urlsafe_b64encode(str(number).encode()).decode().rstrip("=")


def test_the_cursor_pattern_is_exactly_the_cursors_a_page_can_return() -> None:
    rng = random.Random(4242)
    numbers = [*range(1, 2000), *(rng.randrange(1, 10**digits) for digits in range(1, 19)
                                  for _ in range(200)), 10**18 - 1]
    assert all(re.fullmatch(CURSOR_PATTERN, _cursor(n)) for n in numbers)
    for n in (0, 10**18, 2**63, 10**23):  # not a record number, or past a 64-bit one
        assert re.fullmatch(CURSOR_PATTERN, _cursor(n)) is None
    # Anything else the pattern admits decodes to the digits it was encoded from: strings
    # of the characters cursors are made of (ODU5MzEw1NQ once got through).
    alphabet = "MNODTjzAEIQUYcgkwxyz012345"
    admitted = 0
    for text in ["ODU5MzEw1NQ", *("".join(rng.choice(alphabet) for _ in range(rng.randrange(
            2, 25))) for _ in range(100_000))]:
        if re.fullmatch(CURSOR_PATTERN, text):
            admitted += 1
            digits = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("latin-1")
            assert re.fullmatch("[1-9][0-9]*", digits) and _cursor(int(digits)) == text, text
    assert admitted > 100


def test_the_printable_text_pattern_is_str_isprintable() -> None:
    pattern = printable_pattern()
    by_schema = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
    by_python = re.compile(pattern)
    codes = [*range(0xD800), *range(0xE000, 0x10000), *range(0x10000, 0x110000, 7)]
    wrong = [hex(code) for code in codes
             if not chr(code).isprintable() == by_schema.is_valid(chr(code))
             == bool(by_python.fullmatch(chr(code)))]
    assert wrong == []
    assert by_schema.is_valid("Pr\u00eat-\u2116 7") and not by_schema.is_valid("a\u2028")
