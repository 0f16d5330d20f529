"""Operational endpoints, open to all: liveness, readiness, metrics, the API document;
and the hidden `/v1/_floor` the HTTP benchmark measures the server's floor with."""

from __future__ import annotations

from flask import Blueprint, Response, request

from .app import service
from .decisions import json_response
from .openapi import openapi_document
from .problems import Problem

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive and answering."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready to decide: a ruleset is loaded and the audit log answers."""
    svc = service()
    reason = svc.audit.unavailable_reason()
    if reason is not None:
        raise Problem(503, "Not ready", reason, type_="not-ready", kind="not_ready",
                      headers={"Retry-After": "1"})
    return json_response({"status": "ready", "ruleset": svc.rulesets.info,
                          "audit": svc.audit.backend})


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = service().metrics.render()
    return Response(body, status=200, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return json_response(openapi_document(service().config))


@bp.post("/v1/_floor")
def floor() -> Response:
    """What the server costs without deciding: read the body, answer small JSON."""
    request.get_data(cache=False)
    return json_response({"status": "ok"})
