"""One audit writer for all the workers of a server: the commit process.

With each worker committing its own groups, the workers take turns at the chain
head and every turn costs a durable commit (an fsync) — so the log commits
each worker's records separately, one after the other, and a worker's commit
thread competes for its interpreter's lock with the request threads at every
step of the transaction. `deficiency serve` therefore starts one more process
next to the workers: it owns the appends, and commits whatever any worker has
sent while the previous commit was under way as one transaction — one fsync
for the records of every worker — from a single thread that nothing else
competes with.

Workers prepare (validate, encode) records themselves and send them over a
Unix socket, one connection per request thread; the answer — committed, or
what kept each record out — comes back on the same connection once the
transaction is durable. Nothing changes in what a 2xx means: the worker
answers only after the commit process says the record is committed.

The process exits when its control pipe (its stdin, held by the server's
master and inherited by the workers) closes: after the master has stopped the
workers, or when they are all gone. A worker that cannot reach the commit
process commits through its own store instead (`AuditLink`); one that loses it
mid-request answers 503, as for any commit whose outcome is unknown.

    python -m service.audit.commit_process [--detach] SOCKET_PATH|@NAME AUDIT_URL
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from service.audit.engine import STORE_TIMEOUT
from service.audit.store import (
    GROUP_COMMIT_MAX_BATCH,
    AuditStore,
    DuplicateDecisionId,
    DuplicateIdempotencyKey,
    PreparedRecord,
    StoreUnavailable,
    open_store,
)
from service.logjson import JsonLogFormatter

log = logging.getLogger("deficiency.audit")

_HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024
READY = b"ready"  # then the process id, then a newline
RETRY_INTERVAL = 1.0  # seconds between attempts to open an unavailable store


class CommitProcessUnreachable(Exception):
    """The commit process could not be reached; nothing was sent."""


class CommitAnswerLost(StoreUnavailable):
    """The records were sent but no answer came back (the commit process died, or took
    too long: `timed_out`): they may or may not be committed. Committing them again
    elsewhere is safe — a record already in the log comes back as a duplicate of
    itself."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


# ------------------------------------------------------------------ framing


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buf)


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make `sock` blocking with its timeout kept by the kernel (SO_RCVTIMEO/SNDTIMEO;
    a call that runs out fails with EAGAIN, BlockingIOError). A Python timeout would
    poll before every send and receive: each a system call that lets go of the
    interpreter lock, which a busy worker's other threads then hold."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _recv_answer(sock: socket.socket) -> bytes:
    """One frame, read with as few system calls as it arrives in (usually one)."""
    data = sock.recv(65536)
    while True:
        if not data:
            raise ConnectionError("the commit process closed the connection")
        if len(data) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(data)
            if size > MAX_FRAME:
                raise ConnectionError(f"frame of {size} bytes refused")
            end = _HEADER.size + size
            if len(data) >= end:
                if len(data) > end:
                    raise ConnectionError("unexpected bytes after the commit answer")
                return data[_HEADER.size:]
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("connection closed in the middle of a frame")
        data += more


def _recv(sock: socket.socket) -> bytes | None:
    """One frame, or None when the peer closed the connection between frames."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ConnectionError(f"frame of {size} bytes refused")
    payload = _recv_exactly(sock, size)
    if payload is None:
        raise ConnectionError("connection closed in the middle of a frame")
    return payload


# Verdicts travel as plain tuples (the exceptions do not pickle by themselves).

def _verdict(error: Exception | None) -> tuple[Any, ...] | None:
    if error is None:
        return None
    if isinstance(error, DuplicateIdempotencyKey):
        return ("key", error.key, error.decision_id)
    if isinstance(error, DuplicateDecisionId):
        return ("id", error.decision_id)
    if isinstance(error, StoreUnavailable):
        return ("unavailable", str(error))
    return ("error", f"{type(error).__name__}: {error}")


def _error(verdict: tuple[Any, ...] | None) -> Exception | None:
    if verdict is None:
        return None
    kind = verdict[0]
    if kind == "key":
        return DuplicateIdempotencyKey(verdict[1], verdict[2])
    if kind == "id":
        return DuplicateDecisionId(verdict[1])
    if kind == "unavailable":
        return StoreUnavailable(verdict[1])
    return RuntimeError(f"audit commit process failed: {verdict[-1]}")


# ------------------------------------------------------------------ worker side


def answer_timeout(store_timeout: float) -> float:
    """How long a worker waits for the commit process's answer before it gives up on it
    (and commits itself): the process may spend `store_timeout` on the transaction and
    as long again asking whether a lost COMMIT landed, and a request can queue behind
    another group doing the same."""
    return 4 * store_timeout


class CommitClient:
    """A worker's way to the commit process: one connection per thread, one request
    at a time on each."""

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._local = threading.local()
        self._pid = os.getpid()

    def submit_many(self, records: Sequence[PreparedRecord]) -> list[Exception | None]:
        """Commit `records` in one transaction; one entry per record (None: committed).

        Raises CommitProcessUnreachable when nothing could be sent (commit locally
        instead) and CommitAnswerLost when no answer came back (the records may or
        may not be committed).
        """
        if not records:
            return []
        sock = self._connection()
        payload = pickle.dumps([record.parts for record in records],
                               protocol=pickle.HIGHEST_PROTOCOL)
        try:
            try:
                sock.sendall(_HEADER.pack(len(payload)) + payload)
                verdicts = pickle.loads(_recv_answer(sock))
            except BlockingIOError as exc:  # SO_RCVTIMEO / SO_SNDTIMEO ran out
                raise TimeoutError(str(exc)) from exc
        except (OSError, ConnectionError, pickle.UnpicklingError) as exc:
            self._drop()
            timed_out = isinstance(exc, TimeoutError)
            why = f"no answer in {self.timeout:g} s" if timed_out else str(exc)
            raise CommitAnswerLost(f"audit store unavailable: lost the commit process "
                                   f"({why})", timed_out=timed_out) from exc
        if not isinstance(verdicts, list) or len(verdicts) != len(records):
            self._drop()
            raise CommitAnswerLost("audit store unavailable: malformed commit answer")
        return [_error(v) for v in verdicts]

    def _connection(self) -> socket.socket:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._local = threading.local()
            self._pid = os.getpid()
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError as exc:
                sock.close()
                raise CommitProcessUnreachable(str(exc)) from exc
            _kernel_timeouts(sock, self.timeout)
            self._local.sock = sock
        return sock

    def _drop(self) -> None:
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop()


# ------------------------------------------------------------------ the process


class CommitServer:
    """The commit process's loop: read what every connection has sent, commit it all in
    one transaction (or a few, of at most `max_batch` records, never splitting one
    request), answer each connection."""

    def __init__(self, listener: socket.socket, url: str, *, control_fd: int | None = None,
                 max_batch: int = GROUP_COMMIT_MAX_BATCH,
                 opener: Any = open_store) -> None:
        self._listener = listener
        self._url = url
        self._control_fd = control_fd
        self._max_batch = max_batch
        self._opener = opener
        self._store: AuditStore | None = None
        self._last_attempt = -float("inf")
        self._last_error = "audit store not opened yet"
        self._stopping = False
        self.transactions = 0
        self.committed = 0

    def stop(self) -> None:
        self._stopping = True

    def _open(self) -> AuditStore:
        if self._store is None:
            now = time.monotonic()
            if now - self._last_attempt < RETRY_INTERVAL:
                raise StoreUnavailable(self._last_error)
            self._last_attempt = now
            try:
                self._store = self._opener(self._url)
            except StoreUnavailable as exc:
                self._last_error = str(exc)
                raise
            except OSError as exc:
                self._last_error = f"audit store unavailable: {exc}"
                raise StoreUnavailable(self._last_error) from exc
            log.info("audit commit process: store open (%s)", self._store.backend)
        return self._store

    def serve_forever(self) -> None:
        selector = selectors.DefaultSelector()
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ, None)
        if self._control_fd is not None:
            selector.register(self._control_fd, selectors.EVENT_READ, "control")
        with contextlib.suppress(StoreUnavailable):
            self._open()
        try:
            while not self._stopping:
                requests: list[tuple[socket.socket, list[PreparedRecord]]] = []
                for key, _ in selector.select(timeout=1.0):
                    if key.fileobj is self._listener:
                        self._accept(selector)
                    elif key.data == "control":
                        if not os.read(self._control_fd or 0, 4096):
                            self._stopping = True  # the master is done (or gone)
                    else:
                        request = self._read(selector, key.fileobj)  # type: ignore[arg-type]
                        if request is not None:
                            requests.append(request)
                if requests:
                    self._commit(requests)
        finally:
            for key in list(selector.get_map().values()):
                if isinstance(key.fileobj, socket.socket) and key.fileobj is not self._listener:
                    with contextlib.suppress(OSError):
                        key.fileobj.close()
            selector.close()
            if self._store is not None:
                self._store.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if not _same_user(conn):
            log.warning("audit commit process: refused a connection from another user")
            conn.close()
            return
        conn.setblocking(True)
        conn.settimeout(10.0)  # a client sends whole frames: a stalled one is dropped
        selector.register(conn, selectors.EVENT_READ, "client")

    @staticmethod
    def _read(selector: selectors.BaseSelector,
              conn: socket.socket) -> tuple[socket.socket, list[PreparedRecord]] | None:
        try:
            payload = _recv(conn)
            if payload is None:
                raise ConnectionError("closed")
            records = [PreparedRecord.from_parts(parts) for parts in pickle.loads(payload)]
        except Exception as exc:  # a closed, broken or confused client: forget it
            if not isinstance(exc, ConnectionError | OSError):
                log.warning("audit commit process: dropping a client: %r", exc)
            selector.unregister(conn)
            with contextlib.suppress(OSError):
                conn.close()
            return None
        return conn, records

    def _commit(self, requests: list[tuple[socket.socket, list[PreparedRecord]]]) -> None:
        group: list[tuple[socket.socket, list[PreparedRecord]]] = []
        size = 0
        for request in requests:
            if group and size + len(request[1]) > self._max_batch:
                self._commit_group(group)
                group, size = [], 0
            group.append(request)
            size += len(request[1])
        if group:
            self._commit_group(group)

    def _commit_group(self, group: list[tuple[socket.socket, list[PreparedRecord]]]) -> None:
        records = [record for _, rs in group for record in rs]
        errors: list[Exception | None]
        try:
            errors = self._open()._commit_each(records)
        except StoreUnavailable as exc:
            errors = [exc] * len(records)
        except Exception as exc:  # never leave a worker without an answer
            log.exception("audit commit process: commit failed")
            errors = [RuntimeError(repr(exc))] * len(records)
        self.transactions += 1
        self.committed += sum(error is None for error in errors)
        start = 0
        for conn, rs in group:
            verdicts = [_verdict(e) for e in errors[start:start + len(rs)]]
            start += len(rs)
            # A worker that is gone has its connection dropped on the next read.
            with contextlib.suppress(OSError):
                _send(conn, pickle.dumps(verdicts, protocol=pickle.HIGHEST_PROTOCOL))


def _same_user(conn: socket.socket) -> bool:
    """Whether the peer runs as this process's user (always, where that cannot be told:
    a socket in the file system is protected by its directory instead)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True
    credentials = struct.Struct("3i")
    _pid, uid, _gid = credentials.unpack(
        conn.getsockopt(socket.SOL_SOCKET, option, credentials.size))
    return bool(uid == os.getuid())


# ------------------------------------------------------------------ managing it


class CommitProcess:
    """The commit process as seen from the server's master: started before the workers
    are forked, stopped after they have exited, started again if it dies.

    It is detached from the master (started through a short-lived intermediate, so
    it is not one of the master's children: those are the workers, to gunicorn and
    to whoever counts them) but stays in its process group, and it ends when its
    control pipe closes — when the master and every worker that inherited the pipe
    have let go of it or died. With `supervise`, a thread notices its death (a pipe
    only it holds the other end of closes) and starts a new one on the same socket
    address, where the workers find it again by themselves.
    """

    RESTART_DELAY = 1.0

    def __init__(self, url: str, directory: str | None = None, *,
                 start_timeout: float = 30.0, supervise: bool = False,
                 timeout: int = STORE_TIMEOUT) -> None:
        import secrets

        self.url = url
        self.timeout = timeout
        if directory is None:
            # Linux's abstract namespace: nothing in the file system to clean up after a
            # kill; connections from other users are refused by their credentials.
            self.path = f"\0deficiency-audit-{os.getpid()}-{secrets.token_hex(8)}"
        else:
            self.path = os.path.join(directory, "audit-commit.sock")
        self.pid: int | None = None
        self.starts = 0
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._stopping = False
        self._control: Any = None
        self._life: int | None = None
        self._launch()
        self._supervisor: threading.Thread | None = None
        if supervise:
            self._supervisor = threading.Thread(target=self._supervise,
                                                name="audit-commit-supervisor", daemon=True)
            self._supervisor.start()

    def _launch(self) -> None:
        import subprocess

        life_read, life_write = os.pipe()  # the process holds the write end while it lives
        try:
            launcher = subprocess.Popen(
                [sys.executable, "-m", "service.audit.commit_process", "--detach",
                 "--timeout", str(self.timeout), self.path.replace("\0", "@", 1), self.url],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(life_write,))
        except BaseException:
            os.close(life_read)
            raise
        finally:
            os.close(life_write)
        assert launcher.stdin is not None and launcher.stdout is not None
        line = _read_line(launcher.stdout.fileno(), self._start_timeout)
        launcher.stdout.close()
        try:
            launcher.wait(self._start_timeout)  # the intermediate leaves at once
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
        if not line.startswith(READY + b" "):
            with contextlib.suppress(OSError):
                launcher.stdin.close()
            os.close(life_read)
            raise RuntimeError("the audit commit process did not start")
        self._control, self._life = launcher.stdin, life_read
        self.pid = int(line.split()[1])
        self.starts += 1

    def _supervise(self) -> None:
        while True:
            life = self._life
            if life is not None:
                with contextlib.suppress(OSError):
                    while os.read(life, 64):
                        pass  # returns b"" once the process is gone
            with self._lock:
                if self._stopping:
                    return
                log.error("audit commit process (pid %s) ended unexpectedly; starting "
                          "another", self.pid)
                self._release()
            time.sleep(self.RESTART_DELAY)  # a crash loop must not spin
            with self._lock:
                if self._stopping:
                    return
                try:
                    self._launch()
                except Exception as exc:
                    log.error("audit commit process could not be started again: %s", exc)

    def _release(self) -> None:
        control, life = self._control, self._life
        self._control = self._life = None
        if control is not None:
            with contextlib.suppress(OSError):
                control.close()
        if life is not None:
            with contextlib.suppress(OSError):
                os.close(life)

    def alive(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except FileNotFoundError:
            return False
        except OSError:  # no /proc: ask the kernel
            try:
                os.kill(pid, 0)
            except OSError:
                return False
            return True

    def stop(self, timeout: float = 30.0) -> None:
        """Close the control pipe (it answers what it has, then exits once the workers
        are gone too) and wait for it to end."""
        with self._lock:
            self._stopping = True
            control = self._control
            self._control = None
        if control is not None:
            with contextlib.suppress(OSError):
                control.close()
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.alive() and self.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        if self._supervisor is not None:
            self._supervisor.join(timeout)
        with self._lock:
            self._release()


def _read_line(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return data
            chunk = os.read(fd, 64)
            if not chunk:
                return data
            data += chunk
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    detach = args[:1] == ["--detach"]
    if detach:
        args = args[1:]
    timeout = STORE_TIMEOUT
    if args[:1] == ["--timeout"] and len(args) > 1 and args[1].isdigit() and int(args[1]) > 0:
        timeout, args = int(args[1]), args[2:]
    if len(args) != 2:
        print("usage: python -m service.audit.commit_process [--detach] [--timeout SECONDS] "
              "SOCKET_PATH AUDIT_URL", file=sys.stderr)
        return 2
    path, url = args
    in_file_system = not path.startswith("@")  # @name: an abstract socket (Linux)
    if not in_file_system:
        path = "\0" + path[1:]
    # Whoever started this process decides when it ends (by closing stdin), after the
    # workers have finished their requests: a signal sent to the whole process group
    # (Ctrl-C, a group-wide SIGTERM) must not end it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("deficiency")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    if in_file_system:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    if detach and os.fork() != 0:
        os._exit(0)  # the intermediate: its child carries on, adopted by init
    os.write(sys.stdout.fileno(), READY + f" {os.getpid()}\n".encode())
    server = CommitServer(listener, url, control_fd=sys.stdin.fileno(),
                          opener=functools.partial(open_store, busy_timeout=timeout))
    try:
        server.serve_forever()
    finally:
        listener.close()
        if in_file_system:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
