"""The Flask application factory: `create_app(config)`.

Everything a request needs — the active ruleset, the audit log link, the
keyring, the metrics registry, the access log — is built here and kept on the
app (`app.extensions["deficiency"]`), never in module globals, so tests build
as many independent apps as they like and each server worker builds its own
(durable-rules state must not cross a fork).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TextIO

from flask import Flask, Response, g, request
from werkzeug.routing import BaseConverter

from ..audit import AuditStore, StoreUnavailable, open_store
from ..audit.notes import NoteError
from ..config import AuditConfig, Config, load_config
from ..serving.active_ruleset import ActiveRuleset
from ..serving.audit_link import AuditLink
from ..serving.generation import Generation, LocalGeneration
from ..serving.session_key import session_secret
from ..serving.signing import log_signer
from . import problems
from .access_log import AccessLog
from .auth import Keyring
from .handle import EXTENSION, Service
from .metrics import Metrics

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
log = logging.getLogger("deficiency.api")


class UlidConverter(BaseConverter):
    """A decision id: 26 Crockford base32 characters (so /v1/decisions/batch is not one)."""

    regex = r"[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}"


def create_app(
    config: Config | None = None,
    *,
    generation: Generation | None = None,
    access_log_stream: TextIO | None = None,
    watch_interval: float | None = None,
) -> Flask:
    """Build the app. Raises PolicyError when the rules directory is rejected (any error
    `deficiency check` reports) and `generation` holds no ruleset accepted before,
    and ValueError for an unusable audit URL; an unreachable store (or an unusable
    signing key) is retried later. Without a usable console session key the console
    answers 503 saying why, and the API works on.

    `watch_interval`: seconds between looks at the rules directory for changes (0: do
    not watch); by default the generation's (the workers of `deficiency serve` watch,
    an app built on its own does not)."""
    from .decisions import bp as decisions_bp
    from .log import bp as log_bp
    from .ops import bp as ops_bp
    from .ruleset import bp as ruleset_bp
    from .simulations import bp as simulations_bp

    config = config or load_config()
    try:
        console_secret: bytes | str = session_secret(config)
    except ValueError as exc:  # the API works on; the console says why it cannot
        log.error("console unavailable: %s", exc)
        console_secret = ("The console has no usable session key (console.session_key); "
                          "the server's log says why.")
    app = Flask("service.api")
    # One byte over the limit: werkzeug stops a streamed (chunked) body there without
    # an error, so a body that reaches limit + 1 bytes is known to be too large.
    app.config["MAX_CONTENT_LENGTH"] = config.limits.max_body_bytes + 1
    app.url_map.converters["ulid"] = UlidConverter
    app.url_map.strict_slashes = True

    generation = generation or LocalGeneration()
    metrics = Metrics()
    rulesets = ActiveRuleset(
        config.rules.dir, generation, observer=metrics,
        watch_interval=generation.watch_interval if watch_interval is None else watch_interval)
    try:
        audit = AuditLink(config.audit.url, opener=functools.partial(_open_store, config.audit))
    except BaseException:
        rulesets.close()
        raise
    svc = Service(
        config=config,
        rulesets=rulesets,
        audit=audit,
        keyring=Keyring(config.auth.keys),
        metrics=metrics,
        access_log=AccessLog(access_log_stream) if config.server.access_log else None,
    )
    app.extensions[EXTENSION] = svc

    app.register_blueprint(decisions_bp)
    app.register_blueprint(log_bp)
    app.register_blueprint(ruleset_bp)
    app.register_blueprint(simulations_bp)
    app.register_blueprint(ops_bp)
    from ..console import install as install_console

    install_console(app, secret=console_secret,
                    idle_minutes=config.console.session_idle_minutes,
                    max_hours=config.console.session_max_hours,
                    secure_cookie=config.console.secure_cookie)
    problems.register(app, lambda p: svc.metrics.errors.labels(p.kind).inc())

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        _observe(svc, response)
        return response

    return app


def _open_store(audit: AuditConfig, url: str) -> AuditStore:
    """The audit store, signing with the configured key (created on first use when none
    is configured). An unusable key makes the store unavailable: no decision is
    answered without its receipt."""
    try:
        signer = log_signer(audit)
    except NoteError as exc:
        raise StoreUnavailable(f"audit store unavailable: {exc}") from None
    return open_store(url, busy_timeout=audit.timeout, signer=signer,
                      checkpoint_file=audit.checkpoints_path)


def _observe(svc: Service, response: Response) -> None:
    # Plain objects rather than the context-local proxies: this runs on every request.
    req = request._get_current_object()  # type: ignore[attr-defined]
    ctx = g._get_current_object()  # type: ignore[attr-defined]
    started: float | None = getattr(ctx, "started", None)
    duration = time.perf_counter() - started if started is not None else 0.0
    rule = req.url_rule.rule if req.url_rule is not None else "<unmatched>"
    status = response.status_code
    # Bounded label values: an arbitrary method must not mint new time series.
    method = req.method if req.method in _METHODS else "OTHER"
    svc.metrics.observe_request(method, rule, status, duration)
    log = svc.access_log
    if log is not None:
        fields = dict(
            method=req.method,
            path=req.path,
            status=status,
            duration_ms=duration * 1000,
            remote=req.remote_addr,
            client=getattr(ctx, "client", None),
            decision_id=getattr(ctx, "decision_id", None),
            decisions=getattr(ctx, "decisions", None),
            problem=getattr(ctx, "problem_kind", None),
        )
        # Written once the answer is sent: the write lets go of the interpreter lock,
        # and under load getting it back can cost the request milliseconds.
        response.call_on_close(lambda: log.write(**fields))
