"""The durable, tamper-evident decision log (spec §8)."""

from service.audit.store import (
    AuditStore,
    DuplicateDecisionId,
    DuplicateIdempotencyKey,
    GroupCommitter,
    NewRecord,
    StoreUnavailable,
    VerifyResult,
    open_store,
)

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
