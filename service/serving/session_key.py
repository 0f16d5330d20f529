"""The secret the console's session cookies are signed with, as the configuration names it.

`console.session_key` names a file of at least 32 bytes. When it is not set and no file is
at the default place (`console-session-key` in the data directory), one is created there,
once (mode 0600), before the workers start, so that every worker signs and checks the same
cookies. Replacing the file ends every session.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from ..config import Config

MIN_SECRET_BYTES = 32


def session_key_path(config: Config) -> Path:
    return config.console.session_key or config.audit.data_dir / "console-session-key"


def session_secret(config: Config) -> bytes:
    """The secret; ValueError naming `console.session_key` when it is missing or short."""
    path = session_key_path(config)
    if config.console.session_key is None and not path.exists():
        try:
            _create(path)
        except OSError as exc:
            raise ValueError(f"console.session_key: cannot create {path}: "
                             f"{exc.strerror}") from None
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"console.session_key: cannot read {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"console.session_key: {path} holds {len(secret)} bytes; a session "
                         f"key needs at least {MIN_SECRET_BYTES}")
    return secret


def _create(path: Path) -> None:
    """Write a new secret beside `path`, then link it into place: another process sees
    either no file or the whole secret, and the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process was first: use its
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
