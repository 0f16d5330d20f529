"""API keys as the service knows them: made at random with a recognisable prefix, and
kept (in the configuration) only as their sha256."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "dfy_"


def new_key() -> str:
    """A new random API key: `dfy_` and 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
