"""`/v1/ruleset`: the active ruleset, and reloading it from the rules directory."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from ..serving.active_ruleset import RulesetRejected, problem_doc
from .handle import authorize, json_response, service
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
    """Check the rules directory and switch to it; 422 with every problem otherwise.
    The other workers follow (rulesets.py); the result is counted in /metrics."""
    principal = authorize("admin")
    svc = service()
    try:
        result = svc.rulesets.reload()
    except RulesetRejected as exc:
        active = svc.rulesets.info
        errors = [p for p in exc.problems if p.severity == "error"]
        raise Problem(
            422, "Invalid ruleset",
            f"The rules directory does not hold a valid ruleset ({len(errors)} "
            f"error{'s' if len(errors) != 1 else ''}); ruleset {active['name']} "
            f"{active['version']} stays active.",
            type_="invalid-ruleset",
            errors=[{"path": str(p.pos),
                     "message": p.message + (f" (hint: {p.hint})" if p.hint else "")
                     + ("" if p.severity == "error" else f" [{p.severity}]")}
                    for p in exc.problems],
            extra={"active": active, "rejected_sha256": exc.verdict.sha256,
                   "problems": [problem_doc(p) for p in exc.problems]},
        ) from None
    log.info("ruleset reload by %s: %s %s -> %s %s", principal.name,
             result.previous["version"], result.previous["sha256"][:12],
             result.current["version"], result.current["sha256"][:12])
    return json_response({
        "changed": result.changed,
        "ruleset": result.current,
        "previous": result.previous,
        "rules": result.rules,
    })
