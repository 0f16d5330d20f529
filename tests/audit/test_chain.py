"""The hash chain on plain data, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.audit.chain import (
    GENESIS_HASH,
    ChainWalk,
    canonical_json,
    format_timestamp,
    record_hash,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def chain(n: int) -> list[dict]:
    records, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        record = {
            "seq": seq, "prev_hash": prev, "decision_id": f"d{seq}",
            "recorded_at": "2024-03-01T12:00:00.000000Z", "loan_id": "L1",
            "ruleset_name": "default", "ruleset_version": "1", "ruleset_sha256": "0" * 64,
            "facts": {"n": seq}, "decision": {"bearer": "lender"}, "trace": [],
            "duration_ms": 1.0, "idempotency_key": None, "request_hash": None,
        }
        record["hash"] = prev = record_hash(record)
        records.append(record)
    return records


def first_break(records: list[dict]):
    walk = ChainWalk()
    for record in records:
        found = walk.check(record)
        if found is not None:
            return found
    return None


def test_canonical_json_sorts_keys_without_whitespace_and_keeps_unicode():
    assert canonical_json({"b": [1, None], "a": "é✓"}) == '{"a":"é✓","b":[1,null]}'


def test_canonical_json_refuses_nan_and_non_json_values():
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(TypeError):
        canonical_json({"x": {1, 2}})


@given(json_values)
def test_canonical_json_is_stable_under_key_order(value):
    if isinstance(value, dict):
        reordered = dict(reversed(list(value.items())))
        assert canonical_json(reordered) == canonical_json(value)


def test_timestamps_have_one_spelling_per_instant():
    instant = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    elsewhere = instant.astimezone(timezone(timedelta(hours=-5)))
    assert format_timestamp(instant) == format_timestamp(elsewhere) == "2024-03-01T12:00:00.000000Z"
    with pytest.raises(ValueError):
        format_timestamp(datetime(2024, 3, 1))


def test_hash_covers_every_content_field_seq_and_prev_hash():
    record = chain(1)[0]
    for name, other in [("facts", {"n": 2}), ("decision_id", "x"), ("duration_ms", 2.0),
                        ("seq", 2), ("prev_hash", "1" * 64), ("request_hash", "r")]:
        assert record_hash({**record, name: other}) != record["hash"], name


def test_intact_chain_has_no_break_and_matches_its_head():
    records = chain(5)
    walk = ChainWalk()
    assert all(walk.check(r) is None for r in records)
    assert walk.checked == 5
    assert walk.check_head(5, records[-1]["hash"]) is None


def test_altered_content_is_reported_at_the_altered_record():
    records = chain(5)
    records[2] = {**records[2], "decision": {"bearer": "borrower"}}
    found = first_break(records)
    assert (found.seq, found.decision_id) == (3, "d3")
    assert "content altered" in found.reason


def test_deleted_record_is_reported_at_the_gap():
    records = chain(5)
    del records[2]
    found = first_break(records)
    assert (found.seq, found.decision_id) == (4, "d4")
    assert "record deleted" in found.reason


def test_moved_record_is_reported_as_a_broken_link():
    records = chain(5)
    records[1], records[3] = {**records[3], "seq": 2}, {**records[1], "seq": 4}
    found = first_break(records)
    assert (found.seq, found.decision_id) == (2, "d4")
    assert "reordered" in found.reason


def test_records_deleted_from_the_end_show_against_the_head():
    records = chain(5)
    walk = ChainWalk()
    assert all(walk.check(r) is None for r in records[:3])
    found = walk.check_head(5, records[-1]["hash"])
    assert found.seq == 4 and "deleted from the end" in found.reason
