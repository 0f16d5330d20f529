"""`deficiency check [DIR]`: every problem of a ruleset with file:line:column and a hint.

Loading validates syntax, keys, types, enums, paths, expressions, constants and
stage order; compiling for the engine checks its limits (ENGINE-NOTES). Exit 0
when clean, 1 on errors; `--format json` for CI tools.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from .loader import PolicyError, Problem, load_ruleset
from .yamlsafe import Pos


def check_ruleset(directory: str) -> tuple[list[Problem], dict]:
    """All problems (errors and warnings) and a summary of the ruleset."""
    from ..engine.runtime import DurableMatcher, EngineError

    try:
        rs = load_ruleset(directory)
    except PolicyError as exc:
        return exc.problems, {}
    summary = {"name": rs.name, "version": rs.version, "sha256": rs.sha256,
               "stages": list(rs.stages), "rules": len(rs.rules)}
    try:
        DurableMatcher(rs).close()
    except EngineError as exc:
        return [Problem(Pos(directory, 0, 0), f"engine limit: {exc}")], summary
    return [], summary


def run_check(directory: str, fmt: str = "text", out: TextIO = sys.stdout) -> int:
    problems, summary = check_ruleset(directory)
    errors = [p for p in problems if p.severity == "error"]
    if fmt == "json":
        out.write(json.dumps({
            "ok": not errors,
            "ruleset": summary or None,
            "problems": [{"file": p.pos.file, "line": p.pos.line, "column": p.pos.column,
                          "severity": p.severity, "message": p.message, "hint": p.hint}
                         for p in problems],
        }, indent=2) + "\n")
    else:
        for p in problems:
            out.write(f"{p}\n")
        if summary and not errors:
            out.write(f"ok: {summary['name']} {summary['version']}: {summary['rules']} rules in "
                      f"stages {', '.join(summary['stages'])}; sha256 {summary['sha256'][:16]}…\n")
        elif errors:
            out.write(f"{len(errors)} error(s)\n")
    return 1 if errors else 0
