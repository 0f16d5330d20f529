"""Who is using the console: sign-in with an API key, the session it becomes, sign-out,
and the checks every console request passes.

A session is Flask's signed cookie holding the key's *name* and a keyed stamp of its
configured hash — never the key. Every request checks the name against the configured
keys (a removed or replaced key ends its sessions) and the time since the last request
against `console.session_idle_minutes`. Forms that post carry a CSRF token
(Flask-WTF). With no keys configured the console is open, as the API is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Flask,
    Request,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from ..api.auth import ANONYMOUS, MAX_KEY_CHARS, Principal
from ..api.handle import service
from ..audit import StoreUnavailable

csrf = CSRFProtect()
log = logging.getLogger("deficiency.console")

#: Every console page: no script at all, styles and images from the console only.
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
#: Why the sign-in page is shown, by the `ended` query parameter.
ENDED = {
    "idle": "Your session ended after {minutes} minutes without activity. Sign in again.",
    "age": "Your session reached its limit of {hours} hours since sign-in. Sign in again.",
    "key": "The key this session was signed in with is no longer configured. Sign in "
           "with a current key.",
    "out": "You are signed out.",
}
_OPEN_ENDPOINTS = frozenset({"console.sign_in", "console.static"})


class ConsoleSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, for the console's pages only: the JSON API reads
    no cookie, so its requests get Flask's null session and pay nothing for one."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.path.startswith("/console/"):
            return None
        return super().open_session(app, request)


def console_blueprint() -> Blueprint:
    bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                   static_folder="static")
    bp.before_request(_admit)
    bp.after_request(_secure_headers)
    bp.register_error_handler(CSRFError, _csrf_failed)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(StoreUnavailable, _store_unavailable)
    bp.register_error_handler(Exception, _unexpected)
    bp.add_url_rule("/", "home", lambda: redirect("/console/decisions"))
    bp.add_url_rule("/sign-in", "sign_in", _sign_in, methods=["GET", "POST"])
    bp.add_url_rule("/sign-out", "sign_out", _sign_out, methods=["GET", "POST"])
    # Any other path under /console/ is a page that does not exist: said as a page.
    bp.add_url_rule("/<path:unknown>", "unknown", _unknown, methods=["GET", "POST"])
    return bp


def user() -> Principal:
    """Who this console request acts as (set by `_admit`)."""
    principal: Principal = g.console_user
    return principal


def needs(scope: str) -> Callable[[Callable[..., ResponseReturnValue]],
                                  Callable[..., ResponseReturnValue]]:
    """A view that needs `scope`: a 403 page naming it otherwise."""
    def decorate(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            if scope not in user().scopes:
                return render_template(
                    "console/error.html", status=403, title="Not allowed",
                    message=f"The key {user().name!r} lacks the scope {scope!r} this page "
                            "needs. Sign in with a key that has it."), 403
            return view(*args, **kwargs)
        return checked
    return decorate


def _admit() -> ResponseReturnValue | None:
    """Who is asking: the session's key (or everyone, with no keys configured); a
    redirect to the sign-in page otherwise. Then the CSRF check of a post."""
    unavailable = current_app.config.get("CONSOLE_UNAVAILABLE")
    if unavailable:
        g.console_user = None
        return render_template("console/error.html", status=503, title="Console unavailable",
                               message=unavailable), 503
    keyring = service().keyring
    if keyring.open:
        g.console_user = ANONYMOUS
    else:
        principal, ended = _session_user()
        if principal is None:
            if request.endpoint not in _OPEN_ENDPOINTS:
                return _to_sign_in(ended)
        else:
            g.console_user = principal
            g.client = principal.name  # the access log names who read
    if request.method == "POST":
        csrf.protect()
    return None


def _session_user() -> tuple[Principal | None, str | None]:
    """The session's principal, or None and why the session ended (None: no session)."""
    name = session.get("key")
    if not isinstance(name, str):
        return None, None
    now = int(time.time())
    seen, since = session.get("seen"), session.get("since")
    if not isinstance(seen, int) or now - seen > current_app.config["CONSOLE_IDLE_SECONDS"]:
        session.clear()
        return None, "idle"
    if not isinstance(since, int) or now - since > current_app.config["CONSOLE_MAX_SECONDS"]:
        session.clear()
        return None, "age"
    named = service().keyring.named(name, current_app.secret_key)  # type: ignore[arg-type]
    if named is None or named[1] != session.get("stamp"):
        session.clear()
        return None, "key"
    if now != seen:
        session["seen"] = now
    return named[0], None


def _to_sign_in(ended: str | None) -> Response:
    query: dict[str, str] = {}
    if ended:
        query["ended"] = ended
    if request.method == "GET" and request.endpoint != "console.sign_out":
        query["next"] = request.full_path.rstrip("?")
    return redirect("/console/sign-in" + ("?" + urlencode(query) if query else ""))


def _safe_next(target: str | None) -> str:
    """Only a console page of this service: never another host or scheme."""
    if (not target or not target.startswith("/console/") or "//" in target
            or "\\" in target or any(ord(c) < 0x20 for c in target)):
        return "/console/decisions"
    return target


def _sign_in() -> ResponseReturnValue:
    keyring = service().keyring
    nxt = _safe_next(request.values.get("next"))
    if keyring.open:
        return redirect(nxt)
    error = None
    status = 200
    if request.method == "POST":
        key = request.form.get("api_key", "").strip()
        principal = keyring.match(key) if key and len(key) <= MAX_KEY_CHARS else None
        named = None if principal is None else keyring.named(
            principal.name, current_app.secret_key)  # type: ignore[arg-type]
        if named is not None:
            session.clear()
            session["key"], session["stamp"] = named[0].name, named[1]
            session["seen"] = session["since"] = int(time.time())
            return redirect(nxt)
        error = "api_key: that is not a valid API key." if key else "api_key: enter your API key."
        status = 401
    notice = ENDED.get(request.args.get("ended", ""), "").format(
        minutes=current_app.config["CONSOLE_IDLE_SECONDS"] // 60,
        hours=current_app.config["CONSOLE_MAX_SECONDS"] // 3600)
    return render_template("console/sign_in.html", next=nxt, error=error, notice=notice), status


def _sign_out() -> ResponseReturnValue:
    if request.method == "GET":  # a link, a reload: signing out takes the button
        return render_template("console/sign_out.html")
    session.clear()
    return redirect("/console/sign-in?ended=out")


def _unknown(unknown: str) -> ResponseReturnValue:
    return render_template("console/error.html", status=404, title="Not Found",
                           message="The console has no such page."), 404


def _secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")  # pages hold borrower data
    return response


def _csrf_failed(exc: CSRFError) -> ResponseReturnValue:
    return render_template(
        "console/error.html", status=400, title="Form not accepted",
        message="This form was not sent by this console session (its CSRF token is "
                f"missing or wrong: {exc.description}). Go back, reload the page and try "
                "again."), 400


def _store_unavailable(exc: StoreUnavailable) -> ResponseReturnValue:
    return render_template("console/error.html", status=503, title="Log unavailable",
                           message=f"{exc} Try again in a moment."), 503


def _unexpected(exc: Exception) -> ResponseReturnValue:
    log.error("unhandled %s in a console page", type(exc).__name__, exc_info=exc)
    return render_template("console/error.html", status=500, title="Something went wrong",
                           message="The page could not be made; the server's log has the "
                                   "details."), 500


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    code = exc.code or 500
    return render_template("console/error.html", status=code, title=exc.name,
                           message=exc.description or ""), code
