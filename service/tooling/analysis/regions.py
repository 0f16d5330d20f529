"""Regions of the facts a finding holds in: as a concrete, validated fact set (for the
reference evaluator to confirm), as text and JSON for the report, merged when they
differ in one enum path only."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from ... import facts as facts_mod
from ...engine.resolver import json_value
from .domain import BALANCE, PROCEEDS, Domain

_REQUIRED_DEFAULTS = {
    "loan.id": "CHECK-1", BALANCE: Decimal("10000.00"), PROCEEDS: Decimal("8000.00"),
    "disposition.date": datetime.date(2025, 6, 30),
}
_KIND_FOR_LOAN = {"auto": "vehicle", "mortgage": "dwelling", "other_secured": "other"}


def concretize(domain: Domain, sigma: dict) -> tuple[dict, dict] | None:
    """A valid JSON fact set in the region (unassigned paths: defaults), validated."""
    values: dict[str, Any] = {}
    for path in facts_mod.FACT_REQUIRED:
        if path in sigma:
            continue
        var = domain.vars[path]
        if path in _REQUIRED_DEFAULTS:
            values[path] = _REQUIRED_DEFAULTS[path]
        elif path == "collateral.kind":
            values[path] = _KIND_FOR_LOAN.get(sigma.get("loan.type", "auto"), "other")
        elif var.finite:
            values[path] = var.other if var.other is not None else var.reps[0]
    for path, (cond_path, cond_value) in domain.required_when.items():
        if path not in sigma and sigma.get(cond_path) == cond_value:
            values[path] = Decimal("0.00")
    for path, v in sigma.items():
        if path in domain.fixed or v is None or domain.path_class(path) != "fact":
            continue
        values[path] = v
    if "as_of" not in values:
        sale = values.get("disposition.date", _REQUIRED_DEFAULTS["disposition.date"])
        values["as_of"] = sale + datetime.timedelta(days=30)
    raw: dict = {}
    for path in facts_mod.FACT_FIELDS:
        if path not in values:
            continue
        v = values[path]
        parts = path.split(".")
        target = raw
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        if isinstance(v, Decimal):
            v = f"{v:.2f}"
        elif isinstance(v, datetime.date):
            v = v.isoformat()
        target[parts[-1]] = v
    try:
        facts = facts_mod.validate_facts(raw)
    except facts_mod.FactsInvalid:
        return None
    return raw, facts


def region_of(domain: Domain, sigma: dict) -> dict:
    conditions: dict[str, Any] = {}
    example: dict[str, Any] = {}
    for path in facts_mod.FACT_FIELDS:
        if path not in sigma or path in domain.fixed:
            continue
        v = sigma[path]
        var = domain.vars[path]
        if var.finite:
            conditions[path] = [v]
        else:
            example[path] = v
    amounts = domain.compute_amounts(sigma)
    if not isinstance(amounts, str):
        example["amounts.deficiency"] = amounts["amounts.deficiency"]
    return {"conditions": conditions, "example": example}


def render_value(domain: Domain, path: str, v: Any) -> str:
    var = domain.vars.get(path)
    if v is None:
        return "absent"
    if var is not None and var.other is not None and v == var.other:
        return f"{v} (or any value no rule names)"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(json_value(v))


def region_text(domain: Domain, region: dict) -> str:
    parts = []
    for path, values in region["conditions"].items():
        if len(values) == 1:
            v = values[0]
            parts.append(f"{path} absent" if v is None else
                         f"{path}={render_value(domain, path, v)}")
        else:
            shown = ", ".join(render_value(domain, path, v) for v in values)
            parts.append(f"{path} in {{{shown}}}")
    text = ", ".join(parts) or "any facts"
    if region["example"]:
        nums = ", ".join(f"{p}={render_value(domain, p, v)}"
                         for p, v in region["example"].items())
        text += f"; e.g. {nums}"
    return text


def region_json(domain: Domain, region: dict) -> dict:
    conditions = {}
    unnamed = {}
    for path, values in region["conditions"].items():
        vals = [json_value(v) for v in values]
        conditions[path] = vals[0] if len(vals) == 1 else vals
        var = domain.vars[path]
        if var.other is not None and var.other in values:
            unnamed[path] = var.other
    return {"conditions": conditions,
            "example_values": {p: json_value(v) for p, v in region["example"].items()},
            "unnamed_values": unnamed, "text": region_text(domain, region)}


def merge_regions(domain: Domain, regions: list[dict]) -> list[dict]:
    """Regions differing only in one enum path's value become one region with a set of
    values; a path whose values cover all of its representatives is dropped."""
    regions = [dict(r, index=i) for i, r in enumerate(regions)]
    changed = True
    while changed:
        changed = False
        paths = dict.fromkeys(p for r in regions for p in r["conditions"])
        for path in paths:
            groups: dict[tuple, list[dict]] = {}
            rest = []
            for r in regions:
                cond = r["conditions"]
                if path not in cond:
                    rest.append(r)
                    continue
                key = tuple((p, tuple(map(repr, v))) for p, v in cond.items() if p != path)
                groups.setdefault(key, []).append(r)
            merged = []
            for group in groups.values():
                first = group[0]
                if len(group) == 1:
                    merged.append(first)
                    continue
                changed = True
                values: list = []
                for r in group:
                    values += [v for v in r["conditions"][path] if v not in values]
                conditions = dict(first["conditions"])
                reps = domain.vars[path].reps
                if all(v in values for v in reps):
                    del conditions[path]
                else:
                    conditions[path] = sorted(values, key=reps.index)
                merged.append({"conditions": conditions, "example": first["example"],
                               "index": min(r["index"] for r in group)})
            regions = sorted(merged + rest, key=lambda r: r["index"])
    return [{"conditions": r["conditions"], "example": r["example"]} for r in regions]
