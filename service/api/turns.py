"""Turns at the interpreter: in a worker, one request at a time computes, in arrival order.

A worker of `deficiency serve` answers with several threads, but only one of them
runs Python at a time (durable-rules never lets go of the interpreter lock, and
neither does most of the decision path). Without turns the threads still take
turns, only in no order: whichever wins the lock after each system call. Under
load a request then waited behind the same others again and again (p99 at 2.5
times the mean) and the worker spent CPU handing the lock around eight threads.
`Turns` makes the order explicit:

- a request takes a turn once gunicorn has read its head
  (`BalancedThreadWorker.handle_request`) and keeps it until its answer is written;
- while it waits on something outside the process (the audit commit, the
  database) it lets the turn go (`let_go`) and, once the wait is over, gets it
  back before any request that has not started yet;
- a turn is handed to the next request directly: first those back from a wait,
  then new ones, each queue in arrival order.

Never worse than without turns: a request waits at most `patience` seconds for its
turn. After that (the holder is stuck on something it did not let go of: a client
sending its body slowly, say) it goes ahead alongside, as every request did before
turns, and `on_bypass` is called (counted in /metrics). So no wait for a turn can
last long or deadlock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Seconds a request waits for its turn before it goes ahead without one. Far above a
#: turn's usual wait under full load (the requests ahead of it: a few ms), far below
#: what a client would notice.
PATIENCE = 0.05

_get_ident = threading.get_ident
_monotonic = time.monotonic


class _Waiter:
    __slots__ = ("ident", "lock")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.lock = threading.Lock()
        self.lock.acquire()  # released by the thread that hands the turn over


class Turns:
    def __init__(self, patience: float = PATIENCE,
                 on_bypass: Callable[[], None] | None = None) -> None:
        self.patience = patience
        self.on_bypass = on_bypass
        self._lock = threading.Lock()
        self._holder: int | None = None  # thread ident
        self._since = 0.0  # when the holder got the turn
        self._back: deque[_Waiter] = deque()  # coming back from a wait
        self._new: deque[_Waiter] = deque()

    def held(self) -> bool:
        """Whether the calling thread holds the turn."""
        return self._holder == _get_ident()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Take the turn (in arrival order) for the block; reentrant."""
        if self.held():
            yield
            return
        self._acquire(self._new)
        try:
            yield
        finally:
            self._release_if_held()

    @contextmanager
    def let_go(self) -> Iterator[None]:
        """Let others compute while the block waits; no-op without the turn."""
        if not self.held():
            yield
            return
        self._release_if_held()
        try:
            yield
        finally:
            self._acquire(self._back)

    def _acquire(self, queue: deque[_Waiter]) -> None:
        """Wait for the turn, or `patience` at most (then go ahead without it)."""
        ident = _get_ident()
        with self._lock:
            if self._holder is None:
                self._holder, self._since = ident, _monotonic()
                return
            wait = self.patience - (_monotonic() - self._since)
            waiter = None
            if wait > 0:
                waiter = _Waiter(ident)
                queue.append(waiter)
        if waiter is not None:
            if waiter.lock.acquire(timeout=wait):
                return  # handed over: _holder is us
            with self._lock:
                if self._holder == ident:  # handed over just as the wait ran out
                    return
                queue.remove(waiter)
        if self.on_bypass is not None:
            self.on_bypass()

    def _release_if_held(self) -> None:
        with self._lock:
            if self._holder != _get_ident():
                return  # went ahead without a turn
            nxt = self._back.popleft() if self._back else (
                self._new.popleft() if self._new else None)
            if nxt is None:
                self._holder = None
                return
            self._holder, self._since = nxt.ident, _monotonic()
            nxt.lock.release()
