"""Bounded waits on a database server that stops answering.

A PostgreSQL server (or the network to it) can hang without closing anything: a
stalled disk, a paused VM, a firewall dropping packets. The driver then waits in
`recv` for ever (TCP's own give-up takes about 15 minutes, or never while the
other side keeps acknowledging), and an append waiting there holds the chain's
write turn, so every decision behind it waits too.

`Deadlines.bounded(seconds)` marks a stretch of database work; a watchdog thread
(one per engine, polling) shuts down the sockets of the engine's connections while
any marked stretch has run past its deadline. The blocked call then fails at once
like a lost connection, the caller sees `Watch.expired` and answers "store
unavailable"; the pool replaces the connections on next use. Every connection is
cut, not only the one that overran: they lead to the same server, and a read stuck
behind the same stall would otherwise keep its request thread.

SQLite has no socket to cut (a hung disk blocks inside a system call); there the
bound is the busy timeout on locks, and `bounded` does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger("deficiency.audit")

#: How often the watchdog looks (a stall is cut at most this late after its deadline).
POLL_INTERVAL = 0.2


def _forget_inherited(ref: weakref.ref[Deadlines]) -> None:
    deadlines = ref()
    if deadlines is not None:
        deadlines._connections = weakref.WeakSet()


class Watch:
    """One bounded stretch of work; `expired` once the watchdog has cut for it."""

    __slots__ = ("deadline", "expired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False

    @property
    def cause(self) -> str:
        return f"the audit database did not answer within {self.seconds:g} s"


_BY_ENGINE: weakref.WeakKeyDictionary[Engine, Deadlines] = weakref.WeakKeyDictionary()
_BY_ENGINE_LOCK = threading.Lock()


def deadlines_for(engine: Engine) -> Deadlines:
    """The engine's deadlines; call it when the engine is made, before it connects, so
    that every connection it opens is known."""
    with _BY_ENGINE_LOCK:
        found = _BY_ENGINE.get(engine)
        if found is None:
            found = _BY_ENGINE[engine] = Deadlines(engine)
        return found


class Deadlines:
    def __init__(self, engine: Engine) -> None:
        self.enabled = engine.dialect.name != "sqlite"
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._armed: dict[int, Watch] = {}
        self._lock = threading.Lock()
        self._pid = -1
        self._stopped = False
        if self.enabled:
            event.listen(engine, "connect", self._register)
            # A forked child must never shut down its parent's sockets (they are shared):
            # it forgets them, and knows only the connections it opens itself.
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _forget_inherited(ref))

    def _register(self, dbapi_connection: Any, _record: Any) -> None:
        self._connections.add(dbapi_connection)

    @contextlib.contextmanager
    def bounded(self, seconds: float) -> Iterator[Watch]:
        """Cut the database connections if the body is still running after `seconds`."""
        watch = Watch(seconds)
        if not self.enabled:
            yield watch
            return
        if self._pid != os.getpid():  # first use, or forked: the thread is not here
            self._start()
        armed, key = self._armed, id(watch)
        armed[key] = watch  # no lock: a dict's item assignment is atomic
        try:
            yield watch
        finally:
            armed.pop(key, None)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._armed = {}
            threading.Thread(target=self._watch, name="audit-deadlines", daemon=True).start()
            self._pid = os.getpid()

    def stop(self) -> None:
        self._stopped = True

    def _watch(self) -> None:
        while not self._stopped:
            time.sleep(POLL_INTERVAL)
            now = time.monotonic()
            overdue = [w for w in list(self._armed.values()) if w.deadline <= now]
            if not overdue:
                continue
            first = [w for w in overdue if not w.expired]
            for w in overdue:
                w.expired = True
            cut = self.cut_all()
            if first:
                log.warning("audit database did not answer within %g s; cut its %d "
                            "connection(s), they are reopened on next use",
                            first[0].seconds, cut)

    def cut_all(self) -> int:
        """Shut down the socket of every open connection; how many were open."""
        cut = 0
        for connection in list(self._connections):
            try:
                fd = connection.fileno()
            except Exception:  # closed already
                continue
            try:
                # A duplicate descriptor: shutting it down shuts down the socket that the
                # driver's descriptor refers to, and closing it leaves the driver's own.
                with socket.socket(fileno=os.dup(fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
                cut += 1
            except OSError:
                continue
        return cut
