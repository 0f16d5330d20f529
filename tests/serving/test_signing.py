"""The log's signing key as the configuration names it (`serving/signing.py`)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from service.audit.notes import NoteError
from service.config import AuditConfig
from service.serving.signing import log_signer


def test_without_a_configured_key_one_is_made_once_in_the_data_directory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditConfig(url=f"sqlite:///{tmp_path}/data/audit.db")
    caplog.set_level(logging.WARNING, logger="deficiency.audit")
    first = log_signer(audit)
    key = tmp_path / "data" / "audit-signing-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(key) in warning and first.verifier_key in warning
    assert "a production key belongs outside the data directory" in warning
    caplog.clear()
    assert log_signer(audit).verifier_key == first.verifier_key  # the same key, quietly
    assert not caplog.records


def test_a_configured_key_that_is_missing_or_not_ed25519_is_refused_by_name(
        tmp_path: Path) -> None:
    missing = AuditConfig(url=f"sqlite:///{tmp_path}/a.db", signing_key=tmp_path / "no.pem")
    with pytest.raises(NoteError, match=r"^audit.signing_key: signing key .*no.pem"):
        log_signer(missing)
    assert not (tmp_path / "no.pem").exists()  # never created in the operator's place
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(NoteError, match="not an unencrypted PEM"):
        log_signer(AuditConfig(url=f"sqlite:///{tmp_path}/a.db", signing_key=garbage))
