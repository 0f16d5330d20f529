"""`deficiency audit witness URL --state DIR`: an independent party's check that the
log only ever grows.

Each run fetches the service's latest signed checkpoint, checks its signature, and
checks that it extends the last checkpoint this witness kept (a consistency proof
from the service, RFC 9162 §2.1.4); then keeps it. A log that shrank, or whose new
tree does not contain the old one — records altered or removed and hashes
recomputed, or the log truncated and appended to again (a fork) — ends the run with
exit 1 and one line; the kept checkpoint is left as it was, as evidence.

The verifier key is `--key`, else the one kept in DIR by the first run (which, given
no key, takes the service's `/v1/log/key` on trust and says so).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

from ..audit import merkle
from ..audit.notes import Checkpoint, NoteError, Verifier
from ..messages import one_line
from .errors import CliError

EXIT_OK, EXIT_BAD, EXIT_ERROR = 0, 1, 2
TIMEOUT = 30


def _get(base: str, path: str, api_key: str | None) -> bytes:
    request = urllib.request.Request(base.rstrip("/") + path)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return response.read()
    except urllib.error.HTTPError as exc:
        raise CliError(f"GET {path}: HTTP {exc.code}", code=EXIT_ERROR) from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"GET {path}: {one_line(exc)}", code=EXIT_ERROR) from None


def _save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)


def witness_command(args: argparse.Namespace, out: TextIO) -> int:
    url = args.url
    if not url.startswith(("http://", "https://")):
        raise CliError("URL: must start with http:// or https://")
    api_key = args.api_key or os.environ.get("DEFICIENCY_API_KEY")
    state = Path(args.state)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--state: {one_line(exc)}") from None
    key_file, kept_file = state / "verifier-key", state / "checkpoint"

    try:
        if args.key:
            verifier = Verifier(Path(args.key).read_text("utf-8").strip()
                                if Path(args.key).is_file() else args.key)
        elif key_file.is_file():
            verifier = Verifier(key_file.read_text("utf-8").strip())
        else:
            verifier = Verifier(_get(url, "/v1/log/key", api_key).decode("utf-8").strip())
            print(f"note: first run: trusting the service's key {verifier.text} (pass --key "
                  "to pin the one the operator published)", file=sys.stderr)
        if not key_file.is_file():
            _save(key_file, verifier.text + "\n")
        elif key_file.read_text("utf-8").strip() != verifier.text:
            raise CliError(f"--key differs from the key this witness kept in {key_file}")
    except (NoteError, OSError, UnicodeDecodeError) as exc:
        raise CliError(f"verifier key: {one_line(exc)}") from None

    note = _get(url, "/v1/log/checkpoint", api_key).decode("utf-8", "replace")
    try:
        new = verifier.checkpoint(note)
    except NoteError as exc:
        print(f"FAILED: the service's checkpoint does not verify: {exc}", file=out)
        return EXIT_BAD
    old = verifier.checkpoint(kept_file.read_text("utf-8")) if kept_file.is_file() else None
    problem = None if old is None else _inconsistent(url, api_key, old, new)
    if problem is not None:
        print(f"FAILED: {problem}", file=out)
        return EXIT_BAD
    _save(kept_file, note)
    if old is None:
        print(f"OK: first checkpoint kept: tree size {new.size}, root {new.root_b64}", file=out)
    else:
        print(f"OK: tree size {old.size} -> {new.size}, consistent; root {new.root_b64}",
              file=out)
    return EXIT_OK


def _inconsistent(url: str, api_key: str | None, old: Checkpoint,
                  new: Checkpoint) -> str | None:
    if new.size < old.size:
        return (f"the log shrank from {old.size} to {new.size} records (truncated, or a "
                "rewritten log is being served)")
    if new.size == old.size:
        if new.root != old.root:
            return f"two different signed roots for tree size {new.size} (the log forked)"
        return None
    raw = _get(url, f"/v1/log/consistency?from={old.size}&to={new.size}", api_key)
    try:
        doc = json.loads(raw)
        proof = [base64.b64decode(p, validate=True) for p in doc["consistency_proof"]]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return "the service's consistency proof is malformed"
    try:
        merkle.verify_consistency(old.size, new.size, old.root, new.root, proof)
    except merkle.ProofError as exc:
        return (f"the log of {new.size} records does not extend the one of {old.size} this "
                f"witness kept ({exc}): records were altered, removed or forked")
    return None
