"""Rule files on disk -> a validated `Ruleset`, or every problem with file:line:column.

A ruleset is the `*.yaml` files of one directory (not its `tests/`). Exactly one
file carries the header (`ruleset`, `version`, `stages`); any file may hold
`constants`, `presets` and `rules`.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import expr as ex
from .model import (
    COMPARISONS,
    EQ,
    EXISTS,
    IN,
    MISSING,
    NOT_IN,
    OPERATORS,
    All,
    AnyOf,
    Choice,
    Expr,
    Leaf,
    Literal,
    Not,
    Output,
    Rule,
    Ruleset,
    Template,
    is_date,
)
from .schema import EXPR_KIND, LIST_OUTPUTS, OUTPUT_FIELDS, input_type
from .yamlsafe import Pos, PosDict, PosList, YamlError, load_yaml

# Engine limits (ENGINE-NOTES): error 106 above 4096 rules; create_ruleset hangs
# above 512 distinct constants on one field. Kept with a margin.
MAX_RULES = 4000
MAX_CONSTANTS_PER_FIELD = 500
MAX_FILES = 200

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_VAR = re.compile(r"^vars\.[a-z_][a-z0-9_]{0,63}$")
_STAGE_REF = re.compile(r"^decided_by\.([a-z_][a-z0-9_]*)$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RESERVED_NAMES = {"min", "max", "as_of", "jurisdiction", "loan", "collateral", "disposition",
                   "negotiation", "borrower", "amounts", "outcome", "credit_reporting", "tax",
                   "explanation", "vars", "decided_by"}

# The outcome the decision stage settles (and checks against the deficiency).
SETTLED_OUTPUTS = ("outcome.bearer", "outcome.action", "outcome.borrower_owes",
                   "outcome.lender_absorbs", "outcome.basis", "outcome.surplus_to_borrower")

HEADER_KEYS = {"ruleset", "version", "description", "stages", "constants", "presets", "rules"}
RULE_KEYS = {"id", "description", "stage", "priority", "when", "then", "basis"}


@dataclass(frozen=True)
class Problem:
    pos: Pos
    message: str
    hint: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        text = f"{self.pos}: {self.severity}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class PolicyError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        problems = list(dict.fromkeys(problems))  # a preset's error shows once, not per use
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class _Fail(Exception):
    """One problem that ends the current rule's validation."""

    def __init__(self, pos: Pos, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.problem = Problem(pos, message, hint)


def _kv_pos(d: PosDict, key: str) -> Pos:
    return d.value_pos.get(key, d.pos)


def rule_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return files


def ruleset_digest(directory: Path, files: list[Path]) -> str:
    return sources_digest([(f.name, f.read_bytes()) for f in files])


def sources_digest(sources: Iterable[tuple[str, bytes]]) -> str:
    """A ruleset's sha256: over each file's name, length and bytes, in name order."""
    h = hashlib.sha256()
    for name, data in sources:
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def load_ruleset(directory: str | Path) -> Ruleset:
    """Load and fully validate a ruleset directory; raise PolicyError with every problem."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError([Problem(Pos(str(directory), 0, 0), "not a directory")])
    files = rule_files(directory)
    if not files:
        raise PolicyError([Problem(Pos(str(directory), 0, 0), "no *.yaml rule files")])
    if len(files) > MAX_FILES:
        raise PolicyError([Problem(Pos(str(directory), 0, 0), f"more than {MAX_FILES} files")])
    docs: list[tuple[str, Any]] = []
    problems: list[Problem] = []
    sources: list[tuple[str, bytes]] = []
    for f in files:
        data = f.read_bytes()  # read once: what is parsed is what the sha256 covers
        sources.append((f.name, data))
        try:
            doc = load_yaml(data, str(f))
        except YamlError as exc:
            problems.append(Problem(exc.pos, exc.message, exc.hint))
            continue
        if doc is None:
            continue
        if not isinstance(doc, PosDict):
            problems.append(Problem(Pos(str(f), 1, 1), "a rule file must be a mapping"))
            continue
        docs.append((str(f), doc))
    if problems:
        raise PolicyError(problems)
    return _Builder(directory, files, docs, sources).build()


class _Builder:
    def __init__(self, directory: Path, files: list[Path], docs: list[tuple[str, PosDict]],
                 sources: list[tuple[str, bytes]]):
        self.sources = sources
        self.directory = directory
        self.files = files
        self.docs = docs
        self.problems: list[Problem] = []
        self.numbers: dict[str, Decimal] = {}
        self.dates: dict[str, datetime.date] = {}
        self.lists: dict[str, tuple] = {}
        self.tables: dict[str, dict[str, Decimal]] = {}
        #: Where each entry of a list or table constant is written (its key, its item).
        self.entry_pos: dict[str, dict[str, Pos]] = {}
        self._reported_entries: set[tuple[str, str]] = set()  # a bad entry: said once
        self.presets: dict[str, PosDict] = {}
        self.stages: tuple[str, ...] = ()
        self.var_kinds: dict[str, tuple[str, Pos]] = {}
        self.stage_index: dict[str, int] = {}
        self.current_stage = ""
        self.output_stage: dict[str, int] = {}  # output path -> first stage setting it

    def err(self, pos: Pos, message: str, hint: str = "") -> None:
        self.problems.append(Problem(pos, message, hint))

    # -- header, constants, presets ---------------------------------------
    def build(self) -> Ruleset:
        header = None
        for file, doc in self.docs:
            for key in doc:
                if key not in HEADER_KEYS:
                    self.err(doc.key_pos[key], f"unknown key {key!r}",
                             f"a rule file may have: {', '.join(sorted(HEADER_KEYS))}")
            if "ruleset" in doc:
                if header is not None:
                    self.err(doc.key_pos["ruleset"],
                             f"second ruleset header (the first is in {header[0]})")
                else:
                    header = (file, doc)
            elif "version" in doc or "stages" in doc:
                key = "version" if "version" in doc else "stages"
                self.err(doc.key_pos[key], f"{key!r} belongs in the file with the 'ruleset' header")
        if header is None:
            self.err(Pos(str(self.directory), 0, 0), "no file declares 'ruleset:', 'version:', "
                     "'stages:'", "add them at the top of the main rule file")
            raise PolicyError(self.problems)
        name, version = self._header(header[1])
        for _file, doc in self.docs:
            if "constants" in doc:
                self._constants(doc["constants"], _kv_pos(doc, "constants"))
        for _file, doc in self.docs:
            if "presets" in doc:
                self._presets(doc["presets"], _kv_pos(doc, "presets"))
        raw_rules: list[tuple[PosDict, Pos]] = []
        for _file, doc in self.docs:
            if "rules" not in doc:
                continue
            items = doc["rules"]
            if not isinstance(items, PosList):
                self.err(_kv_pos(doc, "rules"), "'rules' must be a list of rules")
                continue
            for item, pos in zip(items, items.item_pos, strict=True):
                if not isinstance(item, PosDict):
                    self.err(pos, "a rule must be a mapping with id, description, stage, "
                             "priority, when, then")
                    continue
                raw_rules.append((item, pos))
        if len(raw_rules) > MAX_RULES:
            self.err(Pos(str(self.directory), 0, 0), f"{len(raw_rules)} rules; the engine "
                     f"supports at most {MAX_RULES}")
            raise PolicyError(self.problems)
        # Outputs each stage sets, so conditions can be checked against stage order.
        for item, _pos in raw_rules:
            stage = item.get("stage")
            then = item.get("then")
            if stage in self.stage_index and isinstance(then, PosDict):
                paths = self._then_paths(then)
                if "outcome.bearer" in paths:
                    paths.append("outcome.basis")  # the deciding rule's basis
                for path in paths:
                    idx = self.stage_index[stage]
                    self.output_stage[path] = min(self.output_stage.get(path, idx), idx)
                    value = then.get(path)
                    if isinstance(path, str) and _VAR.match(path) and path not in self.var_kinds:
                        kind = _var_kind(value)
                        if kind:
                            self.var_kinds[path] = (kind, then.value_pos[path])
        rules: list[Rule] = []
        seen: dict[str, Pos] = {}
        for order, (item, pos) in enumerate(raw_rules):
            try:
                rule = self._rule(item, pos, order)
            except _Fail as fail:
                self.problems.append(fail.problem)
                continue
            if rule.id in seen:
                self.err(item.value_pos.get("id", pos), f"duplicate rule id {rule.id!r} "
                         f"(first at {seen[rule.id]})")
                continue
            seen[rule.id] = item.value_pos.get("id", pos)
            rules.append(rule)
        self._check_field_constants(rules)
        if self.problems:
            raise PolicyError(self.problems)
        decision_stage = next(
            (s for s in self.stages if any(r.stage == s and r.sets("outcome.bearer")
                                           for r in rules)), "")
        if not decision_stage:
            self.err(Pos(str(self.directory), 0, 0), "no rule sets outcome.bearer")
            raise PolicyError(self.problems)
        for rule in rules:
            if rule.sets("outcome.bearer") and not rule.basis:
                self.err(rule.pos, f"rule {rule.id} decides the bearer but has no basis",
                         "add basis: the citation or policy reason auditors will read")
            if rule.stage != decision_stage:
                for out in rule.outputs:
                    if out.path in SETTLED_OUTPUTS:
                        self.err(out.pos, f"{out.path} can only be set in stage "
                                 f"{decision_stage}, where the bearer is decided",
                                 "later stages read the outcome; they do not change it")
        if self.problems:
            raise PolicyError(self.problems)
        return Ruleset(
            name=name, version=version, sha256=sources_digest(self.sources),
            directory=str(self.directory), files=tuple(str(f) for f in self.files),
            sources=tuple((name, data.decode("utf-8")) for name, data in self.sources),
            stages=self.stages, numbers=self.numbers, dates=self.dates, lists=self.lists,
            tables=self.tables, rules=tuple(rules),
            var_kinds={k: v[0] for k, v in self.var_kinds.items()},
            decision_stage=decision_stage,
        )

    def _then_paths(self, then: PosDict) -> list[str]:
        paths = [k for k in then if isinstance(k, str) and k != "preset"]
        preset = then.get("preset")
        if isinstance(preset, str) and preset in self.presets:
            paths += [k for k in self.presets[preset] if isinstance(k, str)]
        return paths

    def _header(self, doc: PosDict) -> tuple[str, str]:
        name = doc.get("ruleset")
        if not isinstance(name, str) or not _ID.match(name):
            self.err(_kv_pos(doc, "ruleset"), "ruleset name must be lowercase letters, digits "
                     "and dashes, e.g. deficiency-default")
            name = "invalid"
        version = doc.get("version")
        if isinstance(version, (int, Decimal)) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$",
                                                        version):
            self.err(_kv_pos(doc, "version") if "version" in doc else doc.pos,
                     "version is required: text such as 2026.11.1", "quote it: version: '1.0'")
            version = "invalid"
        stages = doc.get("stages")
        if not isinstance(stages, PosList) or not stages or not all(
                isinstance(s, str) and _NAME.match(s) for s in stages):
            self.err(_kv_pos(doc, "stages") if "stages" in doc else doc.pos,
                     "stages must be a list of stage names in order, e.g. [bearer, reporting]")
            raise PolicyError(self.problems)
        if len(set(stages)) != len(stages):
            self.err(_kv_pos(doc, "stages"), "a stage is listed twice")
        self.stages = tuple(stages)
        self.stage_index = {s: i for i, s in enumerate(self.stages)}
        return name, version

    def _constants(self, consts: Any, pos: Pos) -> None:
        if not isinstance(consts, PosDict):
            self.err(pos, "constants must be a mapping of name: value")
            return
        for name, value in consts.items():
            kpos = consts.key_pos[name]
            vpos = consts.value_pos[name]
            if not isinstance(name, str) or not _NAME.match(name):
                self.err(kpos, f"constant name {name!r} must be lowercase letters, digits and _")
                continue
            if name in _RESERVED_NAMES:
                self.err(kpos, f"{name!r} is a reserved name (a function or a path)")
                continue
            if any(name in d for d in (self.numbers, self.dates, self.lists, self.tables)):
                self.err(kpos, f"constant {name!r} is defined twice")
                continue
            if isinstance(value, bool) or value is None:
                self.err(vpos, f"constant {name}: must be a number, a date, a list of values "
                         "or a table of numbers")
            elif isinstance(value, (int, Decimal)):
                self.numbers[name] = Decimal(value)
            elif is_date(value):
                self.dates[name] = value
            elif isinstance(value, PosList):
                if not all(isinstance(v, str) for v in value) or not value:
                    self.err(vpos, f"constant {name}: a list constant holds text values")
                else:
                    self.lists[name] = tuple(value)
                    self.entry_pos[name] = {v: p for v, p in zip(value, value.item_pos,
                                                                 strict=True)}
            elif isinstance(value, PosDict):
                table: dict[str, Decimal] = {}
                for k, v in value.items():
                    if not isinstance(k, str) or isinstance(v, bool) or not isinstance(
                            v, (int, Decimal)):
                        self.err(value.key_pos[k], f"constant {name}: a table maps text keys "
                                 "to numbers, e.g. CA: 90")
                        break
                    table[k] = Decimal(v)
                else:
                    self.tables[name] = table
                    self.entry_pos[name] = {k: value.key_pos[k] for k in value}
            else:
                self.err(vpos, f"constant {name}: text constants are not supported; "
                         "write the text where it is used")

    def _presets(self, presets: Any, pos: Pos) -> None:
        if not isinstance(presets, PosDict):
            self.err(pos, "presets must be a mapping of name: outputs")
            return
        for name, outputs in presets.items():
            if not isinstance(name, str) or not _NAME.match(name):
                self.err(presets.key_pos[name], f"preset name {name!r} must be lowercase "
                         "letters, digits and _")
            elif not isinstance(outputs, PosDict) or "preset" in outputs:
                self.err(presets.value_pos[name], f"preset {name}: a mapping of output: value "
                         "(presets do not nest)")
            elif name in self.presets:
                self.err(presets.key_pos[name], f"preset {name!r} is defined twice")
            else:
                self.presets[name] = outputs

    # -- rules -------------------------------------------------------------
    def _rule(self, item: PosDict, pos: Pos, order: int) -> Rule:
        for key in item:
            if key not in RULE_KEYS:
                raise _Fail(item.key_pos[key], f"unknown rule key {key!r}",
                            f"a rule has: {', '.join(sorted(RULE_KEYS))}")
        for key in ("id", "description", "stage", "priority", "when", "then"):
            if key not in item:
                raise _Fail(pos, f"rule is missing {key!r}")
        rule_id = item["id"]
        if not isinstance(rule_id, str) or not _ID.match(rule_id):
            raise _Fail(item.value_pos["id"], "rule id must be lowercase letters, digits and "
                        "dashes (at most 100), e.g. ca-580b-purchase-money")
        description = item["description"]
        if not isinstance(description, str) or not description.strip() or len(description) > 2000:
            raise _Fail(item.value_pos["description"], "description must be text (1..2000 chars)")
        stage = item["stage"]
        if stage not in self.stage_index:
            raise _Fail(item.value_pos["stage"], f"unknown stage {stage!r}",
                        f"stages are: {', '.join(self.stages)}")
        priority = item["priority"]
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
                0 <= priority <= 1_000_000):
            raise _Fail(item.value_pos["priority"], "priority must be a whole number 0..1000000 "
                        "(higher wins)")
        basis = item.get("basis")
        if basis is not None and (not isinstance(basis, str) or len(basis) > 2000):
            raise _Fail(item.value_pos["basis"], "basis must be text (a citation or reason)")
        self.current_stage = stage
        when = self._condition(item["when"], item.value_pos["when"])
        then = item["then"]
        if not isinstance(then, PosDict):
            raise _Fail(item.value_pos["then"], "then must be a mapping of output: value")
        outputs, appends = self._then(then, rule_id)
        if basis and any(o.path == "outcome.bearer" for o in outputs) and not any(
                o.path == "outcome.basis" for o in outputs):
            # The deciding rule's basis is the outcome's basis.
            outputs.append(Output("outcome.basis", Literal(basis), item.value_pos["basis"]))
        return Rule(rule_id, description, stage, priority, when, tuple(outputs), tuple(appends),
                    basis, item.value_pos["id"], order)

    # -- conditions --------------------------------------------------------
    def _condition(self, node: Any, pos: Pos, depth: int = 0) -> Any:
        if depth > 16:
            raise _Fail(pos, "conditions nested more than 16 levels deep")
        if isinstance(node, PosList):
            return All(tuple(self._condition(c, p, depth + 1)
                             for c, p in zip(node, node.item_pos, strict=True)), pos)
        if not isinstance(node, PosDict):
            raise _Fail(pos, "a condition is a mapping such as {loan.type: mortgage} or "
                        "{all: [...]}, {any: [...]}, {not: ...}")
        parts = []
        for key, value in node.items():
            kpos = node.key_pos[key]
            vpos = node.value_pos[key]
            if key in ("all", "any"):
                if not isinstance(value, PosList) or not value:
                    raise _Fail(vpos, f"{key} takes a non-empty list of conditions")
                items = tuple(self._condition(c, p, depth + 1)
                              for c, p in zip(value, value.item_pos, strict=True))
                parts.append(All(items, kpos) if key == "all" else AnyOf(items, kpos))
            elif key == "not":
                parts.append(Not(self._condition(value, vpos, depth + 1), kpos))
            elif isinstance(key, str):
                parts.extend(self._leaves(key, value, kpos, vpos))
            else:
                raise _Fail(kpos, f"{key!r} is not a path")
        if not parts:
            raise _Fail(pos, "empty condition", "write a test, e.g. {loan.type: mortgage}")
        return parts[0] if len(parts) == 1 else All(tuple(parts), pos)

    def _path_type(self, path: str, pos: Pos) -> tuple[str, tuple | None]:
        t = input_type(path)
        if t is not None:
            return t
        if path in OUTPUT_FIELDS or _VAR.match(path) or _STAGE_REF.match(path):
            return self._output_read_type(path, pos)
        if path in LIST_OUTPUTS:
            raise _Fail(pos, f"{path} is a list output and cannot be tested")
        raise _Fail(pos, f"unknown path {path!r}", _suggest(path))

    def _output_read_type(self, path: str, pos: Pos) -> tuple[str, tuple | None]:
        here = self.stage_index[self.current_stage]
        m = _STAGE_REF.match(path)
        if m:
            stage = m.group(1)
            if stage not in self.stage_index:
                raise _Fail(pos, f"unknown stage {stage!r} in {path}")
            if self.stage_index[stage] >= here:
                raise _Fail(pos, f"{path}: stage {stage} runs at or after stage "
                            f"{self.current_stage}", "a rule can read only earlier stages")
            return "string", None
        first = self.output_stage.get(path)
        if first is None:
            raise _Fail(pos, f"no rule sets {path}")
        if first >= here:
            raise _Fail(pos, f"{path} is set in stage {self.stages[first]}, which does not run "
                        f"before stage {self.current_stage}", "a rule can read only outputs of "
                        "earlier stages")
        if path in OUTPUT_FIELDS:
            kind, values, _nullable = OUTPUT_FIELDS[path]
            return kind, values
        var = self.var_kinds.get(path)
        return (var[0] if var else "string"), None

    def _kind_of(self, name: str) -> str | None:
        """Expression kind of a name (constant or path); used by the type checker."""
        if name in self.numbers:
            return ex.NUM
        if name in self.dates:
            return ex.DATE
        if name in self.lists or name in self.tables:
            return "list"
        try:
            kind, _ = self._path_type(name, Pos("", 0, 0))
        except _Fail:
            return None
        return EXPR_KIND.get(kind, kind)

    def _table_kind(self, name: str) -> str | None:
        return ex.NUM if name in self.tables else None

    def _expr(self, text: str, pos: Pos, want: str, linear: bool) -> Expr:
        try:
            node = ex.parse(text)
            kind = ex.type_of(node, self._kind_of, self._table_kind)
        except ex.ExprError as exc:
            col = pos.column + exc.column if exc.column else pos.column
            raise _Fail(Pos(pos.file, pos.line, col), f"expression {text!r}: {exc.message}",
                        "see docs/rules.md, 'Expressions'") from None
        if linear and not ex.is_linear(node):
            raise _Fail(pos, f"expression {text!r}: in a condition only + and - are allowed",
                        "compute it in an output, or compare against a path")
        if len(ex.lookups(node)) > 1:
            raise _Fail(pos, f"expression {text!r}: at most one table lookup")
        if kind == ex.NUM and want != ex.DATE:
            kind = want
            if want == ex.INT and not _all_int(node, self.numbers):
                raise _Fail(pos, f"expression {text!r}: a whole number is needed here")
        if kind != want:
            hint = "write a date as YYYY-MM-DD without quotes" if want == ex.DATE else ""
            raise _Fail(pos, f"expression {text!r} is {_a(kind)}, but {_a(want)} is needed here",
                        hint)
        if want == ex.AMOUNT:
            for n in _nums(node, self.numbers):
                if n != n.quantize(Decimal("0.01")) and linear:
                    raise _Fail(pos, f"expression {text!r}: {n} has more than 2 decimal places")
        return Expr(node, kind, text)

    def _leaves(self, path: str, spec: Any, kpos: Pos, vpos: Pos) -> list[Leaf]:
        kind, enum = self._path_type(path, kpos)
        if isinstance(spec, PosDict):
            ops = list(spec.items())
            if not ops:
                raise _Fail(vpos, f"{path}: empty test")
            out = []
            for op, value in ops:
                if op not in OPERATORS:
                    raise _Fail(spec.key_pos[op], f"unknown operator {op!r}",
                                f"use one of {', '.join(OPERATORS)}")
                out.append(self._leaf(path, kind, enum, op, value, spec.value_pos[op]))
            return out
        return [self._leaf(path, kind, enum, EQ, spec, vpos)]

    def _leaf(self, path: str, kind: str, enum: tuple | None, op: str, value: Any,
              pos: Pos) -> Leaf:
        if op in (EXISTS, MISSING):
            if value is not True and value is not False:
                raise _Fail(pos, f"{op} takes true or false")
            if value is False:
                op = MISSING if op == EXISTS else EXISTS
            return Leaf(path, op, None, False, kind, pos)
        if op in (IN, NOT_IN):
            if isinstance(value, str) and value in (self.lists.keys() | self.tables.keys()):
                values = tuple(self.lists.get(value) or self.tables[value].keys())
                return Leaf(path, op, self._constant_entries(path, kind, enum, value, values, pos),
                            False, kind, pos, constant=value)
            elif isinstance(value, PosList) and value:
                values = tuple(value)
            else:
                raise _Fail(pos, f"{op} takes a non-empty list, or the name of a list or "
                            "table constant")
            if len(values) > MAX_CONSTANTS_PER_FIELD:
                raise _Fail(pos, f"{op} list longer than {MAX_CONSTANTS_PER_FIELD}")
            lits = tuple(self._literal(path, kind, enum, v, pos) for v in values)
            return Leaf(path, op, lits, False, kind, pos)
        numeric = kind in EXPR_KIND
        if op in COMPARISONS and not numeric:
            raise _Fail(pos, f"{path} is {_a(kind)}; {op} compares numbers and dates",
                        "use eq, ne, in or not_in")
        if value is None:
            raise _Fail(pos, f"{path}: compare with a value; to test absence use missing: true")
        if numeric and (isinstance(value, str) or op in COMPARISONS):
            if isinstance(value, bool):
                raise _Fail(pos, f"{path} is a {kind}, compared with a boolean")
            if kind == "date" and is_date(value):
                return Leaf(path, op, value, False, kind, pos)
            if kind == "date" and isinstance(value, str) and _ISO_DATE.match(value):
                return Leaf(path, op, _iso_date(value, pos), False, kind, pos)
            if isinstance(value, str):
                return Leaf(path, op, self._expr(value, pos, EXPR_KIND[kind], linear=True).node,
                            True, kind, pos)
            return Leaf(path, op, self._literal(path, kind, enum, value, pos), False, kind, pos)
        return Leaf(path, op, self._literal(path, kind, enum, value, pos), False, kind, pos)

    def _constant_entries(self, path: str, kind: str, enum: tuple | None, name: str,
                          values: tuple, used: Pos) -> tuple:
        """The entries of constant `name` as literals of `path`; a bad entry is reported
        where it is written (once, however many rules use the constant), and left out
        (the ruleset is rejected anyway, and its rules are validated on)."""
        if len(values) > MAX_CONSTANTS_PER_FIELD:
            raise _Fail(used, f"constant {name} has more than {MAX_CONSTANTS_PER_FIELD} "
                              f"entries for {path}")
        literals = []
        for entry in values:
            where = self.entry_pos.get(name, {}).get(entry, used)
            try:
                literals.append(self._literal(path, kind, enum, entry, where))
            except _Fail as exc:
                if (name, entry) not in self._reported_entries:
                    self._reported_entries.add((name, entry))
                    self.err(exc.problem.pos, f"constant {name}: {exc.problem.message} "
                             f"(used for {path} at {used})", exc.problem.hint)
        return tuple(literals)

    def _literal(self, path: str, kind: str, enum: tuple | None, value: Any, pos: Pos) -> Any:
        if kind in ("enum", "jurisdiction", "string"):
            if not isinstance(value, str):
                raise _Fail(pos, f"{path} is text; {value!r} is a {_type_name(value)}",
                            "quote it")
            if enum is not None and value not in enum:
                raise _Fail(pos, f"{path}: {value!r} is not one of {', '.join(enum)}",
                            _suggest_value(value, enum))
            if len(value) > 1000:
                raise _Fail(pos, f"{path}: text longer than 1000 characters")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise _Fail(pos, f"{path} is a boolean; {value!r} is a {_type_name(value)}",
                            "write true or false")
            return value
        if kind == "date":
            if is_date(value):
                return value
            if isinstance(value, str) and value in self.dates:
                return self.dates[value]
            raise _Fail(pos, f"{path} is a date; write YYYY-MM-DD")
        # numbers
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise _Fail(pos, f"{path} is a number ({kind}); {value!r} is a {_type_name(value)}")
        value = Decimal(value)
        if kind == "int" and value != value.to_integral_value():
            raise _Fail(pos, f"{path} is a whole number; {value} is not")
        if value != value.quantize(Decimal("0.01")):
            raise _Fail(pos, f"{path}: {value} has more than 2 decimal places")
        if abs(value) > Decimal("999999999999.99"):
            raise _Fail(pos, f"{path}: {value} is out of range")
        return value

    # -- outputs -----------------------------------------------------------
    def _then(self, then: PosDict, rule_id: str) -> tuple[list[Output], list[tuple]]:
        items: dict[str, tuple[Any, Pos]] = {}
        if "preset" in then:
            name = then["preset"]
            if name not in self.presets:
                raise _Fail(then.value_pos["preset"], f"unknown preset {name!r}",
                            f"presets: {', '.join(sorted(self.presets)) or 'none defined'}")
            preset = self.presets[name]
            for k, v in preset.items():
                items[k] = (v, preset.value_pos[k])
        for k, v in then.items():
            if k != "preset":
                items[k] = (v, then.value_pos[k])
        if not items:
            raise _Fail(then.pos, "then sets nothing")
        outputs: list[Output] = []
        appends: list[tuple] = []
        for path, (value, pos) in items.items():
            if path in LIST_OUTPUTS:
                lines = value if isinstance(value, PosList) else [value]
                line_pos = value.item_pos if isinstance(value, PosList) else [pos]
                if not lines:
                    raise _Fail(pos, f"{path}: an empty list adds nothing")
                appends.append((path, tuple(self._template(v, p)
                                            for v, p in zip(lines, line_pos, strict=True))))
            elif path in OUTPUT_FIELDS:
                kind, enum, nullable = OUTPUT_FIELDS[path]
                outputs.append(Output(path, self._value(path, kind, enum, nullable, value, pos,
                                                         0), pos))
            elif isinstance(path, str) and _VAR.match(path):
                outputs.append(Output(path, self._var_value(path, value, pos), pos))
            elif isinstance(path, str) and input_type(path) is not None:
                raise _Fail(pos, f"{path} is an input (a fact or amount); rules set outputs")
            else:
                raise _Fail(pos, f"unknown output {path!r}",
                            "outputs: " + ", ".join([*OUTPUT_FIELDS, *LIST_OUTPUTS, "vars.NAME"]))
        return outputs, appends

    def _value(self, path: str, kind: str, enum: tuple | None, nullable: bool, value: Any,
               pos: Pos, depth: int) -> Any:
        if isinstance(value, PosDict):
            if set(value) != {"if", "then", "else"} or depth > 4:
                raise _Fail(pos, f"{path}: a conditional value is {{if: condition, then: value, "
                            "else: value}, nested at most 4 deep")
            return Choice(self._condition(value["if"], value.value_pos["if"]),
                          self._value(path, kind, enum, nullable, value["then"],
                                      value.value_pos["then"], depth + 1),
                          self._value(path, kind, enum, nullable, value["else"],
                                      value.value_pos["else"], depth + 1))
        if value is None:
            if not nullable:
                raise _Fail(pos, f"{path} cannot be null")
            return Literal(None)
        if kind in EXPR_KIND:
            if kind == "date" and is_date(value):
                return Literal(value)
            if kind == "date" and isinstance(value, str) and _ISO_DATE.match(value):
                return Literal(_iso_date(value, pos))
            if isinstance(value, str):
                return self._expr(value, pos, EXPR_KIND[kind], linear=False)
            lit = self._literal(path, kind, enum, value, pos)
            if kind in ("money", "decimal") and lit < 0:
                raise _Fail(pos, f"{path} cannot be negative")
            return Literal(lit)
        return Literal(self._literal(path, kind, enum, value, pos))

    def _var_value(self, path: str, value: Any, pos: Pos) -> Literal:
        kind = _var_kind(value)
        if kind is None:
            raise _Fail(pos, f"{path}: a working value is true/false, a number or short text")
        if kind == "string" and (input_type(value) is not None or value in OUTPUT_FIELDS):
            raise _Fail(pos, f"{path}: working values are constants; {value!r} is a path",
                        "vars hold true/false, numbers or text, not computed values")
        known = self.var_kinds.get(path)
        if known and known[0] != kind:
            raise _Fail(pos, f"{path} is set to a {kind} here but a {known[0]} at {known[1]}")
        self.var_kinds.setdefault(path, (kind, pos))
        return Literal(Decimal(value) if kind == "money" else value)

    def _template(self, text: Any, pos: Pos) -> Template:
        if not isinstance(text, str) or not text.strip() or len(text) > 1000:
            raise _Fail(pos, "a text line must be text of 1..1000 characters")
        parts: list[Any] = []
        last = 0
        for m in _PLACEHOLDER.finditer(text):
            parts.append(text[last:m.start()])
            inner = m.group(1).strip()
            kind = self._kind_of(inner)
            if kind is not None and kind not in (ex.AMOUNT, ex.INT, ex.DATE, ex.NUM, "list"):
                parts.append(inner)  # a text path, shown as is
            else:
                try:
                    node = ex.parse(inner)
                    kind = ex.type_of(node, self._kind_of, self._table_kind)
                except ex.ExprError as exc:
                    raise _Fail(pos, f"placeholder {{{inner}}}: {exc.message}") from None
                parts.append(Expr(node, kind, inner))
            last = m.end()
        parts.append(text[last:])
        if "{" in text[last:] or "}" in text[last:]:
            raise _Fail(pos, "unbalanced { } in text", "placeholders look like {amounts.claim}")
        return Template(tuple(parts), text)

    # -- engine limits -------------------------------------------------------
    def _check_field_constants(self, rules: list[Rule]) -> None:
        from .model import walk_leaves

        per_field: dict[str, set] = {}
        for rule in rules:
            for leaf in walk_leaves(rule.when):
                vals = leaf.value if leaf.op in (IN, NOT_IN) else (leaf.value,)
                per_field.setdefault(leaf.path, set()).update(repr(v) for v in vals)
        for path, vals in per_field.items():
            if len(vals) > MAX_CONSTANTS_PER_FIELD:
                self.err(Pos(str(self.directory), 0, 0), f"{path} is compared with {len(vals)} "
                         f"distinct constants; the engine supports at most "
                         f"{MAX_CONSTANTS_PER_FIELD}")


def _iso_date(text: str, pos: Pos) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise _Fail(pos, f"{text!r} is not a valid date") from None


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _var_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str) and len(value) <= 200:
        return "string"
    if isinstance(value, Decimal):
        return "money"
    if isinstance(value, int):
        return "int"
    return None


def _nums(node: Any, numbers: dict[str, Decimal]) -> list[Decimal]:
    if isinstance(node, ex.Num):
        return [node.value]
    if isinstance(node, ex.Ref) and node.name in numbers:
        return [numbers[node.name]]
    if isinstance(node, ex.BinOp):
        return _nums(node.left, numbers) + _nums(node.right, numbers)
    if isinstance(node, ex.Neg):
        return _nums(node.operand, numbers)
    if isinstance(node, ex.Call):
        return [n for a in node.args for n in _nums(a, numbers)]
    return []


def _all_int(node: Any, numbers: dict[str, Decimal]) -> bool:
    return all(n == n.to_integral_value() for n in _nums(node, numbers))


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, Decimal)):
        return "number"
    if is_date(value):
        return "date"
    if isinstance(value, str):
        return "text"
    if value is None:
        return "null"
    return "list or mapping"


def _suggest(path: str) -> str:
    import difflib

    from .schema import all_input_paths

    candidates = all_input_paths() + list(OUTPUT_FIELDS)
    close = difflib.get_close_matches(path, candidates, n=1)
    return f"did you mean {close[0]}?" if close else "see docs/rules.md, 'Paths'"


def _suggest_value(value: str, enum: tuple) -> str:
    import difflib

    close = difflib.get_close_matches(value, enum, n=1)
    return f"did you mean {close[0]}?" if close else ""
