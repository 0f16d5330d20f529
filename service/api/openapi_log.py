"""The OpenAPI description of the verifiable log: receipts, checkpoints, proofs and the
ruleset archive (merged into `/openapi.json` by `openapi.py`)."""

from __future__ import annotations

import copy
from typing import Any

from .log import SIZE_PATTERN, TREE_SIZE_PATTERN

B64_HASH = {"type": "string", "pattern": "^[A-Za-z0-9+/]{43}=$",
            "description": "A SHA-256 hash, base64."}
PROOF = {"type": "array", "items": B64_HASH}
LEAF = {"type": "integer", "minimum": 0}
SIZE = {"type": "integer", "minimum": 0}
NOTE = {"type": "string", "description": "A C2SP signed note: the checkpoint "
        "`<log name>\\n<tree size>\\n<base64 root>\\n`, a blank line, `— <log name> "
        "<base64(key id ‖ Ed25519 signature)>`."}


def _text(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"text/plain": {"schema": {"type": "string"}}}}


def log_schemas(decision: dict[str, Any]) -> dict[str, Any]:
    recorded = copy.deepcopy(decision)
    recorded["required"] = [*recorded["required"], "receipt"]
    recorded["properties"]["receipt"] = {"$ref": "#/components/schemas/Receipt"}
    return {
        "RecordedDecision": recorded,
        "Receipt": {
            "type": "object",
            "description": "Proof that this decision is in the log: with the verifier key "
                           "(GET /v1/log/key), the inclusion proof of the leaf (RFC 9162) "
                           "leads to the signed checkpoint's root.",
            "required": ["leaf_index", "tree_size", "leaf_hash", "inclusion_proof",
                         "checkpoint"],
            "properties": {"leaf_index": LEAF, "tree_size": SIZE, "leaf_hash": B64_HASH,
                           "inclusion_proof": PROOF, "checkpoint": NOTE},
            "additionalProperties": False,
        },
        "InclusionProof": {
            "type": "object",
            "required": ["leaf_index", "tree_size", "leaf_hash", "inclusion_proof"],
            "properties": {"leaf_index": LEAF, "tree_size": SIZE, "leaf_hash": B64_HASH,
                           "inclusion_proof": PROOF},
            "additionalProperties": False,
        },
        "ConsistencyProof": {
            "type": "object", "required": ["from", "to", "consistency_proof"],
            "properties": {"from": SIZE, "to": SIZE, "consistency_proof": PROOF},
            "additionalProperties": False,
        },
        "ArchivedRuleset": {
            "type": "object",
            "required": ["sha256", "name", "version", "files", "archived_at"],
            "properties": {
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "name": {"type": "string"}, "version": {"type": "string"},
                "files": {"type": "object", "additionalProperties": {"type": "string"},
                          "description": "Each rule file's exact text, by file name."},
                "archived_at": {"type": "string", "format": "date-time"},
            },
            "additionalProperties": False,
        },
    }


def log_paths(json: Any, errors: Any, ulid: dict[str, Any]) -> dict[str, Any]:
    size = {"type": "string", "pattern": SIZE_PATTERN}
    return {
        "/v1/log/checkpoint": {"get": {
            "operationId": "getCheckpoint",
            "summary": "The latest signed checkpoint of the log (C2SP signed note).",
            "description": "Scope `audit:read`.",
            "responses": {"200": _text("The signed note."), **errors(401, 403, 404, 500, 503)}}},
        "/v1/log/key": {"get": {
            "operationId": "getVerifierKey",
            "summary": "The verifier key of the checkpoints' signatures.",
            "description": "Scope `audit:read`. `<name>+<hex key id>+<base64(0x01 ‖ key)>`.",
            "responses": {"200": _text("The verifier key."), **errors(401, 403, 500)}}},
        "/v1/decisions/{decision_id}/proof": {"get": {
            "operationId": "getInclusionProof",
            "summary": "The decision's inclusion proof in the tree of tree_size leaves.",
            "description": "Scope `audit:read`. tree_size defaults to the latest "
                           "checkpoint's size; 404 when the log has no tree of that size "
                           "(yet) or the decision is not in it.",
            "parameters": [{"name": "decision_id", "in": "path", "required": True,
                            "schema": ulid},
                           {"name": "tree_size", "in": "query",
                            "schema": {"type": "string", "pattern": TREE_SIZE_PATTERN}}],
            "responses": {"200": json("InclusionProof", "The inclusion proof."),
                          **errors(400, 401, 403, 404, 500, 503)}}},
        "/v1/log/consistency": {"get": {
            "operationId": "getConsistencyProof",
            "summary": "Proof that the tree of `to` leaves extends the tree of `from`.",
            "description": "Scope `audit:read`. 400 when from > to; 404 when the log has "
                           "no tree of `to` leaves (yet).",
            "parameters": [{"name": "from", "in": "query", "required": True, "schema": size},
                           {"name": "to", "in": "query", "required": True, "schema": size}],
            "responses": {"200": json("ConsistencyProof", "The consistency proof."),
                          **errors(400, 401, 403, 404, 500, 503)}}},
        "/v1/rulesets/{sha256}": {"get": {
            "operationId": "getArchivedRuleset",
            "summary": "A ruleset that decided, as archived: its files' exact text.",
            "description": "Scope `audit:read`.",
            "parameters": [{"name": "sha256", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
            "responses": {"200": json("ArchivedRuleset", "The archived ruleset."),
                          **errors(400, 401, 403, 404, 500, 503)}}},
    }
