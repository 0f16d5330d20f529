"""The log: its tree size, the latest signed checkpoint and the verifier key to check it
with, and `verify` run on request — the chain, the tree and every kept checkpoint —
its progress streamed to the page as it goes (no script needed), stopped after
`VERIFY_SECONDS`."""

from __future__ import annotations

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

VERIFY_SECONDS = 60.0
#: A progress line at most this often (the walk reads 1,000 records a batch).
PROGRESS_EVERY = 0.5


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

    def progress(checked: int, last_seq: int) -> bool:
        now = time.monotonic()
        if now - shown[0] >= PROGRESS_EVERY:
            shown[0] = now
            lines.put(("progress", checked, last_seq))
        return now - started < VERIFY_SECONDS

    try:
        vkey = store.verifier_key
        result: VerifyResult | str = store.verify(
            verifier=Verifier(vkey) if vkey else None, progress=progress)
    except StoreUnavailable as exc:
        result = str(exc)
    lines.put(("done", result, time.monotonic() - started))


@bp.post("/log/verify")
@needs("audit:read")
def verify() -> Any:
    store = service().audit.store()
    lines: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_verify_in_thread, args=(store, lines), daemon=True,
                     name="console-verify").start()

    def page() -> Iterator[str]:
        yield render_template("console/verify_head.html", seconds=int(VERIFY_SECONDS))
        while True:
            item = lines.get()
            if item[0] == "progress":
                yield f"<li>checked {item[1]:,} of {item[2]:,} records…</li>\n"
                continue
            _, result, seconds = item
            yield render_template("console/verify_tail.html", result=result,
                                  seconds=f"{seconds:.2f}", limit=int(VERIFY_SECONDS))
            return

    return Response(stream_with_context(page()), mimetype="text/html")
