"""A NaN / Infinity literal in posted facts is refused (400 malformed JSON) naming its
field, singly and in a batch, and never reaches the engine."""

from __future__ import annotations

import json

import pytest

from .conftest import CAR, ConformingClient, bearer, problem_paths


def body_with(path: str, literal: str, *, batch: bool = False) -> str:
    doc = json.loads(json.dumps(CAR))
    node = doc
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = "@literal@"
    text = json.dumps({"items": [CAR, doc]} if batch else doc)
    return text.replace('"@literal@"', literal)


@pytest.mark.parametrize(("path", "literal"), [
    ("loan.unpaid_balance", "NaN"),
    ("collateral.dwelling_units", "Infinity"),
    ("disposition.costs.legal", "-Infinity"),
])
def test_a_non_finite_literal_is_refused_naming_its_field(client: ConformingClient, path: str,
                                                         literal: str) -> None:
    r = client.post("/v1/decisions", data=body_with(path, literal),
                    content_type="application/json", headers=bearer("all"))
    assert r.status_code == 400
    assert r.json["type"].endswith("malformed-json")
    assert r.json["errors"] == [
        {"path": path, "message": f"{literal} is not allowed: numbers must be finite"}]


def test_a_non_finite_literal_in_a_batch_is_named_by_its_item(client: ConformingClient) -> None:
    r = client.post("/v1/decisions/batch", data=body_with("loan.fees", "NaN", batch=True),
                    content_type="application/json", headers=bearer("all"))
    assert r.status_code == 400
    assert problem_paths(r) == ["items[1].loan.fees"]
