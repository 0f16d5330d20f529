"""Schemathesis hooks for test_openapi_contract.py: they keep generated requests within
the two rules of /openapi.json that JSON Schema cannot state. Each is in the document's
descriptions and refused by the server with a problem naming the field:

- `until` must not be before `since` (400): a rule across two query parameters;
- `from` must not be above `to` (400): well-formed sizes are both set to 0;
- an integer fact is a JSON integer spelled without a fraction (`2.0` is refused, 422,
  SPEC §2), while JSON Schema's `integer` admits `2.0`, and Schemathesis sends it.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis

from service.api.log import SIZE_PATTERN
from service.facts import FIELDS
from service.timestamps import parse_timestamp

_INTEGER_FACTS = [f.path.split(".") for f in FIELDS if f.kind == "int"]


_SIZE = re.compile(SIZE_PATTERN)
#: The operations whose request body is a facts document.
_FACTS_BODIES = {("POST", "/v1/decisions"), ("POST", "/v1/simulations")}


def _sizes_within_the_log(query: dict[str, Any]) -> None:
    """Well-formed consistency sizes set to 0 (a proof every log has)."""
    for name in ("from", "to"):
        if isinstance(query.get(name), str) and _SIZE.match(query[name]):
            query[name] = "0"


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """from <= to; an inverted time window, put the right way round."""
    if query:
        _sizes_within_the_log(query)
    if not query or not isinstance(query.get("since"), str) \
            or not isinstance(query.get("until"), str):
        return query
    try:
        inverted = parse_timestamp(query["since"]) > parse_timestamp(query["until"])
    except ValueError:
        return query  # not a time: the case is about that
    if inverted:
        query["since"], query["until"] = query["until"], query["since"]
    return query


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """Integer facts spelled as whole floats (`903.0`), spelled as integers (`903`)."""
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) not in _FACTS_BODIES:
        return body
    for parts in _INTEGER_FACTS:
        node = body
        for key in parts[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get(parts[-1]) if isinstance(node, dict) else None
        if isinstance(value, float) and value.is_integer():
            node[parts[-1]] = int(value)
    return body
