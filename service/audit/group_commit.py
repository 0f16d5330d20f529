"""Group commit: many threads append through one writer thread, one transaction (one
fsync) per group of whatever queued up meanwhile."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from service.audit.receipts import Receipt
from service.audit.records import NewRecord, PreparedRecord, prepare
from service.audit.store import AuditStore

GROUP_COMMIT_MAX_BATCH = 256


class _Pending:
    """One submitter's records, committed in the same group (so one transaction)."""

    __slots__ = ("done", "outcomes", "prepared")

    def __init__(self, prepared: list[PreparedRecord]) -> None:
        self.prepared = prepared
        self.done = threading.Event()
        self.outcomes: list[Exception | Receipt] = []


class GroupCommitter:
    """Lets many threads append with one transaction (one fsync) per group.

    `submit` blocks until its record is committed and returns its receipt, or raises
    what kept it out; `submit_many` does the same for several records at once (all in
    the same transaction). A single writer thread takes whatever has queued up (at most
    `max_batch` records, but never part of one submission) while the previous
    group was committing and commits it together, so the busier the server, the
    larger the groups.
    """

    def __init__(self, store: AuditStore, *, max_batch: int = GROUP_COMMIT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self._store = store
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wakeup = threading.Condition(threading.Lock())
        self._closed = False
        self.transactions = 0  # groups committed (or attempted)
        self.committed = 0  # records committed
        self._writer = threading.Thread(target=self._run, name="audit-group-commit",
                                        daemon=True)
        self._writer.start()

    def submit(self, record: NewRecord) -> Receipt:
        outcome = self.commit_prepared([prepare(record)])[0]  # bad records fail here
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def submit_many(self, records: Sequence[NewRecord]) -> list[Exception | None]:
        """Commit `records` in one transaction (shared with other submitters); one
        entry per record, as `AuditStore.append_each` returns them."""
        return [o if isinstance(o, Exception) else None
                for o in self.commit_prepared([prepare(record) for record in records])]

    def commit_prepared(self, records: list[PreparedRecord]) -> list[Exception | Receipt]:
        """Commit records `prepare` has made already; per record, its receipt or the
        error that kept it out."""
        if not records:
            return []
        pending = _Pending(records)
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the audit group committer is closed")
            self._queue.append(pending)
            self._wakeup.notify()
        pending.done.wait()
        return pending.outcomes

    def close(self) -> None:
        """Commit what is queued, then stop the writer thread."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self._writer.join()

    def __enter__(self) -> GroupCommitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _take(self) -> list[_Pending]:
        """The next group (called holding the condition, the queue not empty)."""
        queue = self._queue
        group = [queue.popleft()]
        size = len(group[0].prepared)
        while queue and size + len(queue[0].prepared) <= self._max_batch:
            size += len(queue[0].prepared)
            group.append(queue.popleft())
        return group

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._closed:
                    self._wakeup.wait()
                if not self._queue:
                    return  # closed and drained
                group = self._take()
            records = [p for pending in group for p in pending.prepared]
            outcomes: list[Exception | Receipt]
            try:
                outcomes = self._store.commit_receipted(records)
            except Exception as exc:  # never leave a submitter waiting forever
                outcomes = [RuntimeError(f"audit writer failed: {exc!r}") for _ in records]
            self.transactions += 1
            self.committed += sum(not isinstance(o, Exception) for o in outcomes)
            start = 0
            for pending in group:
                end = start + len(pending.prepared)
                pending.outcomes = outcomes[start:end]
                start = end
                pending.done.set()
