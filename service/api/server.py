"""`deficiency serve`: gunicorn as it comes (its gthread worker), run from Python.

- `preload_app` is off: each worker process builds its own app, engine and audit
  connections after the fork (durable-rules state must never be forked).
- Threads per worker let the audit log's group committer put the records of
  concurrent requests into one transaction; each worker commits its own records,
  and the database orders the chain (see `service.audit.store`).
- SIGTERM stops gracefully: workers finish their in-flight requests (up to
  `server.graceful_timeout`), then commit what is queued and close the store.
- A ruleset reload in one worker is followed by the others through the shared
  generation, created here in the master before the workers are forked.
- Prometheus metrics are aggregated over the workers (multiprocess mode).
- Requests gunicorn refuses before the app sees them (malformed request line or
  headers, limits) get gunicorn's own answer (docs/reliability.md lists them); its
  log line about them keeps the client's address, not what the client sent.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from ..logjson import JsonLogFormatter
from ..serving.generation import SharedGeneration

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


def _child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


class ServerLog(Logger):  # type: ignore[misc]
    """gunicorn's logger (its `logger_class` setting), except for requests gunicorn
    refused: what the client sent may hold an API key or borrower data, so the line
    keeps the address only."""

    REFUSED = "Invalid request from ip="

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith(self.REFUSED):
            address = msg[len(self.REFUSED):].partition(": ")[0]
            msg = f"refused a malformed request from {address} (content not logged)"
        super().warning(msg, *args, **kwargs)


class DeficiencyServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with our settings; each worker calls `create_app(load_config(path))`."""

    def __init__(self, config_path: str | None, settings: dict[str, Any]) -> None:
        self._config_path = config_path
        self._settings = settings
        self._generation = SharedGeneration()
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._settings.items():
            self.cfg.set(name, value)
        self.cfg.set("worker_class", "gthread")
        self.cfg.set("preload_app", False)
        self.cfg.set("accesslog", None)  # the app writes structured access lines
        self.cfg.set("errorlog", "-")
        self.cfg.set("logger_class", ServerLog)
        self.cfg.set("proc_name", "deficiency")
        # gunicorn's control socket defaults to one path per user: two servers collide.
        self.cfg.set("control_socket_disable", True)
        self.cfg.set("worker_exit", _worker_exit)
        self.cfg.set("child_exit", _child_exit)

    def load(self) -> Any:
        """Runs in each worker after the fork."""
        _configure_worker_logging()
        _use_multiprocess_metrics()
        from ..config import load_config
        from .app import create_app

        return create_app(load_config(self._config_path), generation=self._generation)


def gunicorn_settings(*, bind: str, workers: int, threads: int, timeout: int,
                      graceful_timeout: int, keepalive: int) -> dict[str, Any]:
    return {
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "timeout": timeout,
        "graceful_timeout": graceful_timeout,
        "keepalive": keepalive,
        "loglevel": "info",
    }
