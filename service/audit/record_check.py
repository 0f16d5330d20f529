"""Whether one recorded decision is in the log as its signed checkpoints say: what an
examiner's view of a single decision shows next to it.

`check_record(log, record, verifier)` recomputes the record's hash from its content,
checks its receipt — the inclusion proof in the first signed checkpoint that covered it,
the one its 201 answer carried — and then that the latest signed checkpoint extends that
tree (a consistency proof). Every signature is checked with `verifier`. The verdict is
`ok`, `pending` (no signed checkpoint covers the record yet) or `failed`, with a
sentence saying why.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol

from service.audit import merkle
from service.audit.chain import record_hash
from service.audit.notes import NoteError, Verifier

OK, PENDING, FAILED = "ok", "pending", "failed"


class _Reads(Protocol):
    def receipt(self, decision_id: str) -> dict[str, Any] | None: ...

    def latest_checkpoint(self) -> str | None: ...

    def consistency_proof(self, old: int, new: int) -> list[str]: ...


@dataclass(frozen=True)
class RecordCheck:
    state: str
    message: str
    #: The signed checkpoint of the receipt, and the latest one (their notes).
    receipt_checkpoint: str | None = None
    latest_checkpoint: str | None = None


def _hashes(proof: list[str]) -> list[bytes]:
    return [base64.b64decode(h, validate=True) for h in proof]


def check_record(log: _Reads, record: dict[str, Any], verifier: Verifier | None) -> RecordCheck:
    if record_hash(record) != record["hash"]:
        return RecordCheck(FAILED, "the record's content does not hash to its hash: it was "
                                   "altered after it was written")
    if verifier is None:
        return RecordCheck(PENDING, "this log signs no checkpoints")
    receipt = log.receipt(record["decision_id"])
    if receipt is None:
        return RecordCheck(PENDING, "no signed checkpoint covers this record yet")
    index = record["seq"] - 1
    try:
        first = verifier.checkpoint(receipt["checkpoint"])
        if receipt["leaf_index"] != index or receipt["tree_size"] != first.size:
            raise merkle.ProofError("the receipt is not for this record's place")
        merkle.verify_inclusion(index, first.size, merkle.record_leaf(record["hash"]),
                                _hashes(receipt["inclusion_proof"]), first.root)
    except (NoteError, merkle.ProofError, ValueError) as exc:
        return RecordCheck(FAILED, f"the receipt does not hold: {exc}",
                           receipt.get("checkpoint"))
    note = log.latest_checkpoint()
    try:
        latest = verifier.checkpoint(note) if note is not None else first
        merkle.verify_consistency(first.size, latest.size, first.root, latest.root,
                                  _hashes(log.consistency_proof(first.size, latest.size)))
    except (NoteError, merkle.ProofError, LookupError, ValueError) as exc:
        return RecordCheck(FAILED, "the latest signed checkpoint does not extend the tree "
                                   f"that covered this record: {exc}",
                           receipt["checkpoint"], note)
    return RecordCheck(
        OK, f"leaf {index} is in the signed tree of {first.size} records (its receipt), and "
            f"the latest signed checkpoint, of {latest.size} records, extends that tree "
            f"(signed by {verifier.name})", receipt["checkpoint"], note)
