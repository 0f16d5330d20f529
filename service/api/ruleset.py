"""`/v1/ruleset`: the active ruleset, and reloading it from the rules directory."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from ..policy.loader import PolicyError
from .app import authorize, service
from .decisions import json_response
from .problems import Problem

bp = Blueprint("ruleset", __name__)
log = logging.getLogger("deficiency.api")


@bp.get("/v1/ruleset")
def get_ruleset() -> Response:
    authorize(None)
    svc = service()
    with svc.rulesets.use() as decider:
        rs = decider.rs
        doc = {
            **decider.ruleset_info,
            "stages": list(rs.stages),
            "rules": [
                {"id": r.id, "stage": r.stage, "priority": r.priority,
                 "description": r.description, "basis": r.basis}
                for r in rs.rules
            ],
        }
    return json_response(doc)


@bp.post("/v1/ruleset/reload")
def reload_ruleset() -> Response:
    principal = authorize("admin")
    svc = service()
    try:
        result = svc.rulesets.reload()
    except PolicyError as exc:
        svc.metrics.reloads.labels("invalid").inc()
        active = svc.rulesets.info
        raise Problem(
            422, "Invalid ruleset",
            f"The rules directory does not hold a valid ruleset ({len(exc.problems)} "
            f"problem{'s' if len(exc.problems) != 1 else ''}); ruleset {active['name']} "
            f"{active['version']} stays active.",
            type_="invalid-ruleset",
            errors=[{"path": str(p.pos),
                     "message": p.message + (f" (hint: {p.hint})" if p.hint else "")
                     + ("" if p.severity == "error" else f" [{p.severity}]")}
                    for p in exc.problems],
            extra={"active": active},
        ) from None
    svc.metrics.reloads.labels("changed" if result.changed else "unchanged").inc()
    log.info("ruleset reload by %s: %s %s -> %s %s", principal.name,
             result.previous["version"], result.previous["sha256"][:12],
             result.current["version"], result.current["sha256"][:12])
    return json_response({
        "changed": result.changed,
        "ruleset": result.current,
        "previous": result.previous,
        "rules": result.rules,
    })
