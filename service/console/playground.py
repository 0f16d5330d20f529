"""The playground: facts in (a form with every SPEC §2 field, or the facts as JSON),
decided against the active ruleset **without recording**, shown with the same decision
view as a recorded one, why-not included. Needs the scope `decide`."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, abort, render_template, request

from ..api.handle import service
from ..facts import FIELDS, FactsInvalid, Field, FieldError, to_json_facts, validate_facts
from ..strictjson import parse_json
from .present import DecisionView, decision_view
from .session import needs, user

bp = Blueprint("playground", __name__)

_INTEGER = re.compile(r"-?[0-9]{1,11}", re.ASCII)
#: The form: one input per facts field, in SPEC order, grouped by section.
SECTIONS = ("", "loan", "collateral", "disposition", "negotiation", "borrower")


def form_fields() -> list[tuple[str, list[Field]]]:
    groups: dict[str, list[Field]] = {s: [] for s in SECTIONS}
    for f in FIELDS:
        groups[f.path.split(".")[0] if "." in f.path else ""].append(f)
    return [(section or "decision", fields) for section, fields in groups.items()]


def facts_from_form(form: Any) -> dict[str, Any]:
    """The facts document the filled-in fields spell (an empty field is left out); the
    values stay text where JSON would carry text, so validation judges them as the API
    does."""
    doc: dict[str, Any] = {}
    for f in FIELDS:
        text = form.get(f.path, "").strip()
        if not text:
            continue
        value: Any = text
        if f.kind == "bool":
            value = {"true": True, "false": False}.get(text, text)
        elif f.kind == "int" and _INTEGER.fullmatch(text):
            value = int(text)  # else the text, which validation refuses by name
        node = doc
        *parents, leaf = f.path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return doc


def _flat(doc: Any, prefix: str = "") -> dict[str, str]:
    """Form values from a facts document (to fill the form again)."""
    values: dict[str, str] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                values.update(_flat(value, path))
            elif isinstance(value, bool):
                values[path] = "true" if value else "false"
            elif value is not None:
                values[path] = str(value)
    return values


def _from_log(decision_id: str) -> tuple[dict[str, str], str]:
    """The form filled with a recorded decision's facts (`?from=ID`: try a variation of
    it), when the key may read the log."""
    if "audit:read" not in user().scopes or len(decision_id) != 26:
        abort(403 if len(decision_id) == 26 else 404,
              "Filling the playground from the log needs the scope 'audit:read'."
              if len(decision_id) == 26 else "No such decision.")
    record = service().audit.store().get(decision_id.upper())
    if record is None:
        abort(404, f"No decision {decision_id} is recorded.")
    return _flat(record["facts"]), json.dumps(record["facts"], indent=2)


@bp.route("/playground", methods=["GET", "POST"])
@needs("decide")
def playground() -> Any:
    mode = request.form.get("mode", "form") if request.method == "POST" else "form"
    values: dict[str, str] = {}
    facts_text = ""
    errors: list[FieldError] = []
    view: DecisionView | None = None
    status = 200
    if request.method == "GET" and request.args.get("from"):
        values, facts_text = _from_log(request.args["from"])
    if request.method == "POST":
        svc = service()
        try:
            if mode == "json":
                facts_text = request.form.get("facts_json", "")
                doc = parse_json(facts_text, max_depth=svc.config.limits.max_json_depth,
                                 max_bytes=svc.config.limits.max_body_bytes)
                values = _flat(doc)
            else:
                values = {f.path: request.form.get(f.path, "") for f in FIELDS}
                doc = facts_from_form(request.form)
                facts_text = json.dumps(doc, indent=2)
            facts = validate_facts(doc)
        except FactsInvalid as exc:
            errors = exc.errors
            status = 400
        else:
            with svc.rulesets.use() as decider:
                decision = decider.decide_facts(facts)
                view = decision_view(decision, to_json_facts(facts), decider.rs)
            facts_text = json.dumps(to_json_facts(facts), indent=2)
    return render_template("console/playground.html", sections=form_fields(), values=values,
                           facts_text=facts_text, errors=errors, view=view, mode=mode), status
