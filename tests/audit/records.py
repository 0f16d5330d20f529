"""Records for the audit tests (importable from spawned worker processes too)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from service.audit import NewRecord

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make_record(n: int, *, loan_id: str | None = None, at: datetime | None = None,
                key: str | None = None, decision_id: str | None = None) -> NewRecord:
    return NewRecord(
        decision_id=decision_id or f"dec-{n:06d}-{uuid.uuid4().hex[:8]}",
        recorded_at=at or T0 + timedelta(seconds=n),
        loan_id=loan_id or f"loan-{n % 3}",
        ruleset_name="default",
        ruleset_version="2024.03",
        ruleset_sha256="ab" * 32,
        facts={"loan": {"id": loan_id or f"loan-{n % 3}", "debt": "12500.00"}, "n": n,
               "note": "señor ✓"},
        decision={"outcome": {"bearer": "borrower", "borrower_owes": "1250.00"},
                  "amounts": {"deficiency": "1250.00"}, "flags": [True, None, 3]},
        trace=[{"stage": "bearer", "rule": "consumer_default", "applied": True,
                "overridden_by": None}],
        duration_ms=1.25 + n,
        idempotency_key=key,
        request_hash=None if key is None else f"req-{key}",
    )


def append_in_small_batches(url: str, worker: int, records: int, barrier) -> None:
    """A writer process: wait for the others, open the store (all at once, racing
    the migration), then append `records` records in batches of 1 to 4."""
    from service.audit import open_store

    # Timeouts, so one writer's failure breaks the barrier for the others instead
    # of leaving them waiting for ever.
    barrier.wait(timeout=60)
    store = open_store(url)
    try:
        barrier.wait(timeout=60)  # everyone migrated; now append at the same time
        n = 0
        for size in [1, 2, 3, 4] * records:
            if n >= records:
                break
            size = min(size, records - n)
            store.append([make_record(worker * 100_000 + n + i, loan_id=f"w{worker}")
                          for i in range(size)])
            n += size
    finally:
        store.close()


def append_one(store, n: int) -> None:
    """In a forked child: append through the store the parent opened."""
    store.append([make_record(n)])


def join_or_kill(processes, timeout: float = 120.0) -> list[int | None]:
    """Join `processes` within `timeout` in all; kill whatever is left (so a stuck
    child fails its test instead of hanging pytest at exit). Returns exit codes,
    None for a child that had to be killed."""
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    codes = [process.exitcode for process in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
    return codes


def append_past_a_file_size_limit(url: str, limit: int, results) -> None:
    """In a child process: append until writes fail at `limit` bytes per file
    (RLIMIT_FSIZE: the write fails with EFBIG, an I/O error mid-write), then lift the
    limit and append again. Puts (appended, refused, causes, appended after) on
    `results`."""
    import resource
    import signal

    from service.audit import StoreUnavailable, open_store

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    store = open_store(url)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    appended, refused, causes = 0, 0, set()
    for n in range(400):
        try:
            store.append([make_record(n, loan_id="limited")])
            appended += 1
        except StoreUnavailable as exc:
            refused += 1
            causes.add(str(exc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after = 0
    for n in range(400, 420):
        store.append([make_record(n, loan_id="after")])
        after += 1
    store.close()
    results.put((appended, refused, sorted(causes), after))
