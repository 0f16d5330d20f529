"""The hash chain: canonical encoding, record hashes and the verification walk.

Pure functions over plain data, so anyone holding an exported record (the dict
`AuditStore.get` returns) can recompute its hash without the store:
``record_hash(record) == record["hash"]``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

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


# orjson, keys sorted (by code point), no whitespace, non-ASCII as UTF-8, floats in
# their shortest round-tripping form. datetimes and dataclasses are refused like any
# other non-JSON value (orjson would otherwise spell them itself).
_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS)

#: Already-canonical JSON bytes to embed as they are (see `canonical_bytes`).
Fragment = orjson.Fragment


def canonical_bytes(value: Any) -> bytes:
    """The one canonical encoding every hash is computed over, as UTF-8 bytes.

    Sorted keys, no whitespace, non-ASCII kept as is (UTF-8), floats in their
    shortest round-tripping spelling. Refused: NaN and infinities (ValueError);
    anything else that is not plain JSON data — sets, datetimes, non-string keys,
    lone surrogates (TypeError). A `Fragment` is copied in unchecked: it must hold
    the canonical bytes of a value already.
    """
    try:
        encoded = orjson.dumps(value, option=_OPTIONS)  # first: it bounds the depth too
    except TypeError:
        # orjson stops at integers beyond 64 bits: spell those as Python does, retry.
        encoded = orjson.dumps(_big_ints_spelled(value), option=_OPTIONS)
    # orjson writes NaN and infinities as null: no null, nothing to look for.
    if b"null" in encoded and _non_finite(value):
        raise ValueError("NaN and infinities are not JSON")
    return encoded


def canonical_json(value: Any) -> str:
    """`canonical_bytes` as text."""
    return canonical_bytes(value).decode("utf-8")


def _big_ints_spelled(value: Any) -> Any:
    """`value` with every integer outside 64 bits replaced by a `Fragment` of its digits."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return Fragment(b"%d" % value) if not -(2**63) <= value < 2**64 else value
    if isinstance(value, dict):
        return {key: _big_ints_spelled(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints_spelled(item) for item in value]
    return value


def _non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity is anywhere in `value` (orjson would write null).

    Hot: every record's facts, decision and trace pass through here, so the common
    leaves are skipped inline rather than with a call each."""
    kind = type(value)
    if kind is dict:
        items: Any = value.values()
    elif kind is list or kind is tuple:
        items = value
    elif isinstance(value, float):
        return not _isfinite(value)
    elif isinstance(value, dict):
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return False
    for item in items:
        item_kind = type(item)
        if item_kind is str or item_kind is bool or item_kind is int or item is None:
            continue
        if item_kind is float:
            if not _isfinite(item):
                return True
        elif _non_finite(item):
            return True
    return False


_isfinite = math.isfinite


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
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


def content_hash(content: Mapping[str, Any], seq: int, prev_hash: str) -> str:
    """`record_hash` for the writer: `content` holds the content fields already checked
    (facts, decision and trace as `Fragment`s of their canonical bytes), so it is only
    assembled and hashed, not walked again. The bytes hashed are the ones
    `record_hash` computes from the decoded record."""
    document = dict(content)
    document["seq"] = seq
    document["prev_hash"] = prev_hash
    return hashlib.sha256(orjson.dumps(document, option=_OPTIONS)).hexdigest()


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
        try:
            recomputed = record_hash(record)
        except (TypeError, ValueError):  # e.g. a NaN written in: not what was appended
            recomputed = None
        if recomputed != record["hash"]:
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
