"""`deficiency audit verify`, `show ID`, `keygen` and `checkpoint`, and the audit log's
URL and store as every command that reads the log opens it (`evidence.py` and
`witness.py` hold the examiner's other commands).

verify/show return the process exit code: 0 fine, 1 the answer is bad news
(tampered, not found), 2 the question could not be answered (store unreachable, bad
URL). Answers (OK / TAMPERED / the record) go to `out`, failures as one line to `err`
(default: stderr), never a traceback. Streams default at call time, not import
time, so redirected or captured sys.stdout/sys.stderr are honoured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ..audit import AuditStore, StoreUnavailable, open_store
from ..audit.database import normalise_url
from ..audit.notes import NoteError, Signer, Verifier, write_new_key
from ..audit.verification import Expected
from ..config import ConfigError, load_config
from ..messages import one_line
from .errors import CliError
from .logkeys import Evidence, read_evidence, verifier_from_args

EXIT_OK = 0
EXIT_BAD = 1
EXIT_ERROR = 2


def audit_url(args: argparse.Namespace) -> str:
    """`--url`, else `audit.url` of the configuration (`--config` or the default)."""
    if getattr(args, "url", None):
        return str(args.url)
    try:
        return load_config(getattr(args, "config", None)).audit.url
    except ConfigError as exc:
        raise CliError(f"configuration: {one_line(exc)}") from None


def open_existing(url: str) -> AuditStore:
    """The audit store at `url`; a SQLite file must exist already (opening creates one,
    and a mistyped path must not read as an empty log). Raises ValueError or
    StoreUnavailable."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "").expanduser()
        if not path.is_file():
            raise ValueError(f"no audit log at {path}")
    return open_store(url)


def verify_command(url: str, out: TextIO | None = None, err: TextIO | None = None, *,
                   verifier: Verifier | None = None, evidence: Evidence | None = None) -> int:
    """The chain walk and the tree recomputed from the records, checked against the
    checkpoints the log keeps (signatures with `verifier`) and `evidence` (signed
    checkpoints and receipts from elsewhere, already checked)."""
    out = out or sys.stdout
    evidence = evidence or Evidence()

    def run(store: AuditStore) -> int:
        result = store.verify(
            verifier=verifier, leaves=evidence.leaves,
            checkpoints=[Expected(c.size, c.root, source) for c, source in evidence.checkpoints])
        if result.ok:
            matched, given = result.checkpoints_checked, len(evidence.checkpoints)
            line = (f"OK: {result.checked} records, chain intact; Merkle tree of "
                    f"{result.tree_size} leaves")
            if matched:
                line += (f" matches {matched} signed checkpoint{'s' if matched != 1 else ''}"
                         + (f" ({given} given)" if given else "")
                         + ("" if verifier is not None else " (signatures not checked: no key)"))
            print(line, file=out)
            latest = result.latest_checkpoint or 0
            if latest < result.checked:
                print(f"warning: the log's latest signed checkpoint covers {latest} of "
                      f"{result.checked} records: records after it are vouched for by no "
                      "signature", file=out)
            return EXIT_OK
        where = ("log" if result.first_bad_seq is None
                 else f"record seq={result.first_bad_seq}")
        if result.first_bad_decision_id is not None:
            where += f" decision_id={result.first_bad_decision_id}"
        print(f"TAMPERED: {where} : {result.reason}", file=out)
        return EXIT_BAD

    return with_store(url, err or sys.stderr, run)


def show_command(url: str, decision_id: str, out: TextIO | None = None,
                 err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr

    def run(store: AuditStore) -> int:
        record = store.get(decision_id)
        if record is None:
            print(f"not found: {decision_id}", file=err)
            return EXIT_BAD
        print(json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False), file=out)
        return EXIT_OK

    return with_store(url, err, run)


def audit_verify_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.redecide:
        from .evidence import redecide_command

        return redecide_command(args, out)
    checkpoints = args.checkpoint or []
    verifier = None
    if args.key or checkpoints or _configured_key(args):
        verifier = verifier_from_args(args)
    evidence = Evidence()
    for path in checkpoints:
        assert verifier is not None
        read_evidence(path, verifier, evidence)
    return verify_command(audit_url(args), out, verifier=verifier, evidence=evidence)


def _configured_key(args: argparse.Namespace) -> bool:
    """Whether the configuration's signing key is at hand (to check the signatures).
    Not with --url: the configured key need not be that log's (pass --key)."""
    if getattr(args, "url", None):
        return False
    try:
        return load_config(getattr(args, "config", None)).audit.key_path.is_file()
    except ConfigError:
        return False


def audit_keygen_command(args: argparse.Namespace, out: TextIO) -> int:
    """Write a new signing key (mode 0600) and print its verifier key."""
    try:
        name = load_config(getattr(args, "config", None)).audit.log_name
    except ConfigError as exc:
        raise CliError(f"configuration: {one_line(exc)}") from None
    try:
        write_new_key(args.out)
        signer = Signer.from_file(args.out, name)
    except FileExistsError:
        raise CliError(f"--out: {args.out} exists already (a key is never overwritten)") \
            from None
    except (OSError, NoteError) as exc:
        raise CliError(f"--out: {one_line(exc)}") from None
    print(f"wrote {args.out} (keep it out of the database's reach; set audit.signing_key)",
          file=sys.stderr)
    print(signer.verifier_key, file=out)
    return EXIT_OK


def audit_checkpoint_command(args: argparse.Namespace, out: TextIO) -> int:
    """Print the latest signed checkpoint the log keeps."""
    def run(store: AuditStore) -> int:
        note = store.latest_checkpoint()
        if note is None:
            print("error: no checkpoint has been signed yet", file=sys.stderr)
            return EXIT_BAD
        out.write(note)
        return EXIT_OK

    return with_store(audit_url(args), sys.stderr, run)


def audit_show_command(args: argparse.Namespace, out: TextIO) -> int:
    return show_command(audit_url(args), args.id, out)


def with_store(url: str, err: TextIO, run: Callable[[AuditStore], int]) -> int:
    """`run(store)` on the existing log at `url`, closed after; every failure one line on
    `err` (exit 2), never a traceback. The examiner's commands all answer this way."""
    try:
        store = open_existing(url)
    except (ValueError, StoreUnavailable) as exc:
        print(f"error: {one_line(exc)}", file=err)
        return EXIT_ERROR
    try:
        return run(store)
    except StoreUnavailable as exc:
        print(f"error: {one_line(exc)}", file=err)
        return EXIT_ERROR
    except Exception as exc:  # an auditor's tool answers in one line, whatever happened
        print(f"error: {type(exc).__name__}: {one_line(exc)}", file=err)
        return EXIT_ERROR
    finally:
        store.close()
