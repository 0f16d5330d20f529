"""The verifiable log (scope `audit:read`): the latest signed checkpoint, the verifier
key, inclusion and consistency proofs, and the archived rulesets.

With these and the verifier key, anyone can check that a decision is in the log and
that the log only ever grew, without trusting whoever runs the database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Response, request

from ..audit import StoreUnavailable
from ..facts import FieldError
from . import problems
from .handle import authorize, json_response, service
from .problems import Problem

bp = Blueprint("log", __name__)

TEXT = "text/plain; charset=utf-8"
#: A tree size in a query: 0 to 18 digits (fits a signed 64-bit integer).
SIZE_PATTERN = r"^(0|[1-9][0-9]{0,17})$"
#: The size of a tree a leaf is in: 1 or more.
TREE_SIZE_PATTERN = r"^[1-9][0-9]{0,17}$"
_UNREACHABLE = "The audit log cannot be reached. Retry later."


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except StoreUnavailable:
        raise problems.store_unavailable(_UNREACHABLE) from None


def _no_such_tree(name: str, exc: LookupError) -> Problem:
    """A tree the log does not have (yet), or a leaf not in it: 404 naming the parameter."""
    return Problem(404, "Not Found", str(exc), errors=[FieldError(name, str(exc))],
                   kind="not_found")


def _sizes(*names: str, required: tuple[str, ...] = (),
           least: dict[str, int] | None = None) -> dict[str, int]:
    """Integer query parameters `names` (no others allowed); 400 naming each bad one."""
    errors: list[FieldError] = []
    for name in request.args:
        if name not in names:
            errors.append(FieldError(name, "unknown query parameter"))
        elif len(request.args.getlist(name)) > 1:
            errors.append(FieldError(name, "given more than once"))
    values: dict[str, int] = {}
    for name in names:
        text = request.args.get(name)
        if text is None:
            if name in required:
                errors.append(FieldError(name, "required"))
        elif re.fullmatch(SIZE_PATTERN, text) is None or int(text) < (least or {}).get(name, 0):
            low = (least or {}).get(name, 0)
            errors.append(FieldError(name, f"must be a tree size (a whole number, {low} or "
                                           "more)"))
        else:
            values[name] = int(text)
    if errors:
        raise problems.invalid_request(errors, "A query parameter is invalid.")
    return values


def _text(body: str) -> Response:
    return Response(body, 200, content_type=TEXT)


@bp.get("/v1/log/checkpoint")
def get_checkpoint() -> Response:
    authorize("audit:read")
    with _store_errors():
        note = service().audit.store().latest_checkpoint()
    if note is None:
        raise Problem(404, "Not Found", "No checkpoint has been signed yet.", kind="not_found")
    return _text(note)


@bp.get("/v1/log/key")
def get_key() -> Response:
    authorize("audit:read")
    with _store_errors():
        key = service().audit.store().verifier_key
    if key is None:  # pragma: no cover - the service always opens its store with a key
        raise Problem(404, "Not Found", "The log is not signed.", kind="not_found")
    return _text(key + "\n")


@bp.get("/v1/decisions/<ulid:decision_id>/proof")
def get_proof(decision_id: str) -> Response:
    authorize("audit:read")
    size = _sizes("tree_size", least={"tree_size": 1}).get("tree_size")
    try:
        with _store_errors():
            proof = service().audit.store().inclusion_proof(decision_id.upper(), size)
    except LookupError as exc:
        raise _no_such_tree("tree_size", exc) from None
    if proof is None:
        raise Problem(404, "Not Found", f"No decision {decision_id} is recorded.",
                      kind="not_found")
    return json_response(proof)


@bp.get("/v1/log/consistency")
def get_consistency() -> Response:
    authorize("audit:read")
    sizes = _sizes("from", "to", required=("from", "to"))
    try:
        with _store_errors():
            proof = service().audit.store().consistency_proof(sizes["from"], sizes["to"])
    except LookupError as exc:
        raise _no_such_tree("to", exc) from None
    except ValueError as exc:
        raise problems.invalid_request([FieldError("to", str(exc))],
                                       "No proof between those tree sizes.") from None
    return json_response({"from": sizes["from"], "to": sizes["to"],
                          "consistency_proof": proof})


@bp.get("/v1/rulesets/<sha256>")
def get_archived_ruleset(sha256: str) -> Response:
    authorize("audit:read")
    if re.fullmatch(r"[0-9a-f]{64}", sha256) is None:
        raise problems.invalid_request([FieldError("sha256", "must be 64 lowercase hex digits")],
                                       "The ruleset's sha256 is malformed.")
    with _store_errors():
        archived = service().audit.store().ruleset(sha256)
    if archived is None:
        raise Problem(404, "Not Found", f"No ruleset {sha256} is archived.", kind="not_found")
    return json_response(archived)
