"""The log: its tree size, the latest signed checkpoint and the verifier key to check it
with, and `verify` run on request — the chain, the tree and every kept checkpoint —
its progress streamed to the page as it goes (no script needed), stopped after
`VERIFY_SECONDS`, one at a time per worker."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, render_template, stream_with_context

from ..api.handle import service
from ..audit import AuditStore, StoreUnavailable
from ..audit.notes import Verifier
from ..audit.records import VerifyResult
from .session import needs

bp = Blueprint("log", __name__)
log = logging.getLogger("deficiency.console")

VERIFY_SECONDS = 60.0
#: A progress line at most this often (the walk reads 1,000 records a batch).
PROGRESS_EVERY = 0.5
#: One verification at a time in a worker: each may take a core for VERIFY_SECONDS.
_one_at_a_time = threading.Lock()


@bp.get("/log")
@needs("audit:read")
def index() -> Any:
    store = service().audit.store()
    size, root = store.tree_head()
    return render_template("console/log.html", size=size, root=root.hex(),
                           checkpoint=store.latest_checkpoint(), vkey=store.verifier_key,
                           seconds=int(VERIFY_SECONDS))


def _verify_in_thread(store: AuditStore, lines: queue.Queue[Any]) -> None:
    """Verify, putting ("progress", checked, of) now and then and ("done", result or
    error, seconds) at the end."""
    started = time.monotonic()
    shown = [started]
    result: VerifyResult | str = "the verification did not finish"

    def progress(checked: int, last_seq: int) -> bool:
        now = time.monotonic()
        if now - shown[0] >= PROGRESS_EVERY:
            shown[0] = now
            lines.put(("progress", checked, last_seq))
        return now - started < VERIFY_SECONDS

    try:
        vkey = store.verifier_key
        result = store.verify(verifier=Verifier(vkey) if vkey else None, progress=progress)
    except StoreUnavailable as exc:
        result = str(exc)
    except Exception:  # the page waits for an answer: it gets one
        log.exception("verifying the log from the console failed")
        result = "the verification failed unexpectedly (the server's log has the details)"
    finally:
        _one_at_a_time.release()
        lines.put(("done", result, time.monotonic() - started))


@bp.post("/log/verify")
@needs("audit:read")
def verify() -> Any:
    store = service().audit.store()
    if not _one_at_a_time.acquire(blocking=False):
        return render_template(
            "console/error.html", status=429, title="A verification is running",
            message="The log is being verified already (one verification at a time); try "
                    "again when it has finished."), 429
    lines: queue.Queue[Any] = queue.Queue()
    try:
        threading.Thread(target=_verify_in_thread, args=(store, lines), daemon=True,
                         name="console-verify").start()
    except BaseException:
        _one_at_a_time.release()
        raise

    # The page around the progress lines and the result, cut at its two markers.
    top, rest = render_template("console/verify.html",
                                seconds=int(VERIFY_SECONDS)).split("<!--progress-->")
    middle, bottom = rest.split("<!--result-->")

    def page() -> Iterator[str]:
        yield top
        while True:
            try:
                item = lines.get(timeout=VERIFY_SECONDS + 60)
            except queue.Empty:
                item = ("done", "the verification did not answer in time", VERIFY_SECONDS)
            if item[0] == "progress":
                yield f"<li>checked {item[1]:,} records (the log's last is record " \
                      f"{item[2]:,})…</li>\n"
                continue
            _, result, seconds = item
            yield middle
            yield render_template("console/verify_result.html", result=result,
                                  seconds=f"{seconds:.2f}", limit=int(VERIFY_SECONDS))
            yield bottom
            return

    return Response(stream_with_context(page()), mimetype="text/html")
