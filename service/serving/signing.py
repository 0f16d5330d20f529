"""The key the audit log's checkpoints are signed with, as the configuration names it.

`audit.signing_key` names a PEM (PKCS#8) Ed25519 key file. When it is not set and no
key is at the default place (`audit-signing-key.pem` in the data directory), one is
created there, once, with a warning: a production key belongs elsewhere (a secret
store, a file the database's administrators cannot read), because whoever holds it
can sign a rewritten log.
"""

from __future__ import annotations

import logging

from ..audit.notes import NoteError, Signer, write_new_key
from ..config import AuditConfig

log = logging.getLogger("deficiency.audit")


def log_signer(audit: AuditConfig) -> Signer:
    """The configured signer; NoteError when a configured key is missing or unusable."""
    path = audit.key_path
    if audit.signing_key is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_new_key(path)
        except FileExistsError:
            pass  # another process created it first: use that one
        else:
            signer = Signer.from_file(path, audit.log_name)
            log.warning("created the audit log's signing key %s (verifier key %s); a "
                        "production key belongs outside the data directory: set "
                        "audit.signing_key (`deficiency audit keygen --out FILE`)",
                        path, signer.verifier_key)
            return signer
    try:
        return Signer.from_file(path, audit.log_name)
    except NoteError as exc:
        raise NoteError(f"audit.signing_key: {exc}") from None
