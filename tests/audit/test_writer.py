"""The append path: writers take turns through `<db>.lock` on SQLite (queueing in the
kernel instead of polling SQLite's lock), bounded by the busy timeout; minimal
statements; one transaction per group however it is submitted."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.audit import (
    DuplicateDecisionId,
    DuplicateIdempotencyKey,
    GroupCommitter,
    StoreUnavailable,
    open_store,
)
from tests.audit.records import make_record

HOLD = """
import fcntl, sys, time
fd = open(sys.argv[1], "a")
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_sqlite_appends_hold_the_lock_file_only_while_writing(tmp_path):
    with open_store(f"sqlite:///{tmp_path}/audit.db") as store:
        store.append([make_record(1)])
        lock = tmp_path / "audit.db.lock"
        assert lock.is_file()
        assert lock_is_free(lock)  # released after the commit


def test_a_writer_waits_its_turn_behind_another_process(tmp_path):
    with open_store(f"sqlite:///{tmp_path}/audit.db") as store:
        store.append([make_record(1)])
        holder = hold_lock(tmp_path / "audit.db.lock", 0.6)
        try:
            started = time.monotonic()
            store.append([make_record(2)])  # queued in flock, then straight through
            waited = time.monotonic() - started
        finally:
            holder.wait(10)
        assert waited >= 0.4
        assert store.count() == 2 and store.verify().ok


def test_the_wait_is_bounded_by_the_busy_timeout_and_leaves_no_lock_behind(tmp_path):
    lock = tmp_path / "audit.db.lock"
    with open_store(f"sqlite:///{tmp_path}/audit.db", busy_timeout=0.3) as store:
        store.append([make_record(1)])
        holder = hold_lock(lock, 1.0)
        try:
            with pytest.raises(StoreUnavailable, match="busy"):
                store.append([make_record(2)])
        finally:
            holder.wait(10)
        # The abandoned wait was granted once the holder left, and given back at once.
        deadline = time.monotonic() + 5
        while not lock_is_free(lock) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lock_is_free(lock)
        store.append([make_record(3)])
        assert store.count() == 2 and store.verify().ok


def test_large_groups_are_inserted_in_several_statements_of_one_transaction(store):
    records = [make_record(n) for n in range(150)]
    errors = store.append_each(records)
    assert errors == [None] * 150
    assert store.transactions == 1
    assert [r["decision_id"] for r in store.iter_records()] == [r.decision_id for r in records]
    assert store.verify().ok


def test_a_duplicate_id_without_a_key_is_found_by_the_index(store):
    # No idempotency key in the group: no lookup before the insert; the unique index
    # refuses the duplicate and the group is redone with the lookup.
    first = make_record(1)
    store.append([first])
    records = [make_record(2), make_record(3, decision_id=first.decision_id), make_record(4)]
    errors = store.append_each(records)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], DuplicateDecisionId)
    assert [r["seq"] for r in store.iter_records()] == [1, 2, 3]
    assert store.verify().ok


def test_submit_many_commits_a_request_in_one_transaction(store):
    store.append([make_record(0, key="taken")])
    with GroupCommitter(store) as committer:
        errors = committer.submit_many([make_record(1), make_record(2, key="taken"),
                                        make_record(3)])
        assert committer.transactions == 1
        assert committer.submit_many([]) == []
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], DuplicateIdempotencyKey)
    assert store.count() == 3 and store.verify().ok
