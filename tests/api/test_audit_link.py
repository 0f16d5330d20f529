"""The app's way to the audit log: through the server's commit process when there is
one, through its own store when it cannot be reached."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from service.api.audit_link import AuditLink
from service.audit import DuplicateIdempotencyKey, NewRecord, open_store
from service.audit.commit_process import CommitClient, CommitProcess, _recv
from service.audit.store import PreparedRecord
from tests.audit.records import make_record


def test_commits_go_through_the_commit_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    process = CommitProcess(url)
    try:
        with AuditLink(url) as link:
            link.use_commit_process(CommitClient(process.path))
            first = make_record(1, key="k")
            link.submit(first)
            with pytest.raises(DuplicateIdempotencyKey):
                link.submit(make_record(2, key="k"))
            assert link.submit_many([make_record(3), make_record(4)]) == [None, None]
            assert link.store().count() == 3
            assert link.store().transactions == 0  # none committed by the link itself
            assert link.store().verify().ok
    finally:
        process.stop()


def test_without_the_commit_process_the_link_commits_itself(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    with AuditLink(url) as link:
        link.use_commit_process(CommitClient(str(tmp_path / "gone.sock")))
        link.submit(make_record(1))
        assert link.submit_many([make_record(2)]) == [None]
        assert link.store().count() == 2
        assert link.store().transactions == 2


class MuteCommitProcess:
    """Takes one request, maybe commits it, and closes the connection unanswered."""

    def __init__(self, path: str, commit_into: str | None) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.commit_into = commit_into
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn, _ = self.listener.accept()
        payload = _recv(conn)
        if self.commit_into is not None and payload is not None:
            with open_store(self.commit_into) as store:
                store.append([as_record(p) for p in pickle.loads(payload)])
        conn.close()

    def close(self) -> None:
        self.thread.join(5)
        self.listener.close()


def as_record(parts: tuple) -> NewRecord:
    """The NewRecord a prepared record was made from."""
    prepared = PreparedRecord.from_parts(parts)
    content = prepared.content
    return NewRecord(
        decision_id=content["decision_id"], recorded_at=prepared.recorded_at,
        loan_id=content["loan_id"], ruleset_name=content["ruleset_name"],
        ruleset_version=content["ruleset_version"], ruleset_sha256=content["ruleset_sha256"],
        facts=json.loads(parts[6]), decision=json.loads(parts[7]), trace=json.loads(parts[8]),
        duration_ms=content["duration_ms"], idempotency_key=content["idempotency_key"],
        request_hash=content["request_hash"])


@pytest.mark.parametrize("committed_before_dying", [False, True])
def test_a_commit_whose_answer_is_lost_is_committed_here_exactly_once(
        tmp_path: Path, committed_before_dying: bool) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    mute = MuteCommitProcess(str(tmp_path / "mute.sock"),
                             url if committed_before_dying else None)
    try:
        with AuditLink(url) as link:
            link.use_commit_process(CommitClient(str(tmp_path / "mute.sock")))
            record = make_record(1, key="k-1")
            link.submit(record)  # no exception: it is in the log
            assert link.store().count() == 1
            assert link.store().get(record.decision_id) is not None
            assert link.store().verify().ok
    finally:
        mute.close()


def test_a_restarted_commit_process_is_found_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    process = CommitProcess(url, supervise=True)
    try:
        with AuditLink(url, retry_interval=0.1) as link:
            link.use_commit_process(CommitClient(process.path))
            link.submit(make_record(1))
            first = process.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            # In flight when it died, or sent while it is down: committed here, no error.
            link.submit(make_record(2))
            deadline = time.monotonic() + 30
            while (process.starts < 2 or not process.alive()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert process.starts == 2 and process.pid != first
            time.sleep(0.2)  # past the link's retry interval
            link.submit(make_record(3))
            assert link.store().count() == 3 and link.store().verify().ok
            assert link.store().transactions == 1  # record 2 only
    finally:
        process.stop()
    assert not process.alive()


def test_failing_commits_are_logged_with_their_cause_but_not_once_per_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import sqlite3

    import service.api.audit_link as audit_link
    from service.audit import StoreUnavailable

    monkeypatch.setattr(audit_link, "FAILURE_REPORT_INTERVAL", 0.5)
    path = tmp_path / "audit.db"
    with AuditLink(f"sqlite:///{path}",
                   opener=lambda url: open_store(url, busy_timeout=0.05)) as link:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # every append now fails: "database is locked"
        try:
            caplog.set_level("WARNING", logger="deficiency.api")
            for n in range(3):
                with pytest.raises(StoreUnavailable):
                    link.submit(make_record(n))
            reports = [r.getMessage() for r in caplog.records]
            assert reports == ["audit commit failed, decisions refused with 503: "
                               "audit store unavailable: database is locked"]
            time.sleep(0.6)
            assert link.submit_many([make_record(3)])[0] is not None
            reports = [r.getMessage() for r in caplog.records]
            assert len(reports) == 2
            assert reports[1].endswith("database is locked (2 more since the last report)")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        link.submit(make_record(4))  # and it works again
        assert link.store().count() == 1


def test_readiness_fails_while_commits_fail_though_the_database_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A full disk or a read-only file answers a ping but refuses every write: a load
    # balancer asking /readyz should hear that, not "ready".
    import sqlite3

    import service.api.audit_link as audit_link
    from service.audit import StoreUnavailable

    monkeypatch.setattr(audit_link, "WRITE_FAILURE_MEMORY", 0.5)
    path = tmp_path / "audit.db"
    with AuditLink(f"sqlite:///{path}",
                   opener=lambda url: open_store(url, busy_timeout=0.05)) as link:
        assert link.unavailable_reason() is None
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # writes now fail; reads and pings do not
        try:
            with pytest.raises(StoreUnavailable):
                link.submit(make_record(1))
            assert link.store().ping() is True
            reason = link.unavailable_reason()
            assert reason is not None and "could not be recorded" in reason \
                and "database is locked" in reason
            # With nothing tried meanwhile, readiness comes back (and traffic with it:
            # the next decisions find out again).
            time.sleep(0.6)
            assert link.unavailable_reason() is None
            assert link.submit_many([make_record(2)])[0] is not None
            assert link.unavailable_reason() is not None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        link.submit(make_record(3))  # a success clears it at once
        assert link.unavailable_reason() is None


def test_each_outage_of_the_commit_process_is_logged_and_so_is_its_return(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Not only the first: a worker says when the commit process cannot be reached, once
    per outage, and when it answers again (before, only the first outage was logged)."""
    from service.audit.commit_process import CommitServer

    url = f"sqlite:///{tmp_path}/audit.db"
    path = str(tmp_path / "commit.sock")

    def serve() -> tuple[socket.socket, int, threading.Thread]:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(4)
        read_fd, write_fd = os.pipe()
        server = CommitServer(listener, url, control_fd=read_fd)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        return listener, write_fd, thread

    def stop(listener: socket.socket, write_fd: int, thread: threading.Thread) -> None:
        os.close(write_fd)  # the control pipe closes: the server's loop ends
        thread.join(10)
        listener.close()
        os.unlink(path)

    def said(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    caplog.set_level("INFO", logger="deficiency.api")
    with AuditLink(url, retry_interval=0.05) as link:
        link.use_commit_process(CommitClient(path, timeout=5))
        for outage in (1, 2):
            link.submit(make_record(10 * outage))  # nobody listening: committed here
            link.submit(make_record(10 * outage + 1))
            assert said("commit process unreachable") == outage
            running = serve()
            time.sleep(0.1)  # past the retry interval
            before = link.store().transactions
            link.submit(make_record(10 * outage + 2))
            assert link.store().transactions == before  # through the commit process
            assert said("commit process reachable again") == outage
            stop(*running)
            link.submit(make_record(10 * outage + 3))  # its connection is gone: here
            time.sleep(0.1)
        assert link.store().count() == 8 and link.store().verify().ok


class WaitLog:
    """A `waiting` hook that notes whether a call happened inside it."""

    def __init__(self) -> None:
        self.inside = False
        self.entered = 0

    def __call__(self) -> WaitLog:
        return self

    def __enter__(self) -> None:
        assert not self.inside
        self.inside = True
        self.entered += 1

    def __exit__(self, *exc: object) -> None:
        self.inside = False


class ObservedClient(CommitClient):
    def __init__(self, path: str, wait: WaitLog) -> None:
        super().__init__(path)
        self.wait = wait
        self.seen: list[bool] = []

    def submit_many(self, records):  # type: ignore[no-untyped-def]
        self.seen.append(self.wait.inside)
        return super().submit_many(records)


def test_every_wait_on_the_log_happens_inside_the_waiting_hook(tmp_path: Path) -> None:
    """The server lets a request's turn go there (service/api/turns.py): each wait on
    the commit process or the database is surrounded by `waiting()`, the encoding of
    a record is not."""
    url = f"sqlite:///{tmp_path}/audit.db"
    wait = WaitLog()
    process = CommitProcess(url)
    try:
        with AuditLink(url, waiting=wait) as link:
            store = link.store()
            seen_by_store: list[bool] = []
            for name in ("ping", "get", "find_by_idempotency_key", "query"):
                method = getattr(store, name)

                def observed(*a, _method=method, **kw):  # type: ignore[no-untyped-def]
                    seen_by_store.append(wait.inside)
                    return _method(*a, **kw)
                setattr(store, name, observed)
            client = ObservedClient(process.path, wait)
            link.use_commit_process(client)
            record = make_record(1, key="k")
            link.submit(record)  # through the commit process
            assert client.seen == [True]
            assert link.get(record.decision_id)["decision_id"] == record.decision_id
            assert link.find_by_idempotency_key("k") is not None
            assert len(link.query(limit=5)[0]) == 1
            assert link.unavailable_reason() is None
            assert seen_by_store == [True, True, True, True]
            process.stop()  # now the link commits by itself, waiting as well
            committer = link._open()[1]
            commit_prepared = committer.commit_prepared
            seen_locally: list[bool] = []

            def observed_commit(records):  # type: ignore[no-untyped-def]
                seen_locally.append(wait.inside)
                return commit_prepared(records)
            committer.commit_prepared = observed_commit  # type: ignore[method-assign]
            link.submit(make_record(2))
            assert seen_locally and all(seen_locally)
            assert not wait.inside
    finally:
        process.stop()
