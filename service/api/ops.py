"""Operational endpoints, open to all: liveness, readiness, metrics, the API document."""

from __future__ import annotations

import datetime
from typing import Any

from flask import Blueprint, Response

from ..serving.generation import REJECTED, Verdict
from .handle import json_response, service
from .openapi import openapi_document
from .problems import Problem

bp = Blueprint("ops", __name__)
_READY_PROBLEMS = 20  # problems listed by /readyz (all of them: POST /v1/ruleset/reload)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is alive and answering."""
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready to decide: a ruleset is loaded and the audit log answers.

    A rejected reload leaves the service ready (it decides with the ruleset it had):
    `ruleset_error` then says why the rule files are not the active ruleset."""
    svc = service()
    reason = svc.audit.unavailable_reason()
    if reason is not None:
        raise Problem(503, "Not ready", reason, type_="not-ready", kind="not_ready",
                      headers={"Retry-After": "1"})
    last = svc.rulesets.last_verdict()
    return json_response({"status": "ready", "ruleset": svc.rulesets.info,
                          "audit": svc.audit.backend,
                          "ruleset_error": _ruleset_error(last)})


def _ruleset_error(last: Verdict | None) -> dict[str, Any] | None:
    if last is None or last.result != REJECTED:
        return None
    return {
        "reason": last.reason,
        "rejected_sha256": last.sha256,
        "trigger": last.trigger,
        "at": datetime.datetime.fromtimestamp(last.at, datetime.UTC).isoformat(
            timespec="seconds").replace("+00:00", "Z"),
        "problems": [f"{d['file']}:{d['line']}:{d['column']}: {d['severity']}: {d['message']}"
                     for d in last.problems[:_READY_PROBLEMS]],
        "problem_count": len(last.problems),
    }


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = service().metrics.render()
    return Response(body, status=200, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return json_response(openapi_document(service().config))
