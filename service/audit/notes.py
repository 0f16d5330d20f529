"""Signed checkpoints: the C2SP tlog-checkpoint text, signed as a C2SP signed note
with an Ed25519 key.

A checkpoint's text is `<log name>\\n<tree size>\\n<base64 root hash>\\n`; the note adds
a blank line and one signature line `— <key name> <base64(key id ‖ signature)>\\n`,
the signature being Ed25519 over the text. The key id is the first 4 bytes of
SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key), and the verifier key is written
`<name>+<hex key id>+<base64(0x01 ‖ public key)>`. The key's name is the log's name.

The signing key is a PEM (PKCS#8) file, never kept in the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

DEFAULT_LOG_NAME = "deficiency-service/audit"
ED25519 = b"\x01"
_DASH = "\u2014"
# A key name: non-empty, no spaces, no plus signs (C2SP signed-note).
_NAME = re.compile(r"[^\s+]+")


class NoteError(ValueError):
    """A checkpoint, note or key that is malformed or whose signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature was verified: the log's name, size and root."""

    origin: str
    size: int
    root: bytes
    note: str

    @property
    def root_b64(self) -> str:
        return base64.b64encode(self.root).decode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    """Strict: the canonical spelling only (the unused low bits of the last character
    must be zero), so a note or key has one text, as it has one meaning."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise NoteError(f"{what} is not base64") from exc
    if _b64(raw) != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _check_name(name: str) -> str:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise NoteError(f"log name {name!r} must be non-empty, without spaces or '+'")
    return name


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519 + public).digest()[:4]


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    """The C2SP tlog-checkpoint body (what is signed)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("a tree size is a whole number, 0 or more")
    if not isinstance(root, bytes) or len(root) != 32:
        raise ValueError("a root hash is 32 bytes")
    return f"{_check_name(origin)}\n{size}\n{_b64(root)}\n"


class Signer:
    """Signs checkpoints for one log with one Ed25519 key."""

    def __init__(self, private: Ed25519PrivateKey, name: str = DEFAULT_LOG_NAME) -> None:
        self.name = _check_name(name)
        self._private = private
        self.public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(name, self.public)

    @classmethod
    def from_file(cls, path: str | Path, name: str = DEFAULT_LOG_NAME) -> Signer:
        """The key in a PEM (PKCS#8) file; NoteError if it is not an Ed25519 key."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise NoteError(f"signing key {path}: {exc.strerror or exc}") from exc
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise NoteError(f"signing key {path}: not an unencrypted PEM (PKCS#8) key") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise NoteError(f"signing key {path}: not an Ed25519 key")
        return cls(private, name)

    @property
    def verifier_key(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64(ED25519 + self.public)}"

    def verifier(self) -> Verifier:
        return Verifier(self.verifier_key)

    def sign(self, text: str) -> str:
        """The signed note of `text` (which ends with a newline)."""
        if not text.endswith("\n"):
            raise ValueError("a note's text ends with a newline")
        signature = self._private.sign(text.encode("utf-8"))
        return f"{text}\n{_DASH} {self.name} {_b64(self.key_id + signature)}\n"

    def checkpoint(self, size: int, root: bytes) -> str:
        return self.sign(checkpoint_text(self.name, size, root))


def new_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def write_new_key(path: str | Path) -> None:
    """Write a new key to `path` (mode 0600); FileExistsError if something is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, new_key_pem())
        os.fsync(fd)
    finally:
        os.close(fd)


class Verifier:
    """Checks notes signed by one key, given its verifier key text."""

    def __init__(self, vkey: str) -> None:
        text = vkey.strip() if isinstance(vkey, str) else ""
        parts = text.split("+", 2)  # the base64 key may hold "+" itself
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<hex key id>+<base64 key>")
        name, hex_id, key = parts
        self.name = _check_name(name)
        if re.fullmatch(r"[0-9a-f]{8}", hex_id) is None:
            raise NoteError("verifier key: the key id must be 8 lowercase hex digits")
        raw = _unb64(key, "verifier key")
        if len(raw) != 33 or raw[:1] != ED25519:
            raise NoteError("verifier key: not an Ed25519 key (0x01 and 32 bytes)")
        self.public = raw[1:]
        self.key_id = bytes.fromhex(hex_id)
        if key_id(name, self.public) != self.key_id:
            raise NoteError("verifier key: the key id does not match the name and key")
        self._key = Ed25519PublicKey.from_public_bytes(self.public)
        self.text = f"{name}+{hex_id}+{key}"

    def open(self, note: str) -> str:
        """The text of a note this key signed; NoteError otherwise."""
        if not isinstance(note, str) or "\n\n" not in note or not note.endswith("\n"):
            raise NoteError("not a signed note (text, a blank line, signature lines)")
        if any(ord(c) < 0x20 and c != "\n" for c in note):
            raise NoteError("a signed note must not hold control characters")
        cut = note.rindex("\n\n")
        text, signatures = note[:cut + 1], note[cut + 2:]
        for line in signatures.splitlines():
            match = re.fullmatch(rf"{_DASH} (\S+) (\S+)", line)
            if match is None:
                raise NoteError(f"malformed signature line {line!r}")
            if match[1] != self.name:
                continue
            raw = _unb64(match[2], "signature")
            if len(raw) != 68 or raw[:4] != self.key_id:
                continue
            try:
                self._key.verify(raw[4:], text.encode("utf-8"))
            except InvalidSignature:
                raise NoteError(f"the signature by {self.name} does not verify "
                                "(the note was altered, or signed by another key)") from None
            return text
        raise NoteError(f"the note carries no signature by {self.name}"
                        f" (key id {self.key_id.hex()})")

    def checkpoint(self, note: str) -> Checkpoint:
        """A checkpoint this key signed, parsed; NoteError otherwise."""
        text = self.open(note)
        lines = text.split("\n")
        if len(lines) < 4:
            raise NoteError("a checkpoint has an origin, a tree size and a root hash")
        origin, size_text, root_text = lines[:3]
        if origin != self.name:
            raise NoteError(f"checkpoint of log {origin!r}, not {self.name!r}")
        if re.fullmatch(r"0|[1-9][0-9]{0,18}", size_text) is None:
            raise NoteError(f"checkpoint tree size {size_text!r} is not a number")
        root = _unb64(root_text, "checkpoint root hash")
        if len(root) != 32:
            raise NoteError("checkpoint root hash is not 32 bytes")
        return Checkpoint(origin, int(size_text), root, note)
