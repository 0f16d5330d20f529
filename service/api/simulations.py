"""`/v1/simulations`: decide a facts document without recording it, and say why each
rule that did not match did not.

Request flow as `POST /v1/decisions` (authenticate → media type → size → strict JSON →
facts validation, with the same problems), then the active ruleset decides and
`why_not` explains against that same ruleset. Nothing is written to the audit log:
the answer has no receipt, and its decision_id is never readable at
`/v1/decisions/{id}`.
"""

from __future__ import annotations

from flask import Blueprint, Response

from ..engine.whynot import why_not
from .decisions import read_facts
from .handle import authorize, json_response, service

bp = Blueprint("simulations", __name__)


@bp.post("/v1/simulations")
def post_simulation() -> Response:
    authorize("decide")
    svc = service()
    _, facts = read_facts(svc)
    with svc.rulesets.use() as decider:
        decision = decider.decide_facts(facts)
        entries = why_not(decider.rs, facts)
    return json_response({"decision": decision, "why_not": entries})
