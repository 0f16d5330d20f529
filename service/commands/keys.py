"""`deficiency keys new --scope S [--name N]`: a new API key, printed once, with the
lines to paste under `auth.keys` (only its sha256 is stored)."""

from __future__ import annotations

import argparse
import datetime
import os
from typing import TextIO

from ..apikeys import key_sha256, new_key
from ..config import KEY_NAME
from .errors import CliError


def keys_new_command(args: argparse.Namespace, out: TextIO) -> int:
    scopes = list(dict.fromkeys(args.scope))  # keep order, drop repeats
    name = args.name or f"key-{datetime.date.today():%Y%m%d}-{os.urandom(2).hex()}"
    if not KEY_NAME.match(name):
        raise CliError("--name: must be 1-64 letters, digits, '_', '.', '@' or '-'")
    key = new_key()
    out.write(
        f"{key}\n"
        "\n"
        "# The key above is shown once: give it to the client, keep it in a secret store.\n"
        "# Paste this under auth.keys in config.yaml (only the hash is stored):\n"
        f"  - name: {name}\n"
        f"    sha256: {key_sha256(key)}\n"
        f"    scopes: [{', '.join(scopes)}]\n"
    )
    return 0
