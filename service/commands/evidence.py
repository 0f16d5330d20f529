"""Evidence about one decision, for whoever must be convinced without trusting the
service: `audit prove ID --out FILE` writes a bundle, `audit check-bundle FILE`
checks it with nothing else, `audit reproduce ID` and `audit verify --redecide`
decide stored facts again with the archived ruleset.

A bundle (schema `deficiency.evidence/1`) is one JSON document: the record as the
log keeps it, the ruleset's files, a signed checkpoint, the record's inclusion proof
in that checkpoint's tree, and the verifier key. Exit codes as for `audit verify`:
0 fine, 1 the evidence does not hold, 2 the question could not be answered.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..audit import AuditStore, merkle
from ..audit.chain import record_hash
from ..audit.notes import NoteError, Verifier
from ..messages import one_line
from ..timestamps import parse_timestamp
from ..tooling.reproduce import ArchiveError, decide_again, differences, ruleset_from_files
from .audit import EXIT_BAD, EXIT_ERROR, EXIT_OK, audit_url, with_store
from .errors import CliError
from .files import write_atomically
from .logkeys import unb64, verifier_from_args

SCHEMA = "deficiency.evidence/1"


def prove_command(args: argparse.Namespace, out: TextIO) -> int:
    verifier = verifier_from_args(args)

    def run(store: AuditStore) -> int:
        try:
            bundle = make_bundle(store, args.id, verifier.text)
        except BundleUnavailable as exc:
            print(str(exc) if exc.not_found else f"error: {exc}", file=sys.stderr)
            return EXIT_BAD if exc.not_found else EXIT_ERROR
        write_atomically(Path(args.out), bundle_text(bundle) + "\n")
        inclusion = bundle["inclusion"]
        print(f"wrote {args.out}: decision {args.id}, leaf {inclusion['leaf_index']} of "
              f"{inclusion['tree_size']}", file=out)
        return EXIT_OK

    return with_store(audit_url(args), sys.stderr, run)


class BundleUnavailable(LookupError):
    """No bundle can be made for the decision (`not_found`: no such decision)."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


def make_bundle(store: AuditStore, decision_id: str, verifier_key: str) -> dict[str, Any]:
    """The evidence bundle of a recorded decision: its record, its ruleset's files, the
    first signed checkpoint covering it and its inclusion proof there."""
    record = store.get(decision_id)
    if record is None:
        raise BundleUnavailable(f"not found: {decision_id}", not_found=True)
    receipt = store.receipt(decision_id)
    if receipt is None:
        raise BundleUnavailable(f"no signed checkpoint covers decision {decision_id} "
                                "yet")
    archived = store.ruleset(record["ruleset_sha256"])
    if archived is None:
        raise BundleUnavailable(f"ruleset {record['ruleset_sha256']} is not archived")
    return {"schema": SCHEMA, "record": record,
            "ruleset": {k: archived[k] for k in ("sha256", "name", "version", "files")},
            "checkpoint": receipt.pop("checkpoint"), "inclusion": receipt,
            "verifier_key": verifier_key}


def bundle_text(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, indent=2, sort_keys=True, ensure_ascii=False)


def check_bundle_command(args: argparse.Namespace, out: TextIO) -> int:
    try:
        bundle = json.loads(Path(args.file).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliError(f"{args.file}: {one_line(exc)}") from None
    if not isinstance(bundle, dict) or bundle.get("schema") != SCHEMA:
        raise CliError(f"{args.file}: not an evidence bundle (schema {SCHEMA})")
    checks: list[tuple[str, Callable[[], str]]] = [
        ("signature", lambda: _check_signature(bundle, args)),
        ("record hash", lambda: _check_record(bundle)),
        ("inclusion", lambda: _check_inclusion(bundle, args)),
        ("ruleset sha256", lambda: _check_ruleset(bundle)),
        ("decided again", lambda: _check_redecided(bundle)),
    ]
    failed = 0
    for name, check in checks:
        try:
            detail = check()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            failed += 1
            print(f"FAILED {name}: {one_line(exc) or type(exc).__name__}", file=out)
        else:
            print(f"ok     {name}: {detail}", file=out)
    if failed:
        print(f"BUNDLE DOES NOT HOLD: {failed} check{'s' if failed > 1 else ''} failed",
              file=out)
        return EXIT_BAD
    print("BUNDLE HOLDS: the decision was logged as recorded here, and its rules decide "
          "it the same way", file=out)
    return EXIT_OK


def _verifier(bundle: dict[str, Any], args: argparse.Namespace) -> Verifier:
    if getattr(args, "key", None):
        return verifier_from_args(args)
    return Verifier(bundle["verifier_key"])


def _check_signature(bundle: dict[str, Any], args: argparse.Namespace) -> str:
    try:
        checkpoint = _verifier(bundle, args).checkpoint(bundle["checkpoint"])
    except NoteError as exc:
        raise ValueError(str(exc)) from None
    pinned = "the key given" if getattr(args, "key", None) else "the bundle's own key"
    return f"checkpoint of tree size {checkpoint.size} signed by {pinned}"


def _check_record(bundle: dict[str, Any]) -> str:
    record = bundle["record"]
    if record_hash(record) != record["hash"]:
        raise ValueError("the record's content does not hash to its hash (altered)")
    return f"seq {record['seq']} hashes to {record['hash'][:16]}…"


def _check_inclusion(bundle: dict[str, Any], args: argparse.Namespace) -> str:
    record, inclusion = bundle["record"], bundle["inclusion"]
    try:
        checkpoint = _verifier(bundle, args).checkpoint(bundle["checkpoint"])
    except NoteError as exc:
        raise ValueError(str(exc)) from None
    index = record["seq"] - 1
    if inclusion["leaf_index"] != index or inclusion["tree_size"] != checkpoint.size:
        raise ValueError("the proof is not for this record's place or this checkpoint")
    leaf = merkle.record_leaf(record["hash"])
    if unb64(inclusion["leaf_hash"], "leaf_hash") != leaf:
        raise ValueError("the proof's leaf is not this record's")
    try:
        merkle.verify_inclusion(index, checkpoint.size, leaf,
                                [unb64(p, "inclusion_proof") for p in inclusion["inclusion_proof"]],
                                checkpoint.root)
    except merkle.ProofError as exc:
        raise ValueError(str(exc)) from None
    return f"leaf {index} is in the signed tree of {checkpoint.size}"


def _check_ruleset(bundle: dict[str, Any]) -> str:
    ruleset, record = bundle["ruleset"], bundle["record"]
    if ruleset["sha256"] != record["ruleset_sha256"]:
        raise ValueError("the bundle's ruleset is not the one the record names")
    try:
        decider = ruleset_from_files(ruleset["files"], record["ruleset_sha256"])
    except ArchiveError as exc:
        raise ValueError(str(exc)) from None
    decider.close()
    return f"{len(ruleset['files'])} files hash to {ruleset['sha256'][:16]}…"


def _check_redecided(bundle: dict[str, Any]) -> str:
    record = bundle["record"]
    try:
        decider = ruleset_from_files(bundle["ruleset"]["files"], record["ruleset_sha256"])
    except ArchiveError as exc:
        raise ValueError(str(exc)) from None
    try:
        changed = differences(record, decide_again(decider, record))
    finally:
        decider.close()
    if changed:
        raise ValueError(f"deciding the facts again differs in {', '.join(changed)}")
    outcome = record["decision"]["outcome"]
    return f"same outcome (bearer {outcome['bearer']}, borrower_owes {outcome['borrower_owes']})"


# -- deciding again from the log -------------------------------------------------------


class _Deciders:
    """One decider per archived ruleset, built on first use."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store
        self._made: dict[str, Any] = {}

    def get(self, sha256: str) -> Any:
        if sha256 not in self._made:
            archived = self._store.ruleset(sha256)
            if archived is None:
                self._made[sha256] = ArchiveError(f"ruleset {sha256} is not archived")
            else:
                try:
                    self._made[sha256] = ruleset_from_files(archived["files"], sha256)
                except ArchiveError as exc:
                    self._made[sha256] = exc
        made = self._made[sha256]
        if isinstance(made, ArchiveError):
            raise made
        return made

    def close(self) -> None:
        for made in self._made.values():
            if not isinstance(made, Exception):
                made.close()


def reproduce_command(args: argparse.Namespace, out: TextIO) -> int:
    def run(store: AuditStore) -> int:
        record = store.get(args.id)
        if record is None:
            print(f"not found: {args.id}", file=sys.stderr)
            return EXIT_BAD
        deciders = _Deciders(store)
        try:
            changed = differences(record, decide_again(deciders.get(record["ruleset_sha256"]),
                                                       record))
        except ArchiveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            deciders.close()
        if changed:
            print(f"DIFFERS: decision {args.id} decided again with ruleset "
                  f"{record['ruleset_version']} differs in {', '.join(changed)}", file=out)
            return EXIT_BAD
        outcome = record["decision"]["outcome"]
        print(f"REPRODUCED: decision {args.id} (ruleset {record['ruleset_name']} "
              f"{record['ruleset_version']}, {record['ruleset_sha256'][:12]}): bearer "
              f"{outcome['bearer']}, borrower_owes {outcome['borrower_owes']}, "
              f"lender_absorbs {outcome['lender_absorbs']}; every outcome field the same",
              file=out)
        return EXIT_OK

    return with_store(audit_url(args), sys.stderr, run)


def redecide_command(args: argparse.Namespace, out: TextIO) -> int:
    since = None
    if args.since:
        try:
            since = parse_timestamp(args.since)
        except ValueError as exc:
            raise CliError(f"--since: {exc}") from None

    def run(store: AuditStore) -> int:
        deciders = _Deciders(store)
        checked = differ = 0
        try:
            for record in store.iter_records(since=since):
                checked += 1
                try:
                    changed = differences(record, decide_again(
                        deciders.get(record["ruleset_sha256"]), record))
                except ArchiveError as exc:
                    changed = [f"cannot decide again: {exc}"]
                if changed:
                    differ += 1
                    print(f"DIFFERS: seq={record['seq']} decision_id={record['decision_id']}: "
                          f"{', '.join(changed)}", file=out)
        finally:
            deciders.close()
        if differ:
            print(f"{differ} of {checked} decisions do not reproduce", file=out)
            return EXIT_BAD
        print(f"OK: {checked} decisions decided again with their archived rulesets: every "
              "outcome field the same", file=out)
        return EXIT_OK

    return with_store(audit_url(args), sys.stderr, run)
