"""Turns at a worker's interpreter (service/api/turns.py): one request at a time, in
arrival order, those back from a wait first; a wait let go; never stuck behind a
holder for longer than the patience."""

from __future__ import annotations

import threading
import time

import pytest

from service.api.turns import Turns

JOIN = 10  # seconds: a thread that is not done by then is stuck


def _start(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def _queued(turns: Turns) -> int:
    return len(turns._new) + len(turns._back)


def test_requests_get_their_turns_in_arrival_order() -> None:
    turns = Turns(patience=30)
    order: list[int] = []
    release = threading.Event()

    def first() -> None:
        with turns.hold():
            release.wait(JOIN)
            order.append(0)

    def later(n: int) -> None:
        with turns.hold():
            order.append(n)

    threads = [_start(first)]
    _wait_until(lambda: turns._holder is not None)
    for n in range(1, 9):  # queued one after the other
        threads.append(_start(later, n))
        _wait_until(lambda n=n: _queued(turns) == n)
    release.set()
    for t in threads:
        t.join(JOIN)
    assert order == list(range(9))
    assert turns._holder is None and _queued(turns) == 0


def test_one_request_at_a_time_holds_the_turn() -> None:
    turns = Turns(patience=30)
    inside = 0
    most = 0
    guard = threading.Lock()

    def request() -> None:
        nonlocal inside, most
        for _ in range(200):
            with turns.hold():
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0)  # lets go of the interpreter lock, not of the turn
                with guard:
                    inside -= 1

    threads = [_start(request) for _ in range(8)]
    for t in threads:
        t.join(JOIN)
    assert most == 1
    assert turns._holder is None


def test_a_request_back_from_a_wait_goes_before_new_ones() -> None:
    turns = Turns(patience=30)
    order: list[str] = []
    waited = threading.Event()
    resume = threading.Event()

    def waiting_request() -> None:
        with turns.hold():
            with turns.let_go():  # e.g. the audit commit
                waited.set()
                resume.wait(JOIN)
            order.append("back")

    def holder() -> None:
        with turns.hold():
            resume.set()
            # the waiting request is now queued to come back; a new one arrives too
            _wait_until(lambda: len(turns._back) == 1)
            _start(new_request)
            _wait_until(lambda: len(turns._new) == 1)
            order.append("holder")

    def new_request() -> None:
        with turns.hold():
            order.append("new")

    t1 = _start(waiting_request)
    waited.wait(JOIN)
    assert turns._holder is None  # let go while it waits
    t2 = _start(holder)
    t1.join(JOIN)
    t2.join(JOIN)
    _wait_until(lambda: len(order) == 3)
    assert order == ["holder", "back", "new"]


def test_others_compute_while_a_request_waits() -> None:
    turns = Turns(patience=30)
    waiting = threading.Event()
    other_done = threading.Event()

    def request() -> None:
        with turns.hold(), turns.let_go():
            waiting.set()
            assert other_done.wait(JOIN)  # would deadlock if the turn were kept

    def other() -> None:
        with turns.hold():
            other_done.set()

    t = _start(request)
    waiting.wait(JOIN)
    _start(other).join(JOIN)
    t.join(JOIN)
    assert other_done.is_set() and not t.is_alive()


def test_holding_again_inside_a_turn_is_the_same_turn() -> None:
    turns = Turns(patience=30)
    with turns.hold():
        with turns.hold():
            assert turns.held()
        assert turns.held()
    assert not turns.held() and turns._holder is None


def test_letting_go_without_a_turn_changes_nothing() -> None:
    turns = Turns(patience=30)
    with turns.let_go():
        assert turns._holder is None
    assert turns._holder is None


def test_a_stuck_holder_delays_others_by_the_patience_at_most() -> None:
    bypassed: list[int] = []
    turns = Turns(patience=0.2, on_bypass=lambda: bypassed.append(1))
    stuck = threading.Event()
    done = threading.Event()

    def slow_client_request() -> None:  # e.g. a body that arrives byte by byte
        with turns.hold():
            stuck.set()
            done.wait(JOIN)

    waits: list[float] = []

    def request() -> None:
        started = time.monotonic()
        with turns.hold():
            waits.append(time.monotonic() - started)

    holder = _start(slow_client_request)
    stuck.wait(JOIN)
    _start(request).join(JOIN)  # waits the patience, then goes ahead
    time.sleep(0.05)
    _start(request).join(JOIN)  # the holder is past the patience: at once
    assert waits[0] == pytest.approx(0.2, abs=0.15)
    assert waits[1] < 0.05
    assert len(bypassed) == 2
    done.set()
    holder.join(JOIN)
    assert turns._holder is None and _queued(turns) == 0
    with turns.hold():  # turns work as before once the holder is done
        assert turns.held()


def test_going_ahead_without_a_turn_never_releases_someone_elses() -> None:
    turns = Turns(patience=0.05)
    release = threading.Event()

    def holder() -> None:
        with turns.hold():
            release.wait(JOIN)

    t = _start(holder)
    _wait_until(lambda: turns._holder is not None)
    owner = turns._holder
    with turns.hold():  # bypasses after the patience
        with turns.let_go():
            pass
        assert not turns.held()
    assert turns._holder == owner  # still the stuck holder's
    release.set()
    t.join(JOIN)
    assert turns._holder is None


def test_turns_stay_consistent_when_waits_run_out_as_turns_are_handed_over() -> None:
    """Patience about as long as a turn: waits run out at the moment turns are handed
    over. Every turn ends released, nothing stays queued, and holders never overlap."""
    turns = Turns(patience=0.0005)
    holders = 0
    overlap = False
    guard = threading.Lock()

    def request() -> None:
        nonlocal holders, overlap
        for _ in range(300):
            with turns.hold():
                if turns.held():
                    with guard:
                        holders += 1
                        overlap = overlap or holders > 1
                    time.sleep(0.0002)
                    with guard:
                        holders -= 1
                with turns.let_go():
                    time.sleep(0)

    threads = [_start(request) for _ in range(8)]
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads)
    assert not overlap
    assert turns._holder is None and _queued(turns) == 0
