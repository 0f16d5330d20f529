"""`deficiency check [DIR]`: every problem of a ruleset with file:line:column and a hint.

Loading validates syntax, keys, types, enums, paths, expressions, constants and
stage order; compiling for the engine checks its limits (ENGINE-NOTES). Then the
static analysis (`analysis/`) looks for gaps (no rule decides the bearer),
equal-priority conflicts (errors) and shadowed or unreachable rules (warnings),
each gap and conflict with a concrete fact set confirmed by the reference
evaluator. Exit 0 when there is no error (warnings allowed), 1 otherwise;
`--format json` for CI tools.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from ..policy.loader import PolicyError, Problem, load_ruleset
from ..policy.yamlsafe import Pos


def check_ruleset(directory: str, *, analyse: bool = True, time_budget: float | None = None,
                  isolated: bool = False) -> tuple[list[Problem], dict, list]:
    """All problems (errors and warnings), a summary of the ruleset and the analysis
    findings (`analysis.Finding`, each also listed among the problems).

    `isolated`: the analysis runs in a process of its own (`analyse_apart`), so that a
    server worker checking a candidate on reload keeps deciding at full speed; the
    summary's sha256 is then the one the analysed files had (a different one means
    the files changed under the check)."""
    from ..engine.runtime import DurableMatcher, EngineError

    try:
        rs = load_ruleset(directory)
    except PolicyError as exc:
        return exc.problems, {}, []
    summary: dict = {"name": rs.name, "version": rs.version, "sha256": rs.sha256,
                     "stages": list(rs.stages), "rules": len(rs.rules)}
    try:
        DurableMatcher(rs).close()
    except EngineError as exc:
        return [Problem(Pos(directory, 0, 0), f"engine limit: {exc}")], summary, []
    if not analyse:
        return [], summary, []
    from . import analysis

    kwargs = {} if time_budget is None else {"time_budget": time_budget}
    if isolated:
        summary["sha256"], findings, stats = analyse_apart(directory, kwargs)
    else:
        findings, stats = analysis.analyse(rs, **kwargs)
    summary["analysis"] = stats
    problems = [Problem(f.pos or Pos(rs.directory, 0, 0), f.message, severity=f.severity)
                for f in findings]
    return problems, summary, findings


def analyse_apart(directory: str, kwargs: dict) -> tuple[str, list, dict]:
    """`_analyse_directory` in a spawned process (its own interpreter: the analysis is
    CPU-bound Python, which would otherwise share this process's interpreter lock with
    the requests it serves). When no process can be started, in this one; when the
    process dies, its findings are one error (so the candidate is refused, never
    accepted unexamined)."""
    import concurrent.futures
    import multiprocessing

    from .analysis import Finding

    try:
        pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"))
    except OSError:
        return _analyse_directory(directory, kwargs)
    with pool:
        try:
            return pool.submit(_analyse_directory, directory, kwargs).result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            failed = Finding("incomplete", "error", "",
                             f"the analysis' process failed ({exc}); the ruleset was not "
                             "analysed")
            return load_ruleset(directory).sha256, [failed], {}


def _analyse_directory(directory: str, kwargs: dict) -> tuple[str, list, dict]:
    """The analysis of the ruleset in `directory`: (its sha256, findings, statistics).
    A ruleset that no longer loads is reported as a changed content (sha256 "")."""
    from . import analysis

    try:
        rs = load_ruleset(directory)
    except (PolicyError, OSError):
        return "", [], {}
    findings, stats = analysis.analyse(rs, **kwargs)
    return rs.sha256, findings, stats


def run_check(directory: str, fmt: str = "text", out: TextIO = sys.stdout, *,
              time_budget: float | None = None) -> int:
    problems, summary, findings = check_ruleset(directory, time_budget=time_budget)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if fmt == "json":
        out.write(json.dumps({
            "ok": not errors,
            # False: load errors or an engine limit stopped the check before the analysis.
            "analysed": bool(summary.get("analysis")),
            "ruleset": summary or None,
            "problems": [{"file": p.pos.file, "line": p.pos.line, "column": p.pos.column,
                          "severity": p.severity, "message": p.message, "hint": p.hint}
                         for p in problems],
            "findings": [f.to_json() for f in findings],
        }, indent=2, ensure_ascii=False) + "\n")
        return 1 if errors else 0
    if findings:
        for f in findings:
            where = f"{f.pos}" if f.pos else f"{summary.get('name', directory)}"
            out.write(f"{where}: {f.severity}: {f.message}\n")
            for line in f.details:
                out.write(f"    {line}\n")
            if f.example is not None:
                label = ("facts decided 'no rule decided' by the reference evaluator"
                         if f.kind == "gap" else "facts that show it")
                out.write(f"    example {label}:\n")
                out.write(f"      {json.dumps(f.example, ensure_ascii=False)}\n")
    else:
        for p in problems:
            out.write(f"{p}\n")
    if summary and not errors:
        stats = summary.get("analysis")
        analysed = (f"; analysed in {stats['seconds']:.2f} s" if stats else "")
        verdict = ("no gaps or conflicts found, but the analysis is incomplete"
                   if any(f.kind == "incomplete" for f in findings) else "no gaps, no conflicts")
        note = f"; {len(warnings)} warning(s)" if warnings else ""
        out.write(f"ok: {summary['name']} {summary['version']}: {summary['rules']} rules in "
                  f"stages {', '.join(summary['stages'])}; {verdict}{note}"
                  f"{analysed}; sha256 {summary['sha256'][:16]}…\n")
    elif errors:
        out.write(f"{len(errors)} error(s)" + (f", {len(warnings)} warning(s)" if warnings
                                               else "") + "\n")
        if not summary.get("analysis"):
            what = "load errors" if not summary else "engine limit"
            out.write(f"not analysed yet: the search for gaps, conflicts and shadowed rules "
                      f"runs once the {what} above {'are' if what == 'load errors' else 'is'} "
                      "fixed\n")
    return 1 if errors else 0
