"""verify names the first altered, deleted or reordered record (spec §8)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from service.audit import VerifyResult
from service.audit.chain import record_hash
from tests.audit.records import make_record


@pytest.fixture
def ids(store) -> list[str]:
    records = [make_record(n) for n in range(10)]
    store.append(records[:4])
    store.append(records[4:])
    return [r.decision_id for r in records]  # ids[i] has seq i + 1


def tamper(raw: sa.Engine, *statements: str, **params) -> None:
    with raw.begin() as connection:
        for statement in statements:
            connection.execute(sa.text(statement), params)


def test_an_untouched_log_verifies(store, ids):
    assert store.verify() == VerifyResult(ok=True, checked=10, first_bad_seq=None,
                                          first_bad_decision_id=None, reason=None)


def test_an_empty_log_verifies(store):
    assert store.verify() == VerifyResult(ok=True, checked=0)


def test_small_batches_walk_the_same_chain(store, ids):
    assert store.verify(batch=3) == VerifyResult(ok=True, checked=10)


def test_an_altered_decision_is_reported_at_that_record(store, raw, ids):
    tamper(raw, """UPDATE audit_records SET decision = '{"outcome":{"bearer":"lender"}}'
                   WHERE seq = 6""")
    result = store.verify()
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_decision_id) == (6, ids[5])
    assert result.reason == "hash mismatch (content altered)"
    assert result.checked == 6


def test_an_altered_hash_is_reported_at_that_record(store, raw, ids):
    tamper(raw, "UPDATE audit_records SET hash = :h WHERE seq = 3", h="f" * 64)
    result = store.verify()
    assert (result.ok, result.first_bad_seq, result.first_bad_decision_id) == (False, 3, ids[2])


def test_an_altered_and_rehashed_record_breaks_the_next_link(store, raw, ids):
    # A forger who rewrites a record and recomputes its hash still leaves the next
    # record pointing at the old hash.
    forged = {**store.get(ids[2]), "loan_id": "someone-else"}
    tamper(raw, "UPDATE audit_records SET loan_id = :loan, hash = :h WHERE seq = 3",
           loan="someone-else", h=record_hash(forged))
    result = store.verify()
    assert (result.first_bad_seq, result.first_bad_decision_id) == (4, ids[3])
    assert "prev_hash" in result.reason


def test_a_deleted_middle_record_is_reported_at_the_gap(store, raw, ids):
    tamper(raw, "DELETE FROM audit_records WHERE seq = 5")
    result = store.verify()
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_decision_id) == (6, ids[5])
    assert "record deleted" in result.reason


def test_reordered_records_are_reported_at_the_first_moved_one(store, raw, ids):
    tamper(raw,
           "UPDATE audit_records SET seq = -1 WHERE seq = 3",
           "UPDATE audit_records SET seq = 3 WHERE seq = 7",
           "UPDATE audit_records SET seq = 7 WHERE seq = -1")
    result = store.verify()
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_decision_id) == (3, ids[6])
    assert "reordered" in result.reason


def test_adjacent_records_swapped_are_reported_too(store, raw, ids):
    tamper(raw,
           "UPDATE audit_records SET seq = -1 WHERE seq = 1",
           "UPDATE audit_records SET seq = 1 WHERE seq = 2",
           "UPDATE audit_records SET seq = 2 WHERE seq = -1")
    result = store.verify()
    assert (result.first_bad_seq, result.first_bad_decision_id) == (1, ids[1])


def test_records_deleted_from_the_end_are_reported(store, raw, ids):
    tamper(raw, "DELETE FROM audit_records WHERE seq >= 9")
    result = store.verify()
    assert not result.ok
    assert result.first_bad_seq == 9 and result.first_bad_decision_id is None
    assert "deleted from the end" in result.reason


def test_the_first_of_several_tampered_records_is_the_one_named(store, raw, ids):
    tamper(raw, "DELETE FROM audit_records WHERE seq = 8")
    tamper(raw, "UPDATE audit_records SET ruleset_version = 'x' WHERE seq = 4")
    result = store.verify()
    assert (result.first_bad_seq, result.first_bad_decision_id) == (4, ids[3])


def test_unreadable_json_is_reported_not_raised(store, raw, store_url, ids):
    if not store_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's json type refuses invalid JSON on write")
    tamper(raw, "UPDATE audit_records SET facts = '{broken' WHERE seq = 2")
    result = store.verify()
    assert (result.ok, result.first_bad_seq, result.first_bad_decision_id) == (False, 2, ids[1])
    assert "unreadable" in result.reason


def test_verify_runs_while_decisions_are_being_appended(store, ids):
    stop = threading.Event()

    def append_until_stopped() -> None:
        n = 100
        while not stop.is_set():
            store.append([make_record(n), make_record(n + 1)])
            n += 2

    writer = threading.Thread(target=append_until_stopped)
    writer.start()
    try:
        results = [store.verify(batch=7) for _ in range(5)]
    finally:
        stop.set()
        writer.join()
    assert all(r.ok for r in results), results
    assert results[-1].checked >= 10
    assert store.verify().checked == store.count()
