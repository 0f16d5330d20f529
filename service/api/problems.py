"""Errors at the HTTP edge: every 4xx/5xx is `application/problem+json` (RFC 9457).

Handlers raise :class:`Problem`; werkzeug's own HTTP errors (404, 405, 413 …)
and unexpected exceptions are turned into problem documents by the handlers
:func:`register` installs. A 500 never carries internals: the traceback goes to
the server log, the client gets a generic detail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from ..facts import FieldError

PROBLEM_JSON = "application/problem+json"
#: Problem types specific to this service; generic HTTP errors use "about:blank".
TYPE_PREFIX = "urn:deficiency:problem:"

log = logging.getLogger("deficiency.api")


class Problem(Exception):
    """An HTTP error answer. `kind` labels the errors metric (defaults to the type)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type_: str | None = None,
        errors: Iterable[FieldError | Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        kind: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = TYPE_PREFIX + type_ if type_ else "about:blank"
        self.errors = [_error(e) for e in errors] if errors is not None else None
        self.headers = dict(headers or {})
        self.kind = kind or (type_.replace("-", "_") if type_ else f"http_{status}")
        self.extra = dict(extra or {})

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        if self.errors is not None:
            doc["errors"] = self.errors
        doc.update(self.extra)
        return doc

    def response(self, instance: str | None = None) -> Response:
        resp = Response(
            json.dumps(self.body(instance), ensure_ascii=False),
            status=self.status,
            mimetype=PROBLEM_JSON,
        )
        for name, value in self.headers.items():
            resp.headers[name] = value
        return resp


def _error(e: FieldError | Mapping[str, str]) -> dict[str, str]:
    if isinstance(e, FieldError):
        return {"path": e.path, "message": e.message}
    return {"path": str(e["path"]), "message": str(e["message"])}


# ------------------------------------------------------------------ common problems


def invalid_json(errors: list[FieldError]) -> Problem:
    return Problem(400, "Malformed JSON", "The request body is not an acceptable JSON document.",
                   type_="malformed-json", errors=errors)


def invalid_facts(errors: list[FieldError], detail: str | None = None) -> Problem:
    n = len(errors)
    return Problem(
        422, "Invalid facts",
        detail or f"The facts have {n} invalid field{'s' if n != 1 else ''}.",
        type_="invalid-facts", errors=errors,
    )


def invalid_request(errors: list[FieldError], detail: str) -> Problem:
    return Problem(400, "Invalid request", detail, type_="invalid-request", errors=errors)


STORE_UNAVAILABLE = (
    "The audit log cannot be reached, so no decision is answered. Retry later with the same "
    "Idempotency-Key: if the log failed while committing, the decision may have been "
    "recorded, and the retry returns it instead of making a second one.")


def store_unavailable(detail: str = STORE_UNAVAILABLE) -> Problem:
    return Problem(503, "Audit log unavailable", detail, type_="store-unavailable",
                   headers={"Retry-After": "1"})


# ------------------------------------------------------------------ handlers

_HTTP_KINDS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 411: "length_required",
    413: "too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    431: "headers_too_large",
}


def from_http_exception(exc: HTTPException) -> Problem:
    status = exc.code or 500
    title = exc.name or "Error"
    detail = {
        404: "No such resource.",
        405: "This method is not allowed on this resource.",
        413: "The request body is too large.",
    }.get(status, exc.description or title)
    headers = {k: v for k, v in exc.get_headers() if k.lower() not in ("content-type",)}
    kind = _HTTP_KINDS.get(status, f"http_{status}")
    if status == 413:
        return Problem(413, "Content too large", detail, type_="too-large", headers=headers,
                       kind="too_large")
    return Problem(status, title, detail, headers=headers, kind=kind)


def register(app: Flask, on_problem: Any) -> None:
    """Install the problem+json handlers; `on_problem(problem)` counts each one."""

    def answer(problem: Problem) -> Response:
        g.problem_kind = problem.kind
        try:
            on_problem(problem)
        except Exception:  # counting must not turn a 4xx into a 500
            log.exception("counting a problem failed")
        return problem.response()

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return answer(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return answer(from_http_exception(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The client learns nothing about internals; the log gets the traceback.
        log.error("unhandled %s in request", type(exc).__name__, exc_info=exc)
        return answer(Problem(500, "Internal Server Error",
                              "The server failed to process the request.",
                              kind="internal"))
