"""A PostgreSQL server (or the network to it) that stops answering without closing
anything: every store call ends within its deadline with StoreUnavailable instead
of waiting for ever, the chain stays whole, and the store recovers by itself.

The stall is a proxy that keeps every connection open and acknowledges what it is
sent, but forwards nothing: as a hung server or a paused VM looks to the client.
Before `service.audit.deadline` an append through it waited until the stall ended
(for ever, had it not ended) while holding the chain's write turn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from service.audit import AuditStore, StoreUnavailable, open_store
from tests.api.servers import TcpProxy
from tests.audit.records import make_record

TIMEOUT = 2  # the store's busy timeout in these tests, seconds
SLACK = 2.0  # the watchdog's polling, a loaded CI machine


@pytest.fixture
def proxy(own_pg_url: str) -> Iterator[TcpProxy]:
    url = make_url(own_pg_url)
    p = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    p.restore()
    yield p
    p.resume()
    p.cut()


@pytest.fixture
def stalling_store(proxy: TcpProxy, own_pg_url: str) -> Iterator[AuditStore]:
    via = make_url(own_pg_url).set(host="127.0.0.1", port=proxy.port)
    store = open_store(via.render_as_string(hide_password=False), busy_timeout=TIMEOUT)
    try:
        yield store
    finally:
        proxy.resume()  # a call left waiting (a failed test) finishes, and close can
        store.close()


def within(seconds: float, call: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """Run `call` in a thread; fail the test if it has not returned after `seconds`
    (the thread is left behind, a daemon, rather than hang the suite)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    elapsed = time.monotonic() - started
    assert not thread.is_alive(), f"still waiting on the stalled database after {seconds} s"
    return outcome.get("value"), outcome.get("error"), elapsed


def test_an_append_to_a_stalled_database_is_refused_within_the_busy_timeout(
        stalling_store: AuditStore, proxy: TcpProxy) -> None:
    store = stalling_store
    first, last = make_record(1), make_record(4)
    store.append([first])
    proxy.stall()

    _, error, elapsed = within(TIMEOUT + SLACK, lambda: store.append([make_record(2)]))
    assert isinstance(error, StoreUnavailable)
    assert f"did not answer within {TIMEOUT} s" in str(error)
    assert elapsed >= TIMEOUT * 0.9

    # While it lasts, everything else is bounded too: the next append (a new
    # connection, whose handshake stalls), readiness's ping and the reads.
    _, error, _ = within(TIMEOUT + SLACK, lambda: store.append([make_record(3)]))
    assert isinstance(error, StoreUnavailable)
    answered, error, _ = within(TIMEOUT + SLACK, store.ping)
    assert answered is False and error is None
    for read in (lambda: store.get("x"), store.count, lambda: store.query(limit=5)):
        _, error, _ = within(TIMEOUT + SLACK, read)
        assert isinstance(error, StoreUnavailable)

    proxy.resume()
    store.append([last])  # recovered by itself
    assert store.ping() is True
    assert [r["decision_id"] for r in store.query()[0]] == [last.decision_id, first.decision_id]
    assert store.verify().ok


def test_a_commit_held_up_in_the_network_is_refused_and_the_chain_stays_whole(
        stalling_store: AuditStore, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worst moment: the COMMIT is on its way when the network stalls. The writer
    # cannot learn whether it landed (asking needs the database too): 503. When the
    # stall ends the proxy delivers the held COMMIT, so the record may land after
    # all - unanswered, which the contract allows; what must hold is the chain.
    store = stalling_store
    store.append([make_record(1)])
    writer = store._writer

    def stall_then_commit(connection: Any) -> None:
        monkeypatch.setattr(writer, "_send_commit", lambda c: c.commit())  # once only
        proxy.stall()
        connection.commit()

    monkeypatch.setattr(writer, "_send_commit", stall_then_commit)
    _, error, elapsed = within(2 * TIMEOUT + 2 * SLACK,
                               lambda: store.append([make_record(2, key="k2")]))
    assert isinstance(error, StoreUnavailable), error
    assert elapsed >= TIMEOUT * 0.9

    proxy.resume()
    store.append([make_record(3)])
    store.append([make_record(4)])
    landed = store.find_by_idempotency_key("k2") is not None
    assert store.count() == (4 if landed else 3)
    result = store.verify()
    assert result.ok, result


def _cut_all_in_child(store: AuditStore) -> None:
    store._deadlines.cut_all()


def test_a_forked_child_never_cuts_its_parents_connections(own_pg_url: str) -> None:
    # After a fork the parent's sockets are the child's too: a child whose deadline
    # passed must cut only what it opened itself.
    import multiprocessing

    from tests.audit.records import join_or_kill

    with open_store(own_pg_url, busy_timeout=TIMEOUT) as store:
        store.append([make_record(1)])  # the parent now holds an open write connection
        kept = store._writer._connection
        child = multiprocessing.get_context("fork").Process(
            target=_cut_all_in_child, args=(store,), daemon=True)
        child.start()
        assert join_or_kill([child], 30) == [0]
        store.append([make_record(2)])
        assert store._writer._connection is kept  # not found cut and replaced
        assert store.count() == 2 and store.verify().ok


@pytest.mark.parametrize("keyed", [False, True])
def test_an_append_to_postgresql_waits_for_the_database_twice(
        stalling_store: AuditStore, proxy: TcpProxy, keyed: bool) -> None:
    # Each wait is a network round trip, paid by every group commit: on a database a
    # millisecond away, two are two milliseconds. The chain head under its lock
    # (BEGIN and SELECT … FOR UPDATE together, with the duplicate check when a record
    # carries an Idempotency-Key), then the inserts, the head's update and COMMIT.
    store = stalling_store
    store.append([make_record(1)])  # the write connection is open and kept
    for n in range(2, 5):
        before = proxy.round_trips
        store.append([make_record(n, key=f"k{n}" if keyed else None)])
        assert proxy.round_trips - before == 2
    assert store.count() == 4 and store.verify().ok


def test_a_duplicate_key_is_still_found_under_the_chain_lock(
        stalling_store: AuditStore) -> None:
    # The duplicate check travels with the head's SELECT … FOR UPDATE: it must still
    # see what was committed before the lock was granted, and refuse the duplicate
    # without writing anything.
    from service.audit import DuplicateIdempotencyKey

    store = stalling_store
    first = make_record(1, key="same")
    store.append([first])
    with pytest.raises(DuplicateIdempotencyKey) as info:
        store.append([make_record(2), make_record(3, key="same")])
    assert info.value.decision_id == first.decision_id
    outcomes = store.append_each([make_record(4), make_record(5, key="same")])
    assert outcomes[0] is None and isinstance(outcomes[1], DuplicateIdempotencyKey)
    assert store.count() == 2 and store.verify().ok


def test_opening_a_database_that_stops_answering_while_migrating_is_bounded(
        proxy: TcpProxy, own_pg_url: str) -> None:
    # At start-up a worker opens the store; hung there, it would never serve (the HTTP
    # server has no start-up time limit: it would hang for as long as the database).
    # Bounded, the service starts, says "not ready", and opens the store once the
    # database answers.
    via = make_url(own_pg_url).set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False)
    proxy.stall_when(b"pg_advisory_xact_lock")  # the migration's first statement
    _, error, _ = within(TIMEOUT + SLACK, lambda: open_store(via, busy_timeout=TIMEOUT))
    assert isinstance(error, StoreUnavailable), error
    assert f"did not answer within {TIMEOUT} s" in str(error)
    proxy.resume()
    with open_store(via, busy_timeout=TIMEOUT) as store:
        store.append([make_record(1)])
        assert store.count() == 1 and store.verify().ok


def test_a_commit_answered_after_the_deadline_is_still_found_committed(
        own_pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The database commits, but its answer comes after the deadline: the watchdog cuts
    # the connection, and the writer asks (on a fresh one) whether the records landed.
    # That question has a deadline of its own; the expired one must not cut it too.
    from service.audit.deadline import POLL_INTERVAL

    with open_store(own_pg_url, busy_timeout=1) as store:
        store.append([make_record(1)])
        writer = store._writer
        send_commit, check = writer._send_commit, writer._landed

        def commit_then_answer_late(connection: Any) -> None:
            monkeypatch.setattr(writer, "_send_commit", send_commit)  # once only
            connection.commit()
            time.sleep(1 + 3 * POLL_INTERVAL)  # meanwhile the deadline passes: cut
            raise writer._dbapi.OperationalError("the answer came after the deadline")

        def slow_check(landed: Callable[[Any], bool], failure: Exception) -> bool:
            def slowly(connection: Any) -> bool:
                time.sleep(3 * POLL_INTERVAL)  # a slow answer, well within its own deadline
                return landed(connection)
            return check(slowly, failure)

        monkeypatch.setattr(writer, "_send_commit", commit_then_answer_late)
        monkeypatch.setattr(writer, "_landed", slow_check)
        late = make_record(2)
        store.append([late])  # found committed: no error
        assert store.get(late.decision_id) is not None
        assert store.count() == 2 and store.verify().ok
