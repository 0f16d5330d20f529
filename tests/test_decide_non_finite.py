"""`deficiency decide` names the field of a NaN / Infinity literal, as every other refusal
does (issue 13, part 4)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import CAR, deficiency


def with_literal(path: str, literal: str) -> str:
    """CAR as JSON text with the value at dotted `path` replaced by a raw `literal`."""
    doc = json.loads(json.dumps(CAR))
    node = doc
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = "@literal@"
    return json.dumps(doc).replace('"@literal@"', literal)


@pytest.mark.parametrize(("path", "literal"), [
    ("loan.unpaid_balance", "NaN"),
    ("loan.fees", "Infinity"),
    ("disposition.costs.legal", "-Infinity"),
])
def test_a_non_finite_literal_is_one_line_naming_its_field(path: str, literal: str) -> None:
    proc = deficiency("decide", "-", stdin=with_literal(path, literal))
    assert proc.returncode == 1
    err = proc.stderr.decode().strip()
    assert err == (f"deficiency: invalid facts: {path}: {literal} is not allowed: "
                   "numbers must be finite")


def test_json_lines_name_the_field_of_a_non_finite_literal() -> None:
    lines = [json.dumps(CAR), with_literal("loan.unpaid_balance", "NaN"), json.dumps(CAR)]
    proc = deficiency("decide", "-", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out[1] == {"line": 2, "error": "invalid facts", "errors": [
        {"path": "loan.unpaid_balance", "message": "NaN is not allowed: numbers must be finite"}]}
    assert out[0]["loan_id"] == out[2]["loan_id"] == CAR["loan"]["id"]
