"""The hash chain: canonical encoding, record hashes and the verification walk.

Pure functions over plain data, so anyone holding an exported record (the dict
`AuditStore.get` returns) can recompute its hash without the store:
``record_hash(record) == record["hash"]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS_HASH = "0" * 64

# The fields a record's hash covers, besides its seq and prev_hash. Changing this
# tuple changes every hash, so it is part of the on-disk format.
CONTENT_FIELDS = (
    "decision_id",
    "recorded_at",
    "loan_id",
    "ruleset_name",
    "ruleset_version",
    "ruleset_sha256",
    "facts",
    "decision",
    "trace",
    "duration_ms",
    "idempotency_key",
    "request_hash",
)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, non-ASCII kept as is; NaN and infinities refused."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def format_timestamp(moment: datetime) -> str:
    """UTC, microsecond precision, `Z` suffix: one spelling per instant."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(record: Mapping[str, Any], *, seq: int | None = None,
                prev_hash: str | None = None) -> str:
    """sha256 over the canonical JSON of the content fields, seq and prev_hash.

    `record` holds the content fields in their JSON-ready form (recorded_at as
    `format_timestamp` spells it); seq and prev_hash default to the record's own.
    """
    document = {name: record[name] for name in CONTENT_FIELDS}
    document["seq"] = record["seq"] if seq is None else seq
    document["prev_hash"] = record["prev_hash"] if prev_hash is None else prev_hash
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    seq: int | None
    decision_id: str | None
    reason: str


class ChainWalk:
    """Checks records fed in seq order; the first break found is the one reported.

    Link checks come before the content check so that a moved record is reported
    as reordered rather than as altered (moving changes its seq, hence its hash).
    """

    def __init__(self) -> None:
        self.checked = 0
        self.last_seq = 0
        self.last_hash = GENESIS_HASH

    def check(self, record: Mapping[str, Any]) -> ChainBreak | None:
        seq, decision_id = record["seq"], record["decision_id"]
        expected = self.last_seq + 1
        self.checked += 1
        if seq != expected:
            if seq > expected:
                reason = (f"seq gap: expected seq={expected}, found seq={seq}"
                          " (record deleted)")
            else:
                reason = f"seq out of order: expected seq={expected}, found seq={seq}"
            return ChainBreak(seq, decision_id, reason)
        if record["prev_hash"] != self.last_hash:
            return ChainBreak(seq, decision_id,
                              "prev_hash does not match the previous record's hash"
                              " (record reordered, or a record before it deleted or altered)")
        if record_hash(record) != record["hash"]:
            return ChainBreak(seq, decision_id, "hash mismatch (content altered)")
        self.last_seq, self.last_hash = seq, record["hash"]
        return None

    def unreadable(self, record: Mapping[str, Any], reason: str) -> ChainBreak:
        """Report a record that could not even be decoded."""
        self.checked += 1
        return ChainBreak(record.get("seq"), record.get("decision_id"), reason)

    def check_head(self, head_seq: int | None, head_hash: str | None) -> ChainBreak | None:
        """Compare the walk's end with the chain head the writers maintain.

        Catches what a walk alone cannot: records deleted from the end of the log.
        """
        if head_seq is None:
            if self.last_seq == 0:
                return None
            return ChainBreak(None, None, "chain head row missing")
        if head_seq > self.last_seq:
            return ChainBreak(self.last_seq + 1, None,
                              f"chain head is at seq={head_seq} but the log ends at"
                              f" seq={self.last_seq} (records deleted from the end)")
        if head_seq < self.last_seq or head_hash != self.last_hash:
            return ChainBreak(head_seq, None,
                              "chain head does not match the last record (head altered)")
        return None
