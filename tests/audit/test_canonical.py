"""The canonical encoding hashes are computed over (orjson, sorted keys), and the
writer's encode-once path producing exactly the bytes the verifier recomputes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.audit.chain import (
    CONTENT_FIELDS,
    Fragment,
    canonical_bytes,
    canonical_json,
    content_hash,
    record_hash,
)
from service.audit.records import prepare
from tests.audit.records import make_record

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=25,
)


def test_the_canonical_form_is_pinned():
    # Changing any of this changes every hash: it is part of the on-disk format.
    value = {"b": [1, None, True], "a": "é✓ \u2028\x01\"\\", "f": [1.5, 1e20, 1e-7, -0.0, 100.0],
             "big": 2**70, "neg": -(2**64), "": {}}
    assert canonical_bytes(value) == (
        '{"":{},"a":"é✓ \u2028\\u0001\\"\\\\","b":[1,null,true],"big":1180591620717411303424,'
        '"f":[1.5,1e+20,1e-7,-0.0,100.0],"neg":-18446744073709551616}').encode("utf-8")
    assert canonical_json(value) == canonical_bytes(value).decode("utf-8")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"),
                                   {"x": [1, {"y": float("nan")}]}, [None, float("-inf")]])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ValueError):
        canonical_bytes(value)


@pytest.mark.parametrize("value", [{1: 2}, {"x": {1, 2}}, {"x": b"bytes"}, {"x": "\ud800"},
                                   {"x": object()}])
def test_values_that_are_not_json_are_refused(value):
    with pytest.raises(TypeError):
        canonical_bytes(value)


def test_datetimes_are_refused_rather_than_spelled_by_the_encoder():
    with pytest.raises(TypeError):
        canonical_bytes({"when": make_record(1).recorded_at})


@given(json_values)
def test_decoding_and_encoding_again_gives_the_same_bytes(value):
    # What verify does with a stored record: parse the stored text, encode again.
    encoded = canonical_bytes(value)
    assert canonical_bytes(json.loads(encoded)) == encoded


@given(json_values)
def test_fragments_embed_exactly_what_encoding_the_value_gives(value):
    document = {"z": value, "a": [value]}
    embedded = {"z": Fragment(canonical_bytes(value)), "a": [Fragment(canonical_bytes(value))]}
    assert canonical_bytes(embedded) == canonical_bytes(document)


@pytest.mark.parametrize("change", [
    {},
    {"duration_ms": 0.1 + 0.2},
    {"duration_ms": 1e-7},
    {"duration_ms": 12345678.9},
    {"facts": {"note": "señor ✓ \U0001f600 \u2028", "n": 2**70, "x": -1.5e300}},
    {"decision": {"ünïcödé": ["日本", 1e20]}, "trace": [{"v": 3.14159}]},
])
def test_the_writer_hashes_the_bytes_the_verifier_recomputes(change):
    record = replace(make_record(7, key="k-7"), **change)
    prepared = prepare(record)
    written = content_hash(prepared.content, 41, "a" * 64)
    # The verifier sees the record as decoded from its stored columns.
    exported = {
        name: json.loads(prepared.row[prepared_column(name)]) if name in (
            "facts", "decision", "trace") else prepared.content[name]
        for name in CONTENT_FIELDS
    }
    exported["duration_ms"] = float(exported["duration_ms"])
    assert record_hash(exported, seq=41, prev_hash="a" * 64) == written
    document = {**exported, "seq": 41, "prev_hash": "a" * 64}
    assert hashlib.sha256(canonical_bytes(document)).hexdigest() == written


def prepared_column(name: str) -> int:
    # PreparedRecord.row: decision_id, loan_id, ruleset_name, ruleset_version,
    # ruleset_sha256, facts, decision, trace, duration_ms, idempotency_key, request_hash
    return {"facts": 5, "decision": 6, "trace": 7}[name]
