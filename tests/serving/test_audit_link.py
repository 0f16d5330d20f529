"""The app's way to the audit log: its own store, opened on first use, committing
concurrent submissions in groups; failures are reported and keep readiness failing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from service.audit import DuplicateIdempotencyKey, open_store
from service.serving.audit_link import AuditLink
from tests.audit.records import make_record


def test_the_link_commits_through_its_own_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    with AuditLink(url) as link:
        link.submit(make_record(1, key="k"))
        with pytest.raises(DuplicateIdempotencyKey):
            link.submit(make_record(2, key="k"))
        receipts = link.submit_many([make_record(3), make_record(4)])
        assert [r.leaf_index for r in receipts] == [1, 2]
        assert link.store().count() == 3
        assert link.store().verify().ok


def test_failing_commits_are_logged_with_their_cause_but_not_once_per_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import sqlite3

    import service.serving.audit_link as audit_link
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
            assert isinstance(link.submit_many([make_record(3)])[0], StoreUnavailable)
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

    import service.serving.audit_link as audit_link
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
            assert isinstance(link.submit_many([make_record(2)])[0], StoreUnavailable)
            assert link.unavailable_reason() is not None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        link.submit(make_record(3))  # a success clears it at once
        assert link.unavailable_reason() is None
