"""Files the commands write for their user (`--out FILE`): whole or not at all."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..messages import one_line
from .errors import CliError


def write_atomically(path: Path, text: str) -> None:
    """Written to a new file beside `path`, then renamed over it; CliError naming
    `--out` when it cannot be."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"--out: cannot write {path}: {one_line(exc)}") from None
