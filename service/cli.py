"""`deficiency …`: the command line. Bad input exits non-zero with one line naming
the field or the file position - never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from . import facts as facts_mod

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules"
MAX_INPUT_BYTES = 256 * 1024 * 1024


def default_rules_dir() -> Path:
    """The `rules/` directory of the working directory, else the project's own."""
    here = Path.cwd() / "rules"
    return here if here.is_dir() else DEFAULT_RULES


class CliError(Exception):
    """A one-line message for the user; exit code 2 unless said otherwise."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _load_decider(rules: str | None, matcher: str = "durable"):
    from .engine.decide import Decider
    from .policy.loader import PolicyError, load_ruleset

    directory = Path(rules) if rules else default_rules_dir()
    try:
        rs = load_ruleset(directory)
    except PolicyError as exc:
        first = exc.problems[0]
        more = f" (and {len(exc.problems) - 1} more; run `deficiency check {directory}`)" if len(
            exc.problems) > 1 else ""
        raise CliError(f"invalid ruleset: {first}{more}") from None
    from .engine.runtime import EngineError

    try:
        return Decider(rs, matcher)
    except EngineError as exc:
        raise CliError(f"ruleset exceeds an engine limit: {exc}") from None


def _read_input(name: str) -> bytes:
    if name == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    else:
        try:
            with open(name, "rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise CliError(f"{name}: {exc.strerror}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise CliError(f"{name}: input larger than {MAX_INPUT_BYTES} bytes")
    return data


def _is_json_lines(data: bytes) -> bool:
    """One JSON object per line, rather than one (possibly pretty-printed) object."""
    lines = [ln for ln in data.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        facts_mod.parse_json(lines[0])
    except facts_mod.FactsInvalid:
        return False
    return True


def explain_text(decision: dict) -> str:
    o = decision["outcome"]
    a = decision["amounts"]
    lines = [
        f"Loan {decision['loan_id']} - decision {decision['decision_id']} "
        f"as of {decision['as_of']}",
        f"Debt {a['debt']}, costs {a['costs']}, credits {a['credits']}, claim {a['claim']}, "
        f"sale proceeds {a['proceeds']}: deficiency {a['deficiency']}, surplus {a['surplus']}.",
        f"Outcome: {o['bearer']} ({o['action']}); borrower owes {o['borrower_owes']}, "
        f"lender absorbs {o['lender_absorbs']}, surplus to borrower {o['surplus_to_borrower']}"
        + (f"; deadline {o['deadline']}" if o["deadline"] else "") + ".",
        f"Basis: {o['basis']}",
        "",
        *decision["explanation"],
    ]
    cr, tax = decision["credit_reporting"], decision["tax"]
    lines += ["", f"Credit reporting: {cr['category']} (balance {cr['balance']})."]
    if tax["form"]:
        code = f", event code {tax['event_code']}" if tax["event_code"] else ""
        lines.append(f"Tax: Form {tax['form']}, canceled debt {tax['canceled_debt']}{code}.")
    else:
        lines.append("Tax: no information return.")
    lines += tax["notes"]
    applied = [t["rule"] for t in decision["trace"] if t["applied"]]
    r = decision["ruleset"]
    lines.append(f"Rules applied: {', '.join(applied)} ({r['name']} {r['version']}).")
    return "\n".join(lines)


def cmd_decide(args: argparse.Namespace, out: TextIO) -> int:
    decider = _load_decider(args.rules)
    data = _read_input(args.file)
    if _is_json_lines(data):
        failed = 0
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                decision = decider.decide(facts_mod.parse_json(line))
            except facts_mod.FactsInvalid as exc:
                failed += 1
                out.write(json.dumps({"line": number, "error": "invalid facts",
                                      "errors": [{"path": e.path, "message": e.message}
                                                 for e in exc.errors]}) + "\n")
                continue
            out.write((explain_text(decision) + "\n\n") if args.explain
                      else json.dumps(decision, ensure_ascii=False) + "\n")
        return 1 if failed else 0
    try:
        decision = decider.decide(facts_mod.parse_json(data))
    except facts_mod.FactsInvalid as exc:
        raise CliError(f"invalid facts: {exc}", 1) from None
    out.write(explain_text(decision) + "\n" if args.explain
              else json.dumps(decision, indent=2, ensure_ascii=False) + "\n")
    return 0


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from .policy.check import run_check

    return run_check(args.rules or str(default_rules_dir()), fmt=args.format, out=out)


def cmd_test(args: argparse.Namespace, out: TextIO) -> int:
    from .policy.testing import run_tests

    return run_tests(args.rules or str(default_rules_dir()), out=out,
                     min_coverage=args.min_coverage, junit=args.junit)


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
    d.set_defaults(run=cmd_decide)

    c = sub.add_parser("check", help="validate and analyse a ruleset")
    c.add_argument("rules", nargs="?", metavar="RULES")
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.set_defaults(run=cmd_check)

    t = sub.add_parser("test", help="run the ruleset's YAML test cases")
    t.add_argument("rules", nargs="?", metavar="RULES")
    t.add_argument("--min-coverage", type=float, default=None, metavar="PERCENT")
    t.add_argument("--junit", metavar="FILE", help="write JUnit XML")
    t.set_defaults(run=cmd_test)

    r = sub.add_parser("replay", help="re-decide logged facts with a candidate ruleset")
    r.add_argument("--candidate", required=True, metavar="RULES")
    r.add_argument("--config", metavar="FILE")
    r.add_argument("--url", metavar="URL", help="audit store URL (default: from config)")
    r.add_argument("--since", metavar="TIME")
    r.add_argument("--until", metavar="TIME")
    r.add_argument("--jurisdiction", action="append", metavar="CODE")
    r.add_argument("--loan-type", action="append", metavar="TYPE")
    r.add_argument("--ruleset-version", metavar="VERSION")
    r.add_argument("--workers", type=int, metavar="N")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.set_defaults(run=_delegate("service.replay", "replay_command"))

    s = sub.add_parser("serve", help="run the HTTP service (gunicorn)")
    s.add_argument("--config", metavar="FILE")
    s.add_argument("--bind", metavar="HOST:PORT")
    s.add_argument("--workers", type=int)
    s.set_defaults(run=_delegate("service.api.commands", "serve_command"))

    a = sub.add_parser("audit", help="the audit log")
    a.add_argument("--config", metavar="FILE")
    a.add_argument("--url", metavar="URL", help="audit store URL (default: from config)")
    asub = a.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    asub.add_parser("verify", help="check the hash chain").set_defaults(
        run=_delegate("service.api.commands", "audit_verify_command"))
    show = asub.add_parser("show", help="print one record")
    show.add_argument("id")
    show.set_defaults(run=_delegate("service.api.commands", "audit_show_command"))

    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = ksub.add_parser("new", help="create a key and print it once")
    new.add_argument("--scope", action="append", required=True,
                     choices=("decide", "audit:read", "admin"))
    new.add_argument("--name", default=None)
    new.set_defaults(run=_delegate("service.api.commands", "keys_new_command"))
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args, out) or 0)
    except CliError as exc:
        print(f"deficiency: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0




if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
