"""A ruleset reviewed for people: what `deficiency check` reports on it and, when its
directory holds policy tests, their results and the rule, constant-entry and threshold
coverage — as plain data, so the console can have it made in a process of its own
(`review_apart`) while the worker goes on deciding."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..policy.loader import PolicyError, load_ruleset
from .check import run_check
from .testing import load_cases, run_cases


def review_ruleset(directory: str, *, with_tests: bool) -> dict[str, Any]:
    out = io.StringIO()
    check_ok = run_check(directory, out=out) == 0
    review: dict[str, Any] = {"sha256": None, "check_ok": check_ok,
                              "check_text": out.getvalue(), "tests": None}
    try:
        rs = load_ruleset(directory)
    except PolicyError:
        return review
    review["sha256"] = rs.sha256
    tests_dir = Path(directory) / "tests"
    if not with_tests or not tests_dir.is_dir():
        return review
    cases, load_problems = load_cases(tests_dir)
    report = run_cases(rs, cases)
    review["tests"] = {
        "problems": load_problems,
        "cases": [{"name": r.case.name, "file": Path(r.case.file).name, "line": r.case.line,
                   "passed": not r.failures, "failures": list(r.failures)}
                  for r in report.results],
        "passed": len(report.results) - len(report.failed),
        "failed": len(report.failed),
        "rules_applied": len(report.rules_applied), "rules_total": report.rules_total,
        "coverage": round(report.coverage, 1),
        "never_applied": [r.id for r in rs.rules if r.id not in report.rules_applied],
        "entries_covered": report.entries_covered, "entries_total": len(report.entries),
        "entry_coverage": round(report.entry_coverage, 1),
        "unexercised": [k for k, covered in report.entries.items() if not covered],
        "thresholds": [{"label": k, "below_or_above": [t, f], "boundary": b}
                       for k, (t, f, b) in report.thresholds.items()],
    }
    return review


def review_apart(directory: str, *, with_tests: bool, timeout: float) -> dict[str, Any]:
    """`review_ruleset` in a spawned process (its own interpreter lock), ended after
    `timeout` seconds (multiprocessing.TimeoutError); in this process when none can be
    started."""
    import multiprocessing

    try:
        pool = multiprocessing.get_context("spawn").Pool(1)
    except OSError:
        return review_ruleset(directory, with_tests=with_tests)
    with pool:  # leaving it terminates the process, finished or not
        review: dict[str, Any] = pool.apply_async(_review, (directory, with_tests)).get(timeout)
        return review


def _review(directory: str, with_tests: bool) -> dict[str, Any]:
    return review_ruleset(directory, with_tests=with_tests)
