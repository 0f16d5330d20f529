"""`deficiency serve`: gunicorn, run from Python, with threaded (gthread) workers.

- `preload_app` is off: each worker process builds its own app, engine and audit
  connections after the fork (durable-rules state must never be forked).
- Threads per worker let the audit log's group committer put the records of
  concurrent requests into one transaction.
- SIGTERM stops gracefully: workers finish their in-flight requests (up to
  `server.graceful_timeout`), then commit what is queued and close the store.
- A ruleset reload in one worker is followed by the others through a generation
  number in shared memory, created here before the workers are forked.
- Prometheus metrics are aggregated over the workers (multiprocess mode).
- One more process, started by the master before the workers, commits the audit
  records of every worker (`service.audit.commit_process`): one transaction and
  one fsync for whatever all of them have waiting, from a thread that competes
  with no request thread for its interpreter. It is stopped after the workers;
  a worker that cannot reach it commits through its own store.
- Connections are spread over the workers: each worker can use one core (the
  engine holds the GIL), and keep-alive connections stay with the worker that
  accepted them, so a worker holding more than its share stops accepting
  (`BalancedThreadWorker`) and connections are recycled every
  `server.keepalive_requests` requests.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import select
import shutil
import ssl
import sys
import tempfile
import time
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.http import errors as http_errors
from gunicorn.http.body import LengthReader
from gunicorn.workers.gthread import ThreadWorker

from ..logjson import JsonLogFormatter
from ..policy.model import Ruleset
from .generation import SharedGeneration
from .turns import Turns

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _configure_worker_logging() -> None:
    logger = logging.getLogger("deficiency")
    if any(getattr(h, "_deficiency", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    handler._deficiency = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _use_multiprocess_metrics() -> None:
    """Make every metric created from now on in this worker a shared-file value."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue()


def _worker_exit(_server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    svc = getattr(app, "extensions", {}).get("deficiency") if app is not None else None
    if svc is not None:
        svc.close()


def _child_exit(server: Any, worker: Any) -> None:
    shares = getattr(getattr(server, "app", None), "connection_shares", None)
    if isinstance(shares, ConnectionShares):
        shares.release(worker.pid)
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _connection_recycler(limit: int) -> Any:
    """pre_request hook: answer with "Connection: close" when this worker holds clearly
    more connections than another (the client reconnects, and the other worker takes
    it), and on the `limit`-th request of any keep-alive connection."""

    def pre_request(worker: Any, req: Any) -> None:
        if (limit and req.req_number >= limit) or (
                isinstance(worker, BalancedThreadWorker) and worker.over_share()):
            req.must_close = True

    return pre_request


class ConnectionShares:
    """Each worker's open connection count, in shared memory (created before the fork).

    Slots are claimed by pid; a slot whose worker stopped publishing for STALE
    seconds (dead, or wedged) is free again and no longer counts.
    """

    STALE = 2.5  # an idle worker's loop still turns every second

    def __init__(self, slots: int) -> None:
        self._pids: Any = multiprocessing.RawArray("q", slots)
        self._conns: Any = multiprocessing.RawArray("q", slots)
        self._beats: Any = multiprocessing.RawArray("d", slots)
        self._lock = multiprocessing.Lock()

    def claim(self, pid: int) -> int | None:
        now = time.monotonic()
        with self._lock:
            for i in range(len(self._pids)):
                if self._pids[i] == 0 or now - self._beats[i] > self.STALE:
                    self._pids[i], self._conns[i], self._beats[i] = pid, 0, now
                    return i
        return None  # more workers than slots: this one just does not take part

    def release(self, pid: int) -> None:
        """The worker is gone (called by the master): its count no longer counts."""
        with self._lock:
            for i in range(len(self._pids)):
                if self._pids[i] == pid:
                    self._pids[i] = self._conns[i] = 0

    def publish(self, slot: int, conns: int) -> None:
        self._conns[slot] = conns
        self._beats[slot] = time.monotonic()

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The smallest connection count of the other live workers (None: no others)."""
        now = time.monotonic()
        counts = [self._conns[i] for i in range(len(self._pids))
                  if i != slot and self._pids[i] and now - self._beats[i] <= self.STALE]
        return min(counts) if counts else None

    def may_accept(self, slot: int, conns: int) -> bool:
        """Accept while no live worker holds fewer connections than this one."""
        fewest = self.fewest_elsewhere(slot)
        return fewest is None or conns <= fewest

    def over_share(self, slot: int, conns: int) -> bool:
        """Holding clearly more than another worker (a margin of 2 against flapping)."""
        fewest = self.fewest_elsewhere(slot)
        return fewest is not None and conns > fewest + 2


#: How often a worker that stopped accepting (another worker holds fewer connections)
#: looks whether it should accept again (seconds).
SHARE_LOOK = 0.05

#: How long a worker thread waits for the next request on the keep-alive connection it
#: has just answered before handing the connection back to the poller (seconds).
KEEPALIVE_LINGER = 0.005


def _body_read(conn: Any) -> bool:
    """Whether the connection's last request body was read to its end (gunicorn's
    `Content-Length` reader at zero and nothing buffered); False when unsure."""
    body = getattr(getattr(conn.parser, "mesg", None), "body", None)
    reader = getattr(body, "reader", None)
    return (type(reader) is LengthReader and reader.length == 0
            and getattr(body, "failed", True) is False and body.buf.tell() == 0)


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker that stops accepting while it holds more connections
    than another worker: the idle worker then takes the new ones."""

    _shares: ConnectionShares | None = None
    _slot: int | None = None
    _claimed = False
    _max_conns = 0
    _last_conns = -1
    _last_look = 0.0
    _accepting_share = True

    # The gthread loop reads `worker_connections` on every turn to decide whether
    # to listen for new connections: publish our count and apply the fair share.
    # The slot is claimed on the first turn, once the app is built: a worker still
    # booting must not make the others stop accepting.
    @property  # type: ignore[override]
    def worker_connections(self) -> int:
        if not self._claimed:
            self._claimed = True
            shares = getattr(self.app, "connection_shares", None)
            if isinstance(shares, ConnectionShares):
                self._slot = shares.claim(os.getpid())
                self._shares = shares if self._slot is not None else None
        shares, slot = self._shares, self._slot
        if shares is None or slot is None:
            return self._max_conns
        # The loop turns several times per request: look at shared memory only when
        # our count changed or every 50 ms (others' counts, our heartbeat).
        conns = int(getattr(self, "nr_conns", 0))
        now = time.monotonic()
        if conns != self._last_conns or now - self._last_look > SHARE_LOOK:
            self._last_conns, self._last_look = conns, now
            shares.publish(slot, conns)
            self._accepting_share = shares.may_accept(slot, conns)
        return self._max_conns if self._accepting_share else 0

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._max_conns = value

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread decides whether to accept once per turn of its loop, and a turn can
        wait a whole second for an event: with its threads serving keep-alive
        connections (the linger), a worker that stopped accepting slept through it
        while a client's new connection waited in the listen queue (1.0 s answers,
        seen when clients reconnect). Not accepting, the loop looks again soon."""
        if not self._accepting_share:
            timeout = min(timeout, SHARE_LOOK)
        super().wait_for_and_dispatch_events(timeout)

    def over_share(self) -> bool:
        shares, slot = self._shares, self._slot
        return shares is not None and slot is not None and shares.over_share(
            slot, int(getattr(self, "nr_conns", 0)))

    def handle(self, conn: Any) -> Any:
        """Serve a keep-alive connection's next requests on this thread while they come
        right away and nothing else waits for a thread; otherwise hand it back to the
        poller as gthread does. Under steady load this skips, per request, the hand-off
        between the poller and the pool: three thread switches and the poller's work."""
        result = super().handle(conn)
        while result is True and self.alive and not conn.is_http2 and self._idle_pool():
            try:
                if not conn.parser.unreader.buf.getvalue() and not select.select(
                        [conn.sock], [], [], KEEPALIVE_LINGER)[0]:
                    break
            except (OSError, ValueError, AttributeError):
                break
            result = super().handle(conn)
        return result

    def handle_request(self, req: Any, conn: Any) -> Any:
        """Answer one request (its head read) in its turn at the interpreter: in arrival
        order, one request at a time computing (see `service.api.turns`)."""
        turns = getattr(self.app, "turns", None)
        if turns is None:
            return super().handle_request(req, conn)
        with turns.hold():
            return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        """gthread drains what the app left of a request's body before reusing the
        connection, with a socket timeout set before and cleared after: two system
        calls that each let go of the interpreter lock, which a busy worker's other
        threads then hold. A body read to its end (every route here reads the whole
        body) leaves nothing to drain."""
        if keepalive and _body_read(conn):
            return True
        return bool(super()._keepalive_after(conn, keepalive))

    def _idle_pool(self) -> bool:
        """Whether no accepted request is waiting for a thread of this worker's pool."""
        return self.tpool._work_queue.empty()

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """A request gunicorn refused before the app saw it (request line or headers
        too large or malformed, a bad Content-Length or chunk, ...), or an error after
        the app: answered as application/problem+json (RFC 9457) like every other
        error, instead of gunicorn's text/html page. The detail never repeats what
        the client sent (it may hold keys or borrower data), nor any internals."""
        status, title, detail = refusal(exc, self.cfg)
        if status == 500:
            self.log.exception("Error handling request")  # gunicorn's own line
        else:
            self.log.warning("refused a malformed request: %s (%d)", type(exc).__name__,
                             status)
        try:
            gunicorn_util.write_nonblock(client, problem_response(status, title, detail))
        except Exception:
            self.log.debug("Failed to send error message.")


def refusal(exc: BaseException, cfg: Any) -> tuple[int, str, str]:
    """(status, title, detail) for an error gunicorn raised while reading a request;
    the statuses are gunicorn's (base.Worker.handle_error), anything else is a 500."""
    e = http_errors
    if isinstance(exc, (e.InvalidResponseHeader, e.InvalidResponseHeaderName,
                        e.ConfigurationProblem)):
        pass  # the application's or the configuration's fault, not the client's
    elif isinstance(exc, e.LimitRequestLine):
        return 414, "URI Too Long", (
            f"The request line is longer than {cfg.limit_request_line} bytes."
            if cfg.limit_request_line else "The request line is too long.")
    elif isinstance(exc, e.LimitRequestHeaders):
        return 431, "Request Header Fields Too Large", (
            f"The request has more than {cfg.limit_request_fields} header fields, or a "
            f"header field longer than {cfg.limit_request_field_size} bytes.")
    elif isinstance(exc, (e.InvalidRequestLine, e.InvalidRequestMethod,
                          e.InvalidHTTPVersion)):
        return 400, "Bad Request", "The request line is malformed."
    elif isinstance(exc, (e.InvalidHeader, e.InvalidHeaderName, e.ObsoleteFolding,
                          e.InvalidSchemeHeaders)):
        return 400, "Bad Request", ("A header field is malformed (its name, or a value "
                                    "such as Content-Length or Transfer-Encoding).")
    elif isinstance(exc, (e.InvalidChunkSize, e.ChunkMissingTerminator,
                          e.InvalidChunkExtension)):
        return 400, "Bad Request", "The chunked request body is malformed."
    elif isinstance(exc, e.UnsupportedTransferCoding):
        return 501, "Not Implemented", "The request's Transfer-Encoding is not supported."
    elif isinstance(exc, e.ExpectationFailed):
        return 417, "Expectation Failed", "The request's Expect header cannot be met."
    elif isinstance(exc, e.ForbiddenProxyRequest):
        return 403, "Forbidden", "Request forbidden."
    elif isinstance(exc, (e.ParseException, ssl.SSLError)):
        return 400, "Bad Request", "The request is malformed."
    return 500, "Internal Server Error", "The server failed to process the request."


def problem_response(status: int, title: str, detail: str) -> bytes:
    """A complete HTTP/1.1 answer with a problem+json body; the connection closes."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status,
                       "detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {title}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n"
            "\r\n")
    return head.encode("latin-1") + body


class DeficiencyServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with our settings; each worker calls `create_app(load_config(path))`."""

    def __init__(self, config_path: str | None, settings: dict[str, Any],
                 startup_ruleset: Ruleset | None = None) -> None:
        self._config_path = config_path
        self._settings = settings
        # Plain data (no engine state), validated by the master: a worker restarted
        # while the rule files are broken falls back to it instead of failing to boot.
        self._startup_ruleset = startup_ruleset
        self._generation = SharedGeneration()
        workers = int(settings.get("workers", 1))
        self.connection_shares = ConnectionShares(max(4, 2 * workers))
        self._commit_process: Any = None  # master only
        self._commit_dir: str | None = None
        # Read by the workers (set in the master before they are forked).
        self.commit_socket: str | None = None
        self.commit_url: str | None = None
        self.turns: Turns | None = None  # the worker's, once its app is built
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._settings.items():
            self.cfg.set(name, value)
        self.cfg.set("worker_class", "service.api.server.BalancedThreadWorker")
        self.cfg.set("preload_app", False)
        self.cfg.set("accesslog", None)  # the app writes structured access lines
        self.cfg.set("errorlog", "-")
        self.cfg.set("proc_name", "deficiency")
        # gunicorn's control socket defaults to one path per user: two servers collide.
        self.cfg.set("control_socket_disable", True)
        self.cfg.set("worker_exit", _worker_exit)
        self.cfg.set("child_exit", _child_exit)
        self.cfg.set("on_starting", lambda _arbiter: self.start_commit_process())
        self.cfg.set("on_exit", lambda _arbiter: self.stop_commit_process())

    def start_commit_process(self) -> None:
        """In the master, before the workers: start the audit commit process. Without it
        (it failed to start) every worker commits for itself."""
        from ..audit.commit_process import CommitProcess
        from ..config import load_config

        log = logging.getLogger("deficiency.api")
        try:
            audit = load_config(self._config_path).audit
            url = audit.url
            if sys.platform != "linux":  # no abstract socket namespace: a private directory
                self._commit_dir = tempfile.mkdtemp(prefix="deficiency-audit-")
            self._commit_process = CommitProcess(url, self._commit_dir, supervise=True,
                                                 timeout=audit.timeout)
        except Exception as exc:
            log.warning("audit commit process not started (%s); each worker commits "
                        "for itself", exc)
            self.stop_commit_process()
            return
        self.commit_socket, self.commit_url = self._commit_process.path, url

    def stop_commit_process(self) -> None:
        """In the master, after the workers have exited."""
        process, self._commit_process = self._commit_process, None
        self.commit_socket = self.commit_url = None
        if process is not None:
            process.stop()
        if self._commit_dir is not None:
            shutil.rmtree(self._commit_dir, ignore_errors=True)
            self._commit_dir = None

    def load(self) -> Any:
        """Runs in each worker after the fork."""
        _configure_worker_logging()
        _use_multiprocess_metrics()
        from ..config import load_config
        from .app import create_app

        app = create_app(load_config(self._config_path), generation=self._generation,
                         fallback_ruleset=self._startup_ruleset)
        svc = app.extensions.get("deficiency")
        # This worker's request threads take turns (BalancedThreadWorker.handle_request).
        self.turns = svc.turns if svc is not None else None
        if self.commit_socket is not None and svc is not None \
                and svc.config.audit.url == self.commit_url:
            from ..audit.commit_process import CommitClient, answer_timeout

            svc.audit.use_commit_process(CommitClient(
                self.commit_socket, timeout=answer_timeout(svc.config.audit.timeout)))
        return app


def gunicorn_settings(*, bind: str, workers: int, threads: int, timeout: int,
                      graceful_timeout: int, keepalive: int,
                      keepalive_requests: int) -> dict[str, Any]:
    return {
        "pre_request": _connection_recycler(keepalive_requests),
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "timeout": timeout,
        "graceful_timeout": graceful_timeout,
        "keepalive": keepalive,
        "loglevel": "info",
    }
