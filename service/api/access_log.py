"""One JSON line per request: who asked what, how it went, how long it took.

Never the facts (borrower data) and never a key: the client is named by the
configured key name, the path is logged without its query string (which may
carry a loan id).
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from typing import Any, TextIO


class AccessLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(
        self,
        *,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        remote: str | None,
        client: str | None,
        decision_id: str | None,
        decisions: int | None,
        problem: str | None,
    ) -> None:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "event": "access",
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 3),
            "remote": remote,
        }
        if client is not None:
            entry["client"] = client
        if decision_id is not None:
            entry["decision_id"] = decision_id
        if decisions is not None:
            entry["decisions"] = decisions
        if problem is not None:
            entry["problem"] = problem
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line)
            stream.flush()
