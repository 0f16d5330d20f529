"""What the app costs per request without the HTTP server: the WSGI app called in-process.

    .venv/bin/python bench/app.py [--requests 3000] [--rounds 3]

The same app `deficiency serve` runs (metrics in multiprocess mode, access log
written to /dev/null), called directly with a prepared WSGI environ: no HTTP server,
no sockets, no client. One thread, so caches stay hot. It prints the CPU time per
request (best of `--rounds`) of:

- `decision, no audit`:      POST /v1/decisions with the audit hand-off replaced by
                             nothing (validation, decision, record building, answer);
- `decision, record only`:   the same, building and encoding the audit record
                             (`prepare`) but not committing it;
- `decision`:                the full route, committing in-process (one record per
                             transaction, SQLite, fsync).

Read with `bench/engine.py` (the decision path alone) and `bench/http.py` (the same
app behind a server, under load, where commits are grouped).
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # see bench/http.py: this directory must not shadow the stdlib

import argparse
import importlib.util
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _seed_facts() -> dict[str, Any]:
    """The first facts document bench/http.py posts (loaded by path: as a module named
    `http` it would shadow the standard library)."""
    spec = importlib.util.spec_from_file_location("bench_http", ROOT / "bench" / "http.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    facts: dict[str, Any] = module.SEED_FACTS[0]
    return facts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="deficiency-bench-app-") as tmp:
        # As in a worker of `deficiency serve`: metrics are shared-file values.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
        from prometheus_client import values

        values.ValueClass = values.MultiProcessValue()

        from werkzeug.test import EnvironBuilder

        from service.api.app import create_app
        from service.audit.records import prepare
        from service.config import load_config

        os.environ["DEFICIENCY_AUDIT_URL"] = f"sqlite:///{tmp}/audit.db"
        os.environ["DEFICIENCY_RULES_DIR"] = str(ROOT / "rules")
        with open(os.devnull, "w") as devnull:
            app = create_app(load_config(None), access_log_stream=devnull)
            svc = app.extensions["deficiency"]
            body = json.dumps(_seed_facts()).encode()

            def caller(path: str) -> Callable[[], str]:
                environ = EnvironBuilder(path=path, method="POST", data=body,
                                         content_type="application/json").get_environ()

                def call() -> str:
                    env = dict(environ)
                    env["wsgi.input"] = io.BytesIO(body)
                    status: list[str] = []
                    result = app(env, lambda s, h, e=None: status.append(s))
                    b"".join(result)
                    getattr(result, "close", lambda: None)()
                    return status[0]
                return call

            def per_request(path: str, n: int) -> float:
                call = caller(path)
                first = call()
                if not first.startswith("20"):
                    raise SystemExit(f"{path} answered {first}")
                for _ in range(min(300, n)):
                    call()
                started = time.process_time()
                for _ in range(n):
                    call()
                return (time.process_time() - started) / n * 1e6

            submit = svc.audit.submit
            best: dict[str, float] = {}

            def measure(name: str, path: str, n: int, hand_off: Any = None) -> None:
                svc.audit.submit = hand_off or submit
                try:
                    value = per_request(path, n)
                finally:
                    svc.audit.submit = submit
                best[name] = min(best.get(name, float("inf")), value)

            for _ in range(args.rounds):
                measure("decision, no audit", "/v1/decisions", args.requests, lambda r: None)
                measure("decision, record only", "/v1/decisions", args.requests, prepare)
                # Each commit waits for an fsync: fewer requests for the same accuracy.
                measure("decision", "/v1/decisions", max(1, args.requests // 2))
            svc.close()

    unit = best["decision, no audit"]
    print(f"in-process WSGI calls, CPU µs per request (best of {args.rounds} rounds)")
    for name, value in best.items():
        print(f"  {name:<24} {value:8.1f}   {value / unit:5.2f} × no audit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
