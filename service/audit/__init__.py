"""The durable, tamper-evident decision log (spec §8)."""

from service.audit.group_commit import GroupCommitter
from service.audit.records import (
    DuplicateDecisionId,
    DuplicateIdempotencyKey,
    NewRecord,
    StoreUnavailable,
    VerifyResult,
)
from service.audit.store import AuditStore, open_store

__all__ = [
    "AuditStore",
    "DuplicateDecisionId",
    "DuplicateIdempotencyKey",
    "GroupCommitter",
    "NewRecord",
    "StoreUnavailable",
    "VerifyResult",
    "open_store",
]
