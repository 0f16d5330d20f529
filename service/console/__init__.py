"""The console (`/console/`): what the service knows, for people — examiners browsing
decisions and the log, policy authors reading rulesets and trying facts.

Server-rendered pages (Jinja2 templates, one CSS file, no script); every page that only
reads works with JavaScript off. `install(app, service, secret)` adds it to the API's
app: sessions (`session.py`), then one blueprint per part (decisions, rulesets,
playground, log), all under `/console/`.
"""

from __future__ import annotations

from flask import Flask

from .present import EXTENSION, Rulesets
from .session import ConsoleSessions, console_blueprint, csrf


def install(app: Flask, *, secret: bytes | str, idle_minutes: int, max_hours: int,
            secure_cookie: bool) -> None:
    """Register the console on `app`: its blueprints, the signed session cookie
    (HttpOnly, SameSite=Strict; Secure when `secure_cookie`) and CSRF protection for
    the console's forms (only theirs: the JSON API authenticates every request by its
    key and reads no cookie). `secret` as text is why there is no secret: every console
    page then answers 503 saying so."""
    from .decisions import bp as decisions_bp
    from .log import bp as log_bp
    from .playground import bp as playground_bp
    from .rulesets import bp as rulesets_bp

    if isinstance(secret, bytes):
        app.secret_key = secret
    app.config.update(
        CONSOLE_UNAVAILABLE=secret if isinstance(secret, str) else None,
        SESSION_COOKIE_NAME="deficiency_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookie,
        SESSION_COOKIE_PATH="/console",
        CONSOLE_IDLE_SECONDS=idle_minutes * 60,
        CONSOLE_MAX_SECONDS=max_hours * 3600,
        # CSRFProtect checks only what the console asks it to (its forms' posts).
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        WTF_CSRF_SSL_STRICT=secure_cookie,
    )
    app.session_interface = ConsoleSessions()
    csrf.init_app(app)
    bp = console_blueprint()
    for child in (decisions_bp, rulesets_bp, playground_bp, log_bp):
        bp.register_blueprint(child)
    app.register_blueprint(bp)
    app.extensions[EXTENSION] = Rulesets()
