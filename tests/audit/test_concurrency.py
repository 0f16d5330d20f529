"""Many writers, one chain: processes appending at once, and the group committer."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from service.audit import DuplicateIdempotencyKey, GroupCommitter
from tests.audit.records import append_in_small_batches, join_or_kill, make_record

PROCESSES = 4
RECORDS_PER_PROCESS = 200


def test_processes_appending_at_once_keep_one_contiguous_chain(store_url):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    workers = [
        context.Process(target=append_in_small_batches,
                        args=(store_url, worker, RECORDS_PER_PROCESS, barrier), daemon=True)
        for worker in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    assert join_or_kill(workers) == [0] * PROCESSES

    from service.audit import open_store

    with open_store(store_url) as store:
        assert store.count() == PROCESSES * RECORDS_PER_PROCESS
        seqs = [r["seq"] for r in store.iter_records()]
        assert seqs == list(range(1, PROCESSES * RECORDS_PER_PROCESS + 1))
        result = store.verify()
        assert result.ok and result.checked == PROCESSES * RECORDS_PER_PROCESS
        for worker in range(PROCESSES):
            page, _ = store.query(loan_id=f"w{worker}", limit=1000)
            assert len(page) == RECORDS_PER_PROCESS


def run_threads(count: int, target) -> list[BaseException]:
    start = threading.Barrier(count)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        start.wait()
        try:
            target(index)
        except BaseException as exc:  # collected, asserted by the caller
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return failures


def test_group_committer_commits_concurrent_submits_together(store):
    committer = GroupCommitter(store)
    submitted: list[str] = []

    def submit_hundred(thread: int) -> None:
        for i in range(100):
            record = make_record(thread * 1000 + i)
            committer.submit(record)
            # Durable by the time submit returns.
            submitted.append(record.decision_id)

    try:
        failures = run_threads(16, submit_hundred)
    finally:
        committer.close()
    assert failures == []
    assert committer.committed == 1600
    assert committer.transactions < 1600
    assert store.count() == 1600
    assert {r["decision_id"] for r in store.iter_records()} == set(submitted)
    assert store.verify().ok


def test_group_committer_fails_only_the_duplicate(store):
    store.append([make_record(0, key="taken")])
    committer = GroupCommitter(store)
    outcomes: dict[int, str] = {}

    def submit(thread: int) -> None:
        key = "taken" if thread == 3 else None
        try:
            committer.submit(make_record(thread + 1, key=key))
            outcomes[thread] = "ok"
        except DuplicateIdempotencyKey as exc:
            outcomes[thread] = f"duplicate of {exc.decision_id}"

    try:
        assert run_threads(8, submit) == []
    finally:
        committer.close()
    existing = store.find_by_idempotency_key("taken")["decision_id"]
    assert outcomes.pop(3) == f"duplicate of {existing}"
    assert set(outcomes.values()) == {"ok"}
    assert store.count() == 8 and store.verify().ok


def test_group_committer_refuses_bad_records_in_the_caller(store):
    from dataclasses import replace

    with GroupCommitter(store) as committer:
        with pytest.raises(ValueError, match="not JSON-ready"):
            committer.submit(replace(make_record(1), trace=[object()]))
        committer.submit(make_record(2))
    assert store.count() == 1


def test_a_closed_group_committer_refuses_submits(store):
    committer = GroupCommitter(store, max_batch=4)
    committer.submit(make_record(1))
    committer.close()
    with pytest.raises(RuntimeError, match="closed"):
        committer.submit(make_record(2))
    assert store.count() == 1
