"""API keys: `Authorization: Bearer <key>` (or `X-API-Key: <key>`), checked against
the sha256 hashes in the configuration, with scopes.

The presented key is hashed and compared with *every* configured hash with
`hmac.compare_digest`, so the time taken does not depend on which key (if any)
matched. Keys are never logged or stored; a principal is known by its name.
With no keys configured the service is open: every request acts with every
scope (`deficiency serve` then binds only a loopback address).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ..config import SCOPES, ApiKey
from .problems import Problem

MAX_KEY_CHARS = 512
REALM = "deficiency"


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


def _challenge(error: str | None = None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"'
    if error:
        value += f', error="{error}"'
    return {"WWW-Authenticate": value}


class Keyring:
    """The configured keys; `authenticate(headers)` → Principal or 401."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = [(bytes.fromhex(k.sha256), Principal(k.name, k.scopes)) for k in keys]

    @property
    def open(self) -> bool:
        """No keys configured: every request has every scope."""
        return not self._keys

    def authenticate(self, authorization: str | None, x_api_key: str | None) -> Principal:
        if self.open:
            return ANONYMOUS
        found = self.match(_presented_key(authorization, x_api_key))
        if found is None:
            raise Problem(401, "Unauthorized", "The API key is not valid.",
                          type_="unauthorized", headers=_challenge("invalid_token"),
                          kind="unauthorized")
        return found

    def match(self, token: str) -> Principal | None:
        """The principal whose key `token` is, or None (every hash compared)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for configured, principal in self._keys:  # no early exit
            if hmac.compare_digest(digest, configured):
                found = principal
        return found

    def named(self, name: str, secret: bytes) -> tuple[Principal, str] | None:
        """The principal configured under `name` and a short keyed digest of its key's
        hash (None: no such key): what a console session keeps to notice that the key
        was removed or replaced, without holding the key or its hash."""
        for configured, principal in self._keys:
            if principal.name == name:
                return principal, hmac.new(secret, configured, hashlib.sha256).hexdigest()[:32]
        return None


def _presented_key(authorization: str | None, x_api_key: str | None) -> str:
    token: str | None = None
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Problem(401, "Unauthorized",
                          "Use 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
                          type_="unauthorized", headers=_challenge("invalid_request"),
                          kind="unauthorized")
        token = credentials.strip()
    elif x_api_key:
        token = x_api_key.strip()
    if not token:
        raise Problem(401, "Unauthorized", "An API key is required.", type_="unauthorized",
                      headers=_challenge(), kind="unauthorized")
    if len(token) > MAX_KEY_CHARS:
        raise Problem(401, "Unauthorized", "The API key is not valid.", type_="unauthorized",
                      headers=_challenge("invalid_token"), kind="unauthorized")
    return token


def require_scope(principal: Principal, scope: str | None) -> None:
    """403 unless `principal` holds `scope` (None: any authenticated principal)."""
    if scope is not None and scope not in principal.scopes:
        raise Problem(403, "Forbidden", f"This API key lacks the scope {scope!r}.",
                      type_="forbidden", kind="forbidden",
                      extra={"required_scope": scope})
