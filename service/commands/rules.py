"""`deficiency decide`, `deficiency check` and `deficiency test`: the rules directory
(`--rules`/RULES, else `rules/` of the working directory, else the project's own),
facts from a file or stdin (one JSON object, or JSON Lines) and the ruleset tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from .. import facts as facts_mod
from .. import strictjson
from ..messages import first_and_more
from .errors import CliError

DEFAULT_RULES = Path(__file__).resolve().parents[2] / "rules"
MAX_INPUT_BYTES = 256 * 1024 * 1024


def default_rules_dir() -> Path:
    """The `rules/` directory of the working directory, else the project's own."""
    here = Path.cwd() / "rules"
    return here if here.is_dir() else DEFAULT_RULES


def _load_decider(rules: str | None, matcher: str = "durable"):
    from ..engine.decide import Decider
    from ..policy.loader import PolicyError, load_ruleset

    directory = Path(rules) if rules else default_rules_dir()
    try:
        rs = load_ruleset(directory)
    except PolicyError as exc:
        found = first_and_more(exc.problems, f"run `deficiency check {directory}`")
        raise CliError(f"invalid ruleset: {found}") from None
    from ..engine.runtime import EngineError

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
        strictjson.parse_json(lines[0])
    except facts_mod.FactsInvalid:
        return False
    return True


def explain_text(decision: dict) -> str:
    """A decision in plain language (`deficiency decide --explain`)."""
    from ..amounts import dollars  # money spelled one way, as the explanation spells it

    o = decision["outcome"]
    a = {k: dollars(v) for k, v in decision["amounts"].items()}
    lines = [
        f"Loan {decision['loan_id']} - decision {decision['decision_id']} "
        f"as of {decision['as_of']}",
        f"Debt {a['debt']}, costs {a['costs']}, credits {a['credits']}, claim {a['claim']}, "
        f"sale proceeds {a['proceeds']}: deficiency {a['deficiency']}, surplus {a['surplus']}.",
        f"Outcome: {o['bearer']} ({o['action']}); borrower owes {dollars(o['borrower_owes'])}, "
        f"lender absorbs {dollars(o['lender_absorbs'])}, surplus to borrower "
        f"{dollars(o['surplus_to_borrower'])}"
        + (f"; deadline {o['deadline']}" if o["deadline"] else "") + ".",
        f"Basis: {o['basis']}",
        "",
        *decision["explanation"],
    ]
    cr, tax = decision["credit_reporting"], decision["tax"]
    lines += ["", f"Credit reporting: {cr['category']} (balance {dollars(cr['balance'])})."]
    if tax["form"]:
        code = f", event code {tax['event_code']}" if tax["event_code"] else ""
        lines.append(f"Tax: Form {tax['form']}, canceled debt "
                     f"{dollars(tax['canceled_debt'])}{code}.")
    else:
        lines.append("Tax: no information return.")
    lines += tax["notes"]
    applied = [t["rule"] for t in decision["trace"] if t["applied"]]
    r = decision["ruleset"]
    lines.append(f"Rules applied: {', '.join(applied)} ({r['name']} {r['version']}).")
    return "\n".join(lines)


def decide_command(args: argparse.Namespace, out: TextIO) -> int:
    decider = _load_decider(args.rules)
    data = _read_input(args.file)
    if _is_json_lines(data):
        failed = 0
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                decision = decider.decide(strictjson.parse_json(line))
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
        decision = decider.decide(strictjson.parse_json(data))
    except facts_mod.FactsInvalid as exc:
        raise CliError(f"invalid facts: {exc}", 1) from None
    out.write(explain_text(decision) + "\n" if args.explain
              else json.dumps(decision, indent=2, ensure_ascii=False) + "\n")
    return 0


def check_command(args: argparse.Namespace, out: TextIO) -> int:
    from ..tooling.check import run_check

    return run_check(args.rules or str(default_rules_dir()), fmt=args.format, out=out)


def require_checked(directory: Path | str, what: str = "ruleset") -> None:
    """Nothing when the directory passes `deficiency check` (load errors, engine limits,
    gaps, conflicts); otherwise a CliError (exit 2) naming the first problem."""
    from ..tooling.check import check_ruleset

    problems, _summary, _findings = check_ruleset(str(directory))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise CliError(f"invalid {what}: {first_and_more(errors)}; `deficiency check "
                       f"{directory}` rejects it and lists every problem")


def test_command(args: argparse.Namespace, out: TextIO) -> int:
    from ..tooling.testing import run_tests

    directory = args.rules or str(default_rules_dir())
    require_checked(directory)  # passing tests must never vouch for a rejected ruleset
    return run_tests(directory, out=out, min_coverage=args.min_coverage, junit=args.junit)
