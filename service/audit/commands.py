"""`deficiency audit verify` and `deficiency audit show ID`.

Each returns the process exit code: 0 fine, 1 the answer is bad news (tampered,
not found), 2 the question could not be answered (store unreachable, bad URL).
Answers (OK / TAMPERED / the record) go to `out`, failures as one line to `err`
(default: stderr), never a traceback. Streams default at call time, not import
time, so redirected or captured sys.stdout/sys.stderr are honoured.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from service.audit.engine import normalise_url
from service.audit.store import AuditStore, StoreUnavailable, open_store

EXIT_OK = 0
EXIT_BAD = 1
EXIT_ERROR = 2


def verify_command(url: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout

    def run(store: AuditStore) -> int:
        result = store.verify()
        if result.ok:
            print(f"OK: {result.checked} records, chain intact", file=out)
            return EXIT_OK
        where = ("log" if result.first_bad_seq is None
                 else f"record seq={result.first_bad_seq}")
        if result.first_bad_decision_id is not None:
            where += f" decision_id={result.first_bad_decision_id}"
        print(f"TAMPERED: {where} : {result.reason}", file=out)
        return EXIT_BAD

    return _with_store(url, err or sys.stderr, run)


def show_command(url: str, decision_id: str, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr

    def run(store: AuditStore) -> int:
        record = store.get(decision_id)
        if record is None:
            print(f"not found: {decision_id}", file=err)
            return EXIT_BAD
        print(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False), file=out)
        return EXIT_OK

    return _with_store(url, err, run)


def _with_store(url: str, err: TextIO, run: Callable[[AuditStore], int]) -> int:
    try:
        _require_existing_sqlite_file(url)
        store = open_store(url)
    except (ValueError, StoreUnavailable) as exc:
        print(f"error: {_one_line(exc)}", file=err)
        return EXIT_ERROR
    try:
        return run(store)
    except StoreUnavailable as exc:
        print(f"error: {_one_line(exc)}", file=err)
        return EXIT_ERROR
    except Exception as exc:  # an auditor's tool answers in one line, whatever happened
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=err)
        return EXIT_ERROR
    finally:
        store.close()


def _require_existing_sqlite_file(url: str) -> None:
    # Opening creates the file; verifying a mistyped path must not report an empty,
    # freshly created log as "OK: 0 records".
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database).expanduser()
        if not path.is_file():
            raise ValueError(f"no audit log at {path}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
