"""`deficiency serve`: granian (an HTTP server written in Rust) with its WSGI interface,
as it comes, run from Python.

- Workers are processes forked by granian's master; each builds its own app, engine
  and audit connections (`worker_app`). The master builds no engine state, and
  durable-rules state never crosses a fork.
- `server.threads` are granian's blocking threads per worker: they let the audit log's
  group committer put the records of concurrent requests into one transaction. Each
  worker commits its own records; the database orders the chain
  (`service.audit.store`).
- SIGTERM or SIGINT stops gracefully: workers stop accepting and finish their
  in-flight requests, killed after `server.graceful_timeout`.
- SIGHUP: granian starts new workers and stops the old ones, one at a time; each new
  worker examines the rules directory against the generation the workers share
  (created here, in the master, before the workers are forked).
- A worker that dies is replaced; a worker that dies again within seconds of being
  replaced stops the server (granian's crash-loop rule), for the supervisor to see.
- Prometheus metrics are aggregated over the workers (multiprocess mode); a starting
  worker drops the live gauges of workers that are gone.
- Requests granian refuses before the app sees them (malformed request line or
  headers, limits) get granian's own answer; docs/reliability.md lists them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from granian.constants import Interfaces
from granian.http import HTTP1Settings
from granian.server import Server

from ..config import split_bind
from ..logjson import JsonLogFormatter
from ..serving.generation import SharedGeneration
from .metrics import MULTIPROC_ENV

#: What a worker needs from the master: set before granian forks the workers.
_worker_args: tuple[str | None, SharedGeneration] | None = None


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


_METRICS_FILE = re.compile(r"_([0-9]+)\.db$")


def _forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that are gone (killed, or replaced)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    from prometheus_client import multiprocess

    pids = {int(m.group(1)) for name in os.listdir(directory)
            if (m := _METRICS_FILE.search(name))}
    for pid in pids - {os.getpid()}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:
            pass  # alive, someone else's


def worker_app() -> Any:
    """granian's target (a factory), called in each worker once it is forked."""
    if _worker_args is None:
        raise RuntimeError("worker_app runs only in the workers of `deficiency serve`")
    config_path, generation = _worker_args
    _configure_worker_logging()
    _forget_dead_workers()
    from ..config import load_config
    from .app import create_app

    return create_app(load_config(config_path), generation=generation)


def serve(config_path: str | None, *, bind: str, workers: int, threads: int,
          graceful_timeout: int, keepalive: int) -> None:
    """Run the server until it is stopped (SIGTERM, SIGINT)."""
    global _worker_args
    _worker_args = (config_path, SharedGeneration())
    if bind.startswith("unix:"):
        where: dict[str, Any] = {"uds": Path(bind.removeprefix("unix:"))}
    else:
        host, port = split_bind(bind)
        where = {"address": host, "port": port}
    Server(
        f"{__name__}:worker_app",
        factory=True,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        # An idle keep-alive connection is closed once `keepalive` seconds pass without
        # the next request's head (granian's header read timeout covers both).
        http1_settings=HTTP1Settings(keep_alive=keepalive > 0,
                                     header_read_timeout=(keepalive or 30) * 1000),
        respawn_failed_workers=True,
        workers_kill_timeout=graceful_timeout,
        log_access=False,  # the app writes structured access lines
        **where,
    ).serve()
