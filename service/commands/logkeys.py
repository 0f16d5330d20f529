"""The audit log's keys and checkpoints as the examiner's commands take them: the
verifier key (`--key`, else the configured signing key's), and files holding signed
checkpoints or decision receipts."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audit import merkle
from ..audit.notes import Checkpoint, NoteError, Signer, Verifier
from ..config import ConfigError, load_config
from ..messages import one_line
from .errors import CliError


def verifier_from_args(args: argparse.Namespace) -> Verifier:
    """`--key` (the verifier key, or a file holding it), else the configured key's."""
    given = getattr(args, "key", None)
    try:
        if given:
            path = Path(given)
            text = path.read_text("utf-8") if path.is_file() else given
            return Verifier(text.strip())
        try:
            audit = load_config(getattr(args, "config", None)).audit
        except ConfigError as exc:
            raise CliError(f"configuration: {one_line(exc)}") from None
        if not audit.key_path.is_file():
            raise CliError(f"no verifier key: pass --key VKEY (no signing key at "
                           f"{audit.key_path})")
        return Signer.from_file(audit.key_path, audit.log_name).verifier()
    except (NoteError, OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--key: {one_line(exc)}") from None


def unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CliError(f"{what}: not base64") from None


@dataclass
class Evidence:
    """What a --checkpoint file vouches for: signed checkpoints, and leaves (by index)
    that receipts in it were issued for, each with where it comes from."""

    checkpoints: list[tuple[Checkpoint, str]] = field(default_factory=list)
    leaves: dict[int, tuple[bytes, str]] = field(default_factory=dict)


def read_evidence(path: str, verifier: Verifier, into: Evidence) -> None:
    """Add the checkpoints and receipts of `path`: a signed checkpoint's text, a
    checkpoint file (JSON lines with "checkpoint"), a receipt or a 201 answer holding
    one. Every signature and inclusion proof is checked here (CliError otherwise)."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--checkpoint {path}: {one_line(exc)}") from None
    if not text.lstrip().startswith("{"):
        into.checkpoints.append((_signed(verifier, text, path), f"checkpoint {path}"))
        return
    try:
        docs = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise CliError(f"--checkpoint {path}: not JSON ({exc})") from None
    for number, doc in enumerate(docs, 1):
        where = path if len(docs) == 1 else f"{path} line {number}"
        if not isinstance(doc, dict):
            raise CliError(f"--checkpoint {where}: not a receipt or checkpoint object")
        receipt = doc.get("receipt", doc)
        if isinstance(receipt, dict) and "leaf_index" in receipt:
            _receipt(receipt, verifier, f"the receipt in {where}", into)
        elif isinstance(doc.get("checkpoint"), str):
            into.checkpoints.append((_signed(verifier, doc["checkpoint"], where),
                                     f"checkpoint file {where}"))
        else:
            raise CliError(f"--checkpoint {where}: holds no receipt and no checkpoint")


def _signed(verifier: Verifier, note: str, where: str) -> Checkpoint:
    try:
        return verifier.checkpoint(note)
    except NoteError as exc:
        raise CliError(f"--checkpoint {where}: {one_line(exc)}") from None


def _receipt(receipt: dict[str, Any], verifier: Verifier, where: str, into: Evidence) -> None:
    checkpoint = _signed(verifier, str(receipt.get("checkpoint")), where)
    index, size = receipt.get("leaf_index"), receipt.get("tree_size")
    if not isinstance(index, int) or not isinstance(size, int) or size != checkpoint.size:
        raise CliError(f"{where}: leaf_index/tree_size do not match its checkpoint")
    leaf = unb64(receipt.get("leaf_hash"), f"{where}: leaf_hash")
    proof = receipt.get("inclusion_proof")
    if not isinstance(proof, list):
        raise CliError(f"{where}: inclusion_proof must be a list")
    try:
        merkle.verify_inclusion(index, size, leaf, [unb64(p, f"{where}: inclusion_proof")
                                                    for p in proof], checkpoint.root)
    except merkle.ProofError as exc:
        raise CliError(f"{where}: {exc}") from None
    into.checkpoints.append((checkpoint, f"{where} (its checkpoint)"))
    into.leaves[index] = (leaf, where)
