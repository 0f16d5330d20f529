"""The app's connection to the audit log, which may not be reachable yet.

The service starts even when the database is down (readiness says so, and
decisions are refused with 503); the store is opened on first use and the
attempt repeated at most once per `retry_interval` until it succeeds. Once
open, the store's connection pool recovers by itself when the database comes
back (pre-ping on PostgreSQL; SQLite reopens the file).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..audit import AuditStore, GroupCommitter, NewRecord, StoreUnavailable, open_store
from ..audit.receipts import Receipt
from ..audit.records import PreparedRecord, prepare

log = logging.getLogger("deficiency.api")

#: Seconds between two log lines about failing commits (the failures in between are
#: counted): an outage fails every request, and the log should say why, not flood.
FAILURE_REPORT_INTERVAL = 10.0

#: Seconds a failed commit keeps readiness failing when no commit has succeeded since.
#: A database can answer a ping and still refuse every write (disk full, read-only):
#: readiness then says so, so that a load balancer sends decisions elsewhere. With no
#: decisions to try, readiness returns after this long, and the next ones tell again.
WRITE_FAILURE_MEMORY = 5.0


class _FailureReport:
    """Log a recurring failure's cause at most once per `interval`, counting the rest."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._next = -float("inf")
        self._unreported = 0

    def __call__(self, cause: Exception) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._unreported += 1
                return
            self._next = now + self._interval
            unreported, self._unreported = self._unreported, 0
        since = f" ({unreported} more since the last report)" if unreported else ""
        log.warning("audit commit failed, decisions refused with 503: %s%s", cause, since)


class AuditLink:
    def __init__(
        self,
        url: str,
        *,
        opener: Callable[[str], AuditStore] = open_store,
        retry_interval: float = 1.0,
    ) -> None:
        self._url = url
        self._opener = opener
        self._retry_interval = retry_interval
        self._lock = threading.Lock()
        self._store: AuditStore | None = None
        self._committer: GroupCommitter | None = None
        self._last_attempt = -float("inf")
        self._last_error = "audit store not opened yet"
        self._closed = False
        self._report_failure = _FailureReport(FAILURE_REPORT_INTERVAL)
        self._write_failure: tuple[float, str] | None = None  # (when, why), since a success
        try:
            self._open()
        except StoreUnavailable as exc:
            log.warning("audit store unavailable at start-up (will retry): %s", exc)

    def _open(self) -> tuple[AuditStore, GroupCommitter]:
        store, committer = self._store, self._committer
        if store is not None and committer is not None:
            return store, committer
        with self._lock:
            if self._closed:
                raise StoreUnavailable("audit store closed (shutting down)")
            if self._store is None or self._committer is None:
                now = time.monotonic()
                if now - self._last_attempt < self._retry_interval:
                    raise StoreUnavailable(self._last_error)
                self._last_attempt = now
                try:
                    store = self._opener(self._url)
                except StoreUnavailable as exc:
                    self._last_error = str(exc)
                    raise
                except OSError as exc:  # e.g. the SQLite directory cannot be created (yet)
                    self._last_error = f"audit store unavailable: {exc}"
                    raise StoreUnavailable(self._last_error) from exc
                self._store, self._committer = store, GroupCommitter(store)
                log.info("audit store open (%s)", store.backend)
            return self._store, self._committer

    def store(self) -> AuditStore:
        """The open store; raises StoreUnavailable."""
        return self._open()[0]

    def find_by_idempotency_key(self, key: str) -> dict[str, Any] | None:
        return self.store().find_by_idempotency_key(key)

    def get(self, decision_id: str) -> dict[str, Any] | None:
        return self.store().get(decision_id)

    def query(self, **params: Any) -> tuple[list[dict[str, Any]], str | None]:
        return self.store().query(**params)

    @property
    def backend(self) -> str | None:
        return self._store.backend if self._store is not None else None

    def submit(self, record: NewRecord) -> Receipt:
        """Commit one record (grouped with concurrent ones) and return its receipt;
        raises StoreUnavailable, DuplicateIdempotencyKey, DuplicateDecisionId."""
        outcome = self._commit([prepare(record)])[0]  # a bad record fails here (ValueError)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def submit_many(self, records: Sequence[NewRecord]) -> list[Exception | Receipt]:
        """Commit records in one transaction (grouped with concurrent submissions); per
        record, its receipt or the error that kept it out. Raises StoreUnavailable."""
        return self._commit([prepare(record) for record in records])

    def _commit(self, records: list[PreparedRecord]) -> list[Exception | Receipt]:
        try:
            outcomes = self._commit_once(records)
        except StoreUnavailable as exc:
            self._failed(exc)
            raise
        unavailable = next((e for e in outcomes if isinstance(e, StoreUnavailable)), None)
        if unavailable is not None:
            self._failed(unavailable)
        elif self._write_failure is not None:
            self._write_failure = None
        return outcomes

    def _failed(self, cause: StoreUnavailable) -> None:
        self._write_failure = (time.monotonic(), str(cause))
        self._report_failure(cause)

    def _commit_once(self, records: list[PreparedRecord]) -> list[Exception | Receipt]:
        try:
            outcomes = self._open()[1].commit_prepared(records)
        except RuntimeError as exc:  # committer closed (shutting down)
            raise StoreUnavailable(f"audit store unavailable: {exc}") from exc
        # The writer failing unexpectedly is, to the caller, the store being unavailable.
        return [StoreUnavailable(f"audit store unavailable: {e}") if isinstance(e, RuntimeError)
                else e for e in outcomes]

    def unavailable_reason(self) -> str | None:
        """None when the store answers and the last commit (if one failed within
        WRITE_FAILURE_MEMORY seconds) did not fail; else why not."""
        try:
            answers = self.store().ping()
        except StoreUnavailable as exc:
            return str(exc)
        if not answers:
            return "audit store unavailable: the database does not answer"
        failure = self._write_failure
        if failure is not None and time.monotonic() - failure[0] < WRITE_FAILURE_MEMORY:
            return f"the last decision could not be recorded ({failure[1]})"
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            committer, store = self._committer, self._store
            self._committer = self._store = None
        if committer is not None:
            committer.close()
        if store is not None:
            store.close()

    def __enter__(self) -> AuditLink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
