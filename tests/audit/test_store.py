"""Appending and reading decisions, on SQLite and PostgreSQL (spec §7, §8)."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from service.audit import (
    DuplicateDecisionId,
    DuplicateIdempotencyKey,
    NewRecord,
    open_store,
)
from service.audit.chain import record_hash
from tests.audit.records import T0, make_record


def test_an_appended_record_comes_back_whole(store):
    record = make_record(1, key="idem-1")
    store.append([record])
    got = store.get(record.decision_id)
    assert got == {
        "seq": 1,
        "decision_id": record.decision_id,
        "recorded_at": "2024-03-01T12:00:01.000000Z",
        "loan_id": record.loan_id,
        "ruleset_name": "default",
        "ruleset_version": "2024.03",
        "ruleset_sha256": "ab" * 32,
        "facts": record.facts,
        "decision": record.decision,
        "trace": record.trace,
        "duration_ms": 2.25,
        "idempotency_key": "idem-1",
        "request_hash": "req-idem-1",
        "prev_hash": "0" * 64,
        "hash": got["hash"],
    }
    # Anyone holding the exported record can check its hash without the store.
    assert record_hash(got) == got["hash"]


def test_unknown_ids_and_keys_are_none(store):
    assert store.get("nope") is None
    assert store.find_by_idempotency_key("nope") is None


def test_records_are_chained_in_append_order(store):
    store.append([make_record(n) for n in range(3)])
    store.append([make_record(3)])
    records = list(store.iter_records())
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(records, records[1:], strict=False))
    assert store.count() == 4
    assert store.transactions == 2


def test_recorded_at_in_any_zone_is_stored_as_utc_to_the_microsecond(store):
    at = datetime(2024, 3, 1, 7, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-5)))
    record = make_record(1, at=at)
    store.append([record])
    assert store.get(record.decision_id)["recorded_at"] == "2024-03-01T12:00:00.123456Z"
    assert store.verify().ok


def test_integer_duration_is_stored_as_a_number_that_still_verifies(store):
    record = replace(make_record(1), duration_ms=7)
    store.append([record])
    assert store.get(record.decision_id)["duration_ms"] == 7.0
    assert store.verify().ok


def test_numbers_json_databases_like_to_rewrite_still_verify(store):
    record = replace(make_record(1), decision={"big": 1e20, "tiny": 1e-7, "neg": -0.5,
                                               "huge_int": 2**70})
    store.append([record])
    assert store.get(record.decision_id)["decision"] == record.decision
    assert store.verify().ok


@pytest.mark.parametrize("change, message", [
    ({"recorded_at": datetime(2024, 3, 1)}, "timezone-aware"),
    ({"decision_id": ""}, "decision_id"),
    ({"duration_ms": float("nan")}, "duration_ms"),
    ({"duration_ms": True}, "duration_ms"),
    ({"facts": ["not", "a", "dict"]}, "facts"),
    ({"idempotency_key": 5}, "idempotency_key"),
])
def test_malformed_records_are_refused_when_built(change, message):
    fields = {**make_record(1).__dict__, **change}
    with pytest.raises(ValueError, match=message):
        NewRecord(**fields)


def test_values_that_are_not_json_are_refused_before_anything_is_written(store):
    with pytest.raises(ValueError, match="not JSON-ready"):
        store.append([make_record(1), replace(make_record(2), facts={"when": T0})])
    assert store.count() == 0


def test_an_empty_append_is_a_no_op(store):
    store.append([])
    assert store.count() == 0 and store.transactions == 0


def test_a_repeated_idempotency_key_names_the_existing_decision(store):
    first = make_record(1, key="k-1")
    store.append([first])
    assert store.find_by_idempotency_key("k-1")["decision_id"] == first.decision_id
    with pytest.raises(DuplicateIdempotencyKey) as caught:
        store.append([make_record(2), make_record(3, key="k-1")])
    assert caught.value.decision_id == first.decision_id
    assert caught.value.key == "k-1"
    assert store.count() == 1  # all or nothing: record 2 was not appended either
    assert store.verify().ok


def test_a_repeated_decision_id_is_refused(store):
    store.append([make_record(1, decision_id="dec-same")])
    with pytest.raises(DuplicateDecisionId):
        store.append([make_record(2, decision_id="dec-same")])
    with pytest.raises(ValueError, match="repeat"):
        store.append([make_record(3, key="k"), make_record(4, key="k")])
    assert store.count() == 1


def test_append_each_keeps_out_only_the_duplicates(store):
    store.append([make_record(0, key="taken")])
    records = [make_record(1), make_record(2, key="taken"), make_record(3, key="new"),
               make_record(4, key="new")]
    errors = store.append_each(records)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], DuplicateIdempotencyKey)
    assert isinstance(errors[3], DuplicateIdempotencyKey)
    assert errors[3].decision_id == records[2].decision_id
    assert [r["seq"] for r in store.iter_records()] == [1, 2, 3]
    assert store.verify().ok


def test_query_pages_newest_first_with_a_cursor(store):
    store.append([make_record(n) for n in range(25)])
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = store.query(limit=10, cursor=cursor)
        seen += [r["seq"] for r in page]
        pages += 1
        if cursor is None:
            break
    assert seen == list(range(25, 0, -1))
    assert pages == 3


def test_an_exact_last_page_has_no_next_cursor(store):
    store.append([make_record(n) for n in range(4)])
    page, cursor = store.query(limit=4)
    assert len(page) == 4 and cursor is None


def test_query_filters_by_loan_and_time_range(store):
    store.append([make_record(n, loan_id="L-A" if n % 2 else "L-B") for n in range(10)])
    page, _ = store.query(loan_id="L-A")
    assert [r["facts"]["n"] for r in page] == [9, 7, 5, 3, 1]
    since, until = T0 + timedelta(seconds=3), T0 + timedelta(seconds=7)
    page, _ = store.query(since=since, until=until)  # since inclusive, until exclusive
    assert [r["facts"]["n"] for r in page] == [6, 5, 4, 3]
    page, cursor = store.query(loan_id="L-B", since=since, limit=2)
    assert [r["facts"]["n"] for r in page] == [8, 6]
    page, cursor = store.query(loan_id="L-B", since=since, limit=2, cursor=cursor)
    assert [r["facts"]["n"] for r in page] == [4] and cursor is None
    # The same instant in another zone filters the same.
    local = since.astimezone(timezone(timedelta(hours=9)))
    assert store.query(since=local)[0] == store.query(since=since)[0]


@pytest.mark.parametrize("cursor", [
    "", "!!!", "not-base64", base64.urlsafe_b64encode(b"abc").decode(),
    base64.urlsafe_b64encode(b"-3").decode(), base64.urlsafe_b64encode(b"007").decode(),
    "MQ==" + "x",
])
def test_malformed_cursors_are_value_errors(store, cursor):
    with pytest.raises(ValueError, match="cursor"):
        store.query(cursor=cursor)


@pytest.mark.parametrize("kwargs", [
    {"limit": 0}, {"limit": 1001}, {"limit": "10"}, {"since": datetime(2024, 1, 1)},
    {"until": datetime(2024, 1, 1)},
])
def test_bad_query_arguments_are_value_errors(store, kwargs):
    with pytest.raises(ValueError):
        store.query(**kwargs)


def test_iter_records_filters_by_time_and_reads_in_batches(store):
    store.append([make_record(n) for n in range(12)])
    records = list(store.iter_records(since=T0 + timedelta(seconds=2), batch=5))
    assert [r["facts"]["n"] for r in records] == list(range(2, 12))
    assert [r["seq"] for r in store.iter_records(until=T0 + timedelta(seconds=2))] == [1, 2]


def test_reopening_a_store_keeps_its_records_and_schema(store_url):
    with open_store(store_url) as first:
        first.append([make_record(1)])
    with open_store(store_url) as second:
        second.append([make_record(2)])
        assert second.count() == 2 and second.verify().ok


def test_ping_and_backend(store, store_url):
    assert store.ping()
    assert store.backend == ("sqlite" if store_url.startswith("sqlite") else "postgresql")


def test_query_filters_by_version_and_by_what_the_decision_and_facts_hold(store):
    records = [make_record(n) for n in range(6)]
    for n, rec in enumerate(records):
        if n % 3 == 0:
            rec.decision["outcome"]["bearer"] = "lender"
            rec.facts["jurisdiction"] = "CA"
        if n == 4:
            records[n] = replace(rec, ruleset_version="2025.01")
    store.append(records)
    page, _ = store.query(equal={"decision.outcome.bearer": "lender"})
    assert [r["facts"]["n"] for r in page] == [3, 0]
    page, _ = store.query(equal={"facts.jurisdiction": "CA", "decision.outcome.bearer": "lender"},
                          limit=1)
    assert [r["facts"]["n"] for r in page] == [3]
    page, _ = store.query(ruleset_version="2025.01")
    assert [r["facts"]["n"] for r in page] == [4]
    assert store.query(equal={"facts.loan.id": "loan-2"})[0][0]["facts"]["n"] == 5
    assert store.query(equal={"decision.outcome.bearer": "nobody"})[0] == []
    for bad in ("trace.rule", "decision", "facts..x"):
        with pytest.raises(ValueError, match="not a path"):
            store.query(equal={bad: "x"})
