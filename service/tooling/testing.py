"""`deficiency test`: the policy's own YAML test cases, with rule and threshold coverage.

A test file under `<rules>/tests/` looks like::

    fixtures:                      # optional named fact sets to build cases on
      car: {jurisdiction: OH, loan: {...}, collateral: {...}, disposition: {...}}
    cases:
      - name: car sold at auction, no negotiation
        base: car                  # optional: a fixture, deep-merged under `facts`
        facts: {loan: {fees: 25.00}}
        expect:                    # a subset of the decision JSON
          outcome: {bearer: borrower, borrower_owes: 2025.00}
        decided_by: consumer-goods-default   # optional: the rule that set the bearer

Mistakes in a test file get the rule files' diagnostics (`file:line:column: error: …
(hint: did you mean …?)`): unknown keys, fixtures and fact fields, expected paths that
are not part of a decision, values an output can never have, rule ids that are not
rules of the ruleset, and every invalid fact at the key or value that made it so. They
are authoring errors: listed one per line, and `deficiency test` fails.
"""

from __future__ import annotations

import datetime
import difflib
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from .. import facts as facts_mod
from ..policy.loader import Problem
from ..policy.model import Rule, Ruleset
from ..policy.schema import AMOUNT_FIELDS, LIST_OUTPUTS, OUTPUT_FIELDS
from ..policy.yamlsafe import Pos, PosDict, PosList, YamlError, load_yaml
from .coverage import Coverage

CASE_KEYS = {"name", "base", "facts", "expect", "decided_by", "as_of"}
FILE_KEYS = {"fixtures", "cases"}

# What `expect` can name: every field of the decision JSON (service.engine.decide), as
# "object" (compared field by field), "list" (compared whole) or "value".
DECISION_PATHS: dict[str, str] = {
    "decision_id": "value", "loan_id": "value", "as_of": "value",
    "amounts": "object", **{f"amounts.{a}": "value" for a in AMOUNT_FIELDS},
    **{p.partition(".")[0]: "object" for p in (*OUTPUT_FIELDS, *LIST_OUTPUTS) if "." in p},
    **dict.fromkeys(OUTPUT_FIELDS, "value"), **dict.fromkeys(LIST_OUTPUTS, "list"),
    "ruleset": "object", "ruleset.name": "value", "ruleset.version": "value",
    "ruleset.sha256": "value", "trace": "list", "evaluated_at": "value", "duration_ms": "value",
}
# Every fact path a facts document can hold, objects included (loan, disposition.costs).
FACT_PATHS: tuple[str, ...] = tuple(sorted(
    {".".join(f.split(".")[:i]) for f in facts_mod.FACT_FIELDS
     for i in range(1, f.count(".") + 2)}))


@dataclass
class Case:
    file: str
    line: int
    name: str
    facts: dict
    expect: dict
    decided_by: str | None
    pos: Pos | None = None  # the case in its test file
    problems: list[Problem] = field(default_factory=list)  # authoring errors found on load
    # fact path (as FactsInvalid names it) -> where its key and its value are written
    fact_pos: dict[str, tuple[Pos, Pos]] = field(default_factory=dict)
    # rule ids the case names, checked against the ruleset: (what, rule id, position)
    rule_refs: list[tuple[str, str, Pos]] = field(default_factory=list)
    skip: frozenset[str] = frozenset()  # expect paths reported as problems, not compared
    runnable: bool = True  # False: the case could not be built; its problems say why


@dataclass
class CaseResult:
    case: Case
    failures: list[str]  # the problems' text first, then the differences
    seconds: float
    decision: dict | None = None
    problems: list[Problem] = field(default_factory=list)  # authoring errors


@dataclass
class Report:
    results: list[CaseResult]
    rules_total: int
    rules_applied: set[str]
    # threshold label -> (seen true, seen false, seen exactly at the boundary); a
    # threshold whose limit looks up a table is one label per entry (see .coverage)
    thresholds: dict[str, tuple[bool, bool, bool]]
    load_errors: list[str] = field(default_factory=list)
    # constant entry label, "table[KEY] (used by rule-id)" -> exercised by some case
    entries: dict[str, bool] = field(default_factory=dict)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.failures]

    @property
    def coverage(self) -> float:
        return 100.0 * len(self.rules_applied) / self.rules_total if self.rules_total else 100.0

    @property
    def entries_covered(self) -> int:
        return sum(self.entries.values())

    @property
    def entry_coverage(self) -> float:
        return 100.0 * self.entries_covered / len(self.entries) if self.entries else 100.0


def _plain(value: Any) -> Any:
    """YAML values as the JSON a client would post (dates as text, money as exact numbers)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --------------------------------------------------------------------------- hints


def _hint(word: str, candidates: Iterable[Any]) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return f"did you mean {close[0]}?" if close else ""


def _path_hint(path: str, known: Iterable[str]) -> str:
    """'did you mean …?' for an unknown dotted path: the same name under another parent,
    else the name beside it that it begins (or that is closest), else the closest path."""
    known = list(known)
    parent, _, name = path.rpartition(".")
    elsewhere = [p for p in known if p.rpartition(".")[2] == name]
    if len(elsewhere) == 1:
        return f"did you mean {elsewhere[0]}?"
    beside = {p.rpartition(".")[2]: p for p in known if p.rpartition(".")[0] == parent}
    begun = [p for n, p in beside.items() if len(name) >= 3 and n.startswith(name)]
    if len(begun) == 1:
        return f"did you mean {begun[0]}?"
    close = difflib.get_close_matches(name, list(beside), n=1)
    return f"did you mean {beside[close[0]]}?" if close else _hint(path, known)


def _choice_hint(value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not choices:
        return ""
    for spelling in (value.lower(), value.upper()):
        if spelling in choices:
            return f"did you mean {spelling}?"
    return _hint(value, choices)


# --------------------------------------------------------------------------- loading


def load_cases(tests_dir: Path) -> tuple[list[Case], list[str]]:
    """The cases of every test file, and the problems outside any case (as text). A
    case's own problems are in `Case.problems` and fail it when it runs."""
    cases, problems = _load(tests_dir)
    return cases, [str(p) for p in problems]


def _load(tests_dir: Path) -> tuple[list[Case], list[Problem]]:
    """The cases, and the problems outside any case (a file that does not load, a
    fixture that is not a mapping, a list item that is not a case)."""
    cases: list[Case] = []
    problems: list[Problem] = []
    if not tests_dir.is_dir():
        return cases, [Problem(Pos(str(tests_dir), 0, 0), "no tests directory",
                               "test cases are YAML files in the ruleset's tests/")]
    for path in sorted(tests_dir.glob("*.y*ml")):
        data = path.read_bytes()
        try:
            doc = load_yaml(data, str(path))
        except YamlError as exc:
            problems.append(Problem(exc.pos, exc.message, exc.hint))
            continue
        _load_file(str(path), doc, cases, problems)
    return cases, problems


def _load_file(file: str, doc: Any, cases: list[Case], problems: list[Problem]) -> None:
    shape = "a test file has 'cases:' (a list) and optional 'fixtures:'"
    if not isinstance(doc, PosDict):
        problems.append(Problem(getattr(doc, "pos", Pos(file, 1, 1)), shape))
        return
    for key in doc:
        if key not in FILE_KEYS:
            problems.append(Problem(doc.key_pos[key], f"unknown key {key!r}",
                                    _hint(str(key), FILE_KEYS) or "a test file has: "
                                    + ", ".join(sorted(FILE_KEYS))))
    fixtures: dict[Any, Any] = {}
    if isinstance(doc.get("fixtures"), PosDict):
        fixtures = doc["fixtures"]
        for name, facts in fixtures.items():
            if not isinstance(facts, PosDict):
                problems.append(_bad_fixture(fixtures, name))
    elif doc.get("fixtures") is not None:
        problems.append(Problem(doc.value_pos["fixtures"],
                                "fixtures must be a mapping of name: facts"))
    items = doc.get("cases")
    if not isinstance(items, PosList):
        problems.append(Problem(doc.value_pos["cases"] if "cases" in doc else doc.pos, shape))
        return
    for item, pos in zip(items, items.item_pos, strict=True):
        case = _case(file, item, pos, fixtures, problems)
        if case is not None:
            cases.append(case)


def _case(file: str, item: Any, pos: Pos, fixtures: dict[Any, Any],
          problems: list[Problem]) -> Case | None:
    """One case; it carries its problems. A case that cannot be built (no expect, an
    unknown fixture …) is not run, and fails. None when the item is not a mapping."""
    if not isinstance(item, PosDict):
        problems.append(Problem(pos, "a case is a mapping with name, facts (or base) and "
                                "expect"))
        return None
    own: list[Problem] = []
    name = str(item["name"]) if "name" in item else "(a case without a name)"

    def broken(problem: Problem) -> Case:
        return Case(file, pos.line, name, {}, {}, None, pos, [*own, problem], runnable=False)

    for key in item:
        if key not in CASE_KEYS:
            own.append(Problem(item.key_pos[key], f"unknown case key {key!r}",
                               _hint(str(key), CASE_KEYS) or "a case may have: "
                               + ", ".join(sorted(CASE_KEYS))))
    missing = [k for k in ("name", "expect") if k not in item]
    if missing:
        return broken(Problem(pos, "a case needs name, facts (or base) and expect; this one "
                              f"has no {' and no '.join(missing)}"))
    facts: dict = {}
    fact_pos: dict[str, tuple[Pos, Pos]] = {}
    if "base" in item:
        base = item["base"]
        if not isinstance(base, str) or base not in fixtures:
            return broken(Problem(
                item.value_pos["base"], f"unknown fixture {base!r}",
                _hint(str(base), fixtures) or (f"the fixtures of this file: "
                                               f"{', '.join(map(str, fixtures))}" if fixtures
                                               else "this file has no 'fixtures:'")))
        if not isinstance(fixtures[base], PosDict):
            return broken(_bad_fixture(fixtures, base))
        facts = _plain(fixtures[base])
        _fact_positions(fixtures[base], "", fact_pos)
    own_facts = item.get("facts")
    if own_facts is not None and not isinstance(own_facts, PosDict):
        return broken(Problem(item.value_pos["facts"], "facts must be a mapping: the facts as "
                              "posted, e.g. {jurisdiction: OH, loan: {...}}"))
    if not isinstance(item["expect"], PosDict):
        return broken(Problem(item.value_pos["expect"], "expect must be a mapping: part of "
                              "the decision, e.g. {outcome: {bearer: lender}}"))
    if own_facts is not None:
        facts = _merge(facts, _plain(own_facts))
        _fact_positions(own_facts, "", fact_pos)
    if "as_of" in item:
        facts["as_of"] = _plain(item["as_of"])
        fact_pos["as_of"] = (item.key_pos["as_of"], item.value_pos["as_of"])
    skip: set[str] = set()
    rule_refs: list[tuple[str, str, Pos]] = []
    decided_by = item.get("decided_by")
    if isinstance(decided_by, str):
        rule_refs.append(("decided_by", decided_by, item.value_pos["decided_by"]))
    elif decided_by is not None:
        own.append(Problem(item.value_pos["decided_by"], "decided_by must be a rule id",
                           "the id of the rule that sets outcome.bearer"))
        decided_by = None
    _check_expect(item["expect"], "", own, skip, rule_refs)
    return Case(file, pos.line, name, facts, _plain(item["expect"]), decided_by, pos, own,
                fact_pos, rule_refs, frozenset(skip))


def _bad_fixture(fixtures: PosDict, name: Any) -> Problem:
    return Problem(fixtures.value_pos[name], f"fixture {name!r} must be a mapping of facts")


def _fact_positions(node: PosDict, parent: str, out: dict[str, tuple[Pos, Pos]]) -> None:
    """Fact path (spelled as FactsInvalid spells it) -> where its key and value stand;
    later calls override, as the case's facts override its fixture's."""
    for key, value in node.items():
        path = facts_mod.field_path(parent, key)
        if not isinstance(value, PosDict):  # replaces the fixture's object, if any
            for stale in [p for p in out if p.startswith((f"{path}.", f"{path}["))]:
                del out[stale]
        out[path] = (node.key_pos[key], node.value_pos[key])
        if isinstance(value, PosDict):
            _fact_positions(value, path, out)


def _check_expect(expect: PosDict, parent: str, problems: list[Problem], skip: set[str],
                  rule_refs: list[tuple[str, str, Pos]]) -> None:
    """Expectations that can never hold: paths that are not in a decision, an object
    where a value is (or the reverse), values an output cannot have. Each is a problem,
    and its path is not compared."""
    for key, value in expect.items():
        path = f"{parent}.{key}" if parent else str(key)
        kpos, vpos = expect.key_pos[key], expect.value_pos[key]
        kind = DECISION_PATHS.get(path)
        if kind is None:
            problems.append(Problem(kpos, f"{path}: unknown output path",
                                    _path_hint(path, DECISION_PATHS)
                                    or "expect holds part of the decision JSON"))
            skip.add(path)
        elif kind == "object":
            if isinstance(value, PosDict):
                _check_expect(value, path, problems, skip, rule_refs)
            else:
                fields = [p[len(path) + 1:] for p in DECISION_PATHS if p.startswith(f"{path}.")]
                problems.append(Problem(vpos, f"{path} is an object: expect some of its fields",
                                        f"its fields: {', '.join(fields)}"))
                skip.add(path)
        elif isinstance(value, PosDict):
            problems.append(Problem(vpos, f"{path} is {'a list' if kind == 'list' else 'a value'}"
                                    ", not an object"))
            skip.add(path)
        elif kind == "list":
            if not isinstance(value, PosList):
                problems.append(Problem(vpos, f"{path} is a list: expect every item, in order"))
                skip.add(path)
            elif path == "trace":
                for i, entry in enumerate(value):
                    if isinstance(entry, PosDict) and isinstance(entry.get("rule"), str):
                        rule_refs.append((f"trace[{i}].rule", entry["rule"],
                                          entry.value_pos["rule"]))
        elif path in OUTPUT_FIELDS and OUTPUT_FIELDS[path][0] == "enum":
            _kind, values, nullable = OUTPUT_FIELDS[path]
            assert values is not None
            if not (value is None and nullable) and value not in values:
                allowed = ", ".join((*values, "null") if nullable else values)
                problems.append(Problem(vpos, f"{path}: {_plain(value)!r} is not a value it "
                                        "can have", _choice_hint(value, values)
                                        or f"one of: {allowed}"))
                skip.add(path)


# --------------------------------------------------------------------------- running


def _compare(expected: Any, actual: Any, path: str, out: list[str],
             skip: frozenset[str] = frozenset()) -> None:
    if path in skip:
        return
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            out.append(f"{path}: expected an object, got {actual!r}")
            return
        for k, v in expected.items():
            sub = f"{path}.{k}".lstrip(".")
            if sub in skip:
                continue
            if k not in actual:
                out.append(f"{sub}: missing from the decision")
            else:
                _compare(v, actual[k], sub, out, skip)
        return
    if isinstance(expected, (Decimal, int)) and not isinstance(expected, bool) and isinstance(
            actual, str):
        try:
            if Decimal(actual) == Decimal(expected):
                return
        except InvalidOperation:
            pass
    elif expected == actual and type(expected) is type(actual):
        return
    out.append(f"{path}: expected {expected!r}, got {actual!r}")


def _rule_problems(case: Case, rules: dict[str, Rule]) -> list[Problem]:
    out = []
    for what, rule_id, pos in case.rule_refs:
        rule = rules.get(rule_id)
        if rule is None:
            out.append(Problem(pos, f"{what}: no such rule: {rule_id}", _hint(rule_id, rules)))
        elif what == "decided_by" and not rule.sets("outcome.bearer"):
            deciders = [r for r in rules if rules[r].sets("outcome.bearer")]
            out.append(Problem(pos, f"decided_by: rule {rule_id} does not set outcome.bearer",
                               _hint(rule_id, deciders)
                               or "decided_by names the rule that decided the bearer"))
    return out


def _facts_problems(case: Case, exc: facts_mod.FactsInvalid) -> list[Problem]:
    """Each invalid fact at its key (unknown fields) or value; a missing one at the object
    that lacks it, else at the case."""
    here = case.pos or Pos(case.file, case.line, 1)
    out = []
    for err in exc.errors:
        text = f"facts invalid: {err.path}: {err.message}" if err.path else (
            f"facts invalid: {err.message}")
        written = case.fact_pos.get(err.path)
        if err.message == "unknown field":
            out.append(Problem(written[0] if written else here, text,
                               _path_hint(err.path, FACT_PATHS)))
        elif written:
            value: Any = case.facts
            for part in err.path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            out.append(Problem(written[1], text,
                               _choice_hint(value, facts_mod.FACT_ENUMS.get(err.path, ()))))
        else:
            pos, parent = here, err.path
            while "." in parent:
                parent = parent.rpartition(".")[0]
                if parent in case.fact_pos:
                    pos = case.fact_pos[parent][0]
                    break
            out.append(Problem(pos, text))
    return out


def run_cases(rs: Ruleset, cases: list[Case], matcher: str = "durable") -> Report:
    from ..engine.decide import Decider

    decider = Decider(rs, matcher)
    rules = {r.id: r for r in rs.rules}
    results: list[CaseResult] = []
    applied: set[str] = set()
    coverage = Coverage(rs)
    try:
        for case in cases:
            started = time.perf_counter()
            problems = [*case.problems, *_rule_problems(case, rules)]
            if not case.runnable:
                results.append(CaseResult(case, [str(p) for p in problems], 0.0, None, problems))
                continue
            failures: list[str] = []
            decision = None
            try:
                facts = facts_mod.validate_facts(case.facts)
            except facts_mod.FactsInvalid as exc:
                problems.extend(_facts_problems(case, exc))
            else:
                amounts, res = decider.evaluate(facts)
                decision = decider.build(facts, amounts, res)
                _compare(case.expect, decision, "", failures, case.skip)
                decider_rule = rules.get(case.decided_by or "")
                if decider_rule is not None and decider_rule.sets("outcome.bearer"):
                    got = res.winners.get("outcome.bearer")
                    if got != case.decided_by:
                        failures.append(f"decided_by: expected {case.decided_by}, got {got}")
                applied.update(t["rule"] for t in decision["trace"] if t["applied"])
                coverage.add(res.ctx, decision["trace"])
            problems = list(dict.fromkeys(problems))
            results.append(CaseResult(case, [str(p) for p in problems] + failures,
                                      time.perf_counter() - started, decision, problems))
    finally:
        decider.close()
    return Report(results, len(rs.rules), applied,
                  {k: (v[0], v[1], v[2]) for k, v in coverage.thresholds.items()},
                  entries=coverage.entries)


def run_tests(rules_dir: str, out: TextIO = sys.stdout, min_coverage: float | None = None,
              junit: str | None = None) -> int:
    from ..policy.loader import PolicyError, load_ruleset

    try:
        rs = load_ruleset(rules_dir)
    except PolicyError as exc:
        for p in exc.problems:
            out.write(f"{p}\n")
        return 2
    cases, load_problems = _load(Path(rules_dir) / "tests")
    report = run_cases(rs, cases)
    # Mistakes in the test files first, in file order, once each (a fixture's for all
    # its cases): one line each, file:line:column first, like `deficiency check`.
    problems = sorted(dict.fromkeys([*load_problems,
                                     *(p for r in report.results for p in r.problems)]),
                      key=lambda p: p.pos)
    for p in problems:
        out.write(f"{p}\n")
    for r in report.results:
        differences = r.failures[len(r.problems):]
        if differences:
            out.write(f"FAIL {r.case.name} ({r.case.file}:{r.case.line})\n")
            for f in differences:
                out.write(f"     {f}\n")
    never = [r.id for r in rs.rules if r.id not in report.rules_applied]
    one_sided = [k for k, (t, f, _b) in report.thresholds.items() if not (t and f)]
    no_boundary = [k for k, (_t, _f, b) in report.thresholds.items() if not b]
    out.write(f"{len(report.results) - len(report.failed)} passed, {len(report.failed)} failed"
              f" ({len(cases)} cases, ruleset {rs.name} {rs.version})\n")
    if problems:
        out.write(f"{len(problems)} error{'s' if len(problems) != 1 else ''} in the test files"
                  " (listed above)\n")
    out.write(f"rule coverage: {len(report.rules_applied)}/{report.rules_total} rules applied "
              f"({report.coverage:.1f}%)\n")
    if never:
        out.write("rules never applied: " + ", ".join(never) + "\n")
    out.write(f"constant entry coverage: {report.entries_covered}/{len(report.entries)} entries"
              f" ({report.entry_coverage:.1f}%)\n")
    unexercised = [k for k, covered in report.entries.items() if not covered]
    if unexercised:
        out.write("constant entries never exercised:\n" + "".join(
            f"  {k}\n" for k in unexercised))
    if one_sided:
        out.write("thresholds not tested on both sides:\n" + "".join(
            f"  {k}\n" for k in one_sided))
    if no_boundary:
        out.write("thresholds never tested exactly at the boundary:\n" + "".join(
            f"  {k}\n" for k in no_boundary))
    if junit:
        _write_junit(junit, report)
    if problems or report.failed:
        return 1
    # --min-coverage applies to each kind on its own: rules, then constant entries.
    below = [(what, figure) for what, figure in (("coverage", report.coverage),
                                                 ("constant entry coverage",
                                                  report.entry_coverage))
             if min_coverage is not None and figure < min_coverage]
    for what, figure in below:
        out.write(f"{what} {figure:.1f}% is below --min-coverage {min_coverage}\n")
    return 1 if below else 0


def _write_junit(path: str, report: Report) -> None:
    suite = ET.Element("testsuite", name="policy", tests=str(len(report.results)),
                       failures=str(len(report.failed)))
    for r in report.results:
        tc = ET.SubElement(suite, "testcase", classname=Path(r.case.file).stem,
                           name=r.case.name, time=f"{r.seconds:.4f}")
        if r.failures:
            ET.SubElement(tc, "failure", message=r.failures[0]).text = "\n".join(r.failures)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
