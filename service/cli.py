"""`deficiency …`: the command line. Bad input exits non-zero with one line naming
the field or the file position - never a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .commands import errors


def _delegate(module: str, func: str):
    def run(args: argparse.Namespace, out: TextIO) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args, out)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deficiency", description="Deficiency decision service.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("decide", help="decide facts from a file or stdin (JSON or JSON Lines)")
    d.add_argument("file", metavar="FILE|-")
    d.add_argument("--rules", metavar="DIR", help="ruleset directory (default: rules/)")
    d.add_argument("--explain", action="store_true", help="plain-language text instead of JSON")
    d.set_defaults(run=_delegate("service.commands.rules", "decide_command"))

    c = sub.add_parser("check", help="validate and analyse a ruleset")
    c.add_argument("rules", nargs="?", metavar="RULES")
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.set_defaults(run=_delegate("service.commands.rules", "check_command"))

    t = sub.add_parser("test", help="run the ruleset's YAML test cases")
    t.add_argument("rules", nargs="?", metavar="RULES")
    t.add_argument("--min-coverage", type=float, default=None, metavar="PERCENT")
    t.add_argument("--junit", metavar="FILE", help="write JUnit XML")
    t.set_defaults(run=_delegate("service.commands.rules", "test_command"))

    r = sub.add_parser(
        "replay", help="re-decide logged facts with a candidate ruleset",
        description="Decide the recorded decisions again with a candidate ruleset, each "
                    "with its own stored facts and as_of, and report what would change. "
                    "Only reads the audit log. See docs/rules.md, 'deficiency replay'.")
    r.add_argument("--candidate", required=True, metavar="RULES",
                   help="the ruleset directory to try (must pass `deficiency check`)")
    r.add_argument("--config", metavar="FILE", help="configuration file, for audit.url "
                                                   "(default: $DEFICIENCY_CONFIG or "
                                                   "./config.yaml)")
    r.add_argument("--url", metavar="URL", help="audit store URL (default: from config)")
    r.add_argument("--since", metavar="TIME", help="only decisions recorded at or after "
                                                   "TIME (YYYY-MM-DD is midnight UTC, or "
                                                   "RFC 3339 with an offset)")
    r.add_argument("--until", metavar="TIME", help="only decisions recorded before TIME "
                                                   "(exclusive; same forms as --since)")
    r.add_argument("--jurisdiction", action="append", metavar="CODE",
                   help="only decisions in this jurisdiction, e.g. NV (repeatable)")
    r.add_argument("--loan-type", action="append", metavar="TYPE",
                   help="only decisions on this loan type: auto, mortgage or "
                        "other_secured (repeatable)")
    r.add_argument("--ruleset-version", metavar="VERSION",
                   help="only decisions made by this ruleset version")
    r.add_argument("--workers", type=int, metavar="N",
                   help="worker processes, 1 to 256 (default: one per CPU)")
    r.add_argument("--format", choices=("text", "json", "html"), default="text",
                   help="text for people (default), json (schema deficiency.replay/1) or "
                        "html: one self-contained page (counts, bearer transition "
                        "matrix, money chart, changed decisions); html needs --out")
    r.add_argument("--out", metavar="FILE",
                   help="write the report to FILE (replaced whole, never half-written) "
                        "instead of standard output; required with --format html")
    r.add_argument("--console-url", metavar="URL",
                   help="html only: base URL of the console, so each decision links to "
                        "URL/console/decisions/ID (default: root-relative "
                        "/console/decisions/ID)")
    shown = r.add_mutually_exclusive_group()
    shown.add_argument("--limit", type=int, metavar="N",
                       help="list at most N changed decisions (default: 50); the counts "
                            "and money always cover them all")
    shown.add_argument("--all", action="store_true",
                       help="list every changed decision (no --limit)")
    r.set_defaults(run=_delegate("service.commands.replay", "replay_command"))

    s = sub.add_parser("serve", help="run the HTTP service (granian)")
    s.add_argument("--config", metavar="FILE")
    s.add_argument("--bind", metavar="HOST:PORT")
    s.add_argument("--workers", type=int)
    s.set_defaults(run=_delegate("service.api.serve", "serve_command"))

    a = sub.add_parser("audit", help="the audit log")
    a.add_argument("--config", metavar="FILE")
    a.add_argument("--url", metavar="URL", help="audit store URL (default: from config)")
    asub = a.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    v = asub.add_parser("verify", help="check the hash chain and the Merkle tree against "
                                       "signed checkpoints")
    v.add_argument("--checkpoint", action="append", metavar="FILE",
                   help="a signed checkpoint, a checkpoint file or a decision receipt kept "
                        "elsewhere (repeatable)")
    v.add_argument("--key", metavar="VKEY", help="the verifier key (text or a file holding "
                                                 "it); default: the configured key's")
    v.add_argument("--redecide", action="store_true",
                   help="decide every stored decision again with its archived ruleset")
    v.add_argument("--since", metavar="TIME", help="with --redecide: recorded at or after")
    v.set_defaults(run=_delegate("service.commands.audit", "audit_verify_command"))
    show = asub.add_parser("show", help="print one record")
    show.add_argument("id")
    show.set_defaults(run=_delegate("service.commands.audit", "audit_show_command"))
    kg = asub.add_parser("keygen", help="write a new checkpoint signing key")
    kg.add_argument("--out", required=True, metavar="FILE")
    kg.set_defaults(run=_delegate("service.commands.audit", "audit_keygen_command"))
    asub.add_parser("checkpoint", help="print the latest signed checkpoint").set_defaults(
        run=_delegate("service.commands.audit", "audit_checkpoint_command"))
    w = asub.add_parser("witness", help="check that a service's log only grows")
    w.add_argument("url", metavar="URL")
    w.add_argument("--state", required=True, metavar="DIR")
    w.add_argument("--key", metavar="VKEY")
    w.add_argument("--api-key", metavar="KEY", help="default: $DEFICIENCY_API_KEY")
    w.set_defaults(run=_delegate("service.commands.witness", "witness_command"))
    pr = asub.add_parser("prove", help="write an evidence bundle for one decision")
    pr.add_argument("id")
    pr.add_argument("--out", required=True, metavar="FILE")
    pr.add_argument("--key", metavar="VKEY")
    pr.set_defaults(run=_delegate("service.commands.evidence", "prove_command"))
    cb = asub.add_parser("check-bundle", help="check an evidence bundle offline")
    cb.add_argument("file", metavar="FILE")
    cb.add_argument("--key", metavar="VKEY", help="pin the verifier key (default: the "
                                                  "bundle's own)")
    cb.set_defaults(run=_delegate("service.commands.evidence", "check_bundle_command"))
    rp = asub.add_parser("reproduce", help="decide one stored decision again")
    rp.add_argument("id")
    rp.set_defaults(run=_delegate("service.commands.evidence", "reproduce_command"))

    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = ksub.add_parser("new", help="create a key and print it once")
    new.add_argument("--scope", action="append", required=True,
                     choices=("decide", "audit:read", "admin"))
    new.add_argument("--name", default=None)
    new.set_defaults(run=_delegate("service.commands.keys", "keys_new_command"))
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args, out) or 0)
    except errors.CliError as exc:
        print(f"deficiency: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
