"""What the blueprints share: the app's service handle, authorization of the current
request, and JSON answers. A module of its own (as Flask's tutorial keeps `get_db` in
`db.py`), so blueprints never import the application factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from flask import Response, current_app, g, request

from ..config import Config
from ..serving.active_ruleset import ActiveRuleset
from ..serving.audit_link import AuditLink
from .access_log import AccessLog
from .auth import Keyring, Principal, require_scope
from .metrics import Metrics

EXTENSION = "deficiency"
JSON = "application/json"


@dataclass
class Service:
    """Everything a request needs, built once per app by `create_app`."""

    config: Config
    rulesets: ActiveRuleset
    audit: AuditLink
    keyring: Keyring
    metrics: Metrics
    access_log: AccessLog | None

    def close(self) -> None:
        """Commit what is queued, close the store, free the engine ruleset."""
        self.audit.close()
        self.rulesets.close()


def service() -> Service:
    svc: Service = current_app.extensions[EXTENSION]
    return svc


def authorize(scope: str | None) -> Principal:
    """Authenticate the request (401) and require `scope` (403); None: any valid key."""
    svc = service()
    principal = svc.keyring.authenticate(request.headers.get("Authorization"),
                                         request.headers.get("X-API-Key"))
    g.client = principal.name
    require_scope(principal, scope)
    return principal


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson: the decision document is the largest thing encoded per request.
    resp = Response(orjson.dumps(doc), status=status, mimetype=JSON)
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp
