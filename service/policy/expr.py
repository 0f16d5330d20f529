"""The safe expression language of rule outputs and comparison operands.

Grammar (whitespace between tokens is ignored)::

    expr    := term (("+" | "-") term)*
    term    := unary ("*" unary)*
    unary   := "-" unary | primary
    primary := NUMBER | name ("[" name "]")? | ("min" | "max") "(" expr ("," expr)* ")"
             | "(" expr ")"
    name    := IDENT ("." IDENT)*          # a fact/amount/output path or a named constant

It is parsed by hand into a small tree and evaluated by walking that tree: no
Python `eval`, no attribute access, no calls but `min`/`max`, no loops, no
exponentiation; the text and the tree are bounded in size. Numbers are exact
`Decimal`s. Every error carries the column of the offending token.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

MAX_EXPR_CHARS = 500
MAX_EXPR_NODES = 64

# Value kinds of the expression type system.
AMOUNT = "amount"  # money and other 2-place decimals (compared in cents by the engine)
INT = "int"  # whole counts (dwelling units, days)
DATE = "date"
NUM = "number"  # an untyped literal: becomes amount, int or days where it is used


class ExprError(Exception):
    def __init__(self, message: str, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


@dataclass(frozen=True)
class Num:
    value: Decimal
    column: int = 0

    @property
    def is_int(self) -> bool:
        return self.value == self.value.to_integral_value()


@dataclass(frozen=True)
class Ref:
    """A path such as `amounts.deficiency`, or a scalar named constant."""

    name: str
    column: int = 0


@dataclass(frozen=True)
class Lookup:
    """`table[key_path]`: the entry of a map constant chosen by a fact's value."""

    table: str
    key: str
    column: int = 0


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Any
    right: Any
    column: int = 0


@dataclass(frozen=True)
class Neg:
    operand: Any
    column: int = 0


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple
    column: int = 0


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"|(?P<op>[-+*(),\[\]]))"
)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            ch = text[col - 1]
            if ch in "/%^&|<>=!~@`'\";:{}\\":
                hint = {
                    "/": "division is not supported; multiply by a decimal (e.g. * 0.5)",
                    "^": "exponentiation is not supported",
                }.get(ch, "only + - * min max ( ) and [ ] are allowed")
                raise ExprError(f"unexpected character {ch!r}: {hint}", col)
            raise ExprError(f"unexpected character {ch!r}", col)
        kind = m.lastgroup or ""
        value = m.group(kind)
        tokens.append((kind, value, m.start(kind) + 1))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.nodes = 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self) -> tuple[str, str, int]:
        tok = self._peek()
        if tok is None:
            raise ExprError("unexpected end of expression", len(self.text) + 1)
        self.i += 1
        return tok

    def _expect(self, value: str) -> None:
        tok = self._next()
        if tok[1] != value:
            raise ExprError(f"expected {value!r}, found {tok[1]!r}", tok[2])

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_EXPR_NODES:
            raise ExprError(f"expression too complex (more than {MAX_EXPR_NODES} parts)")

    def parse(self) -> Any:
        node = self.expr(0)
        tok = self._peek()
        if tok is not None:
            raise ExprError(f"unexpected {tok[1]!r}", tok[2])
        return node

    def expr(self, depth: int) -> Any:
        if depth > 16:
            raise ExprError("expression nested too deeply")
        node = self.term(depth)
        while (tok := self._peek()) and tok[1] in "+-" and tok[0] == "op":
            self._next()
            self._count()
            node = BinOp(tok[1], node, self.term(depth), tok[2])
        return node

    def term(self, depth: int) -> Any:
        node = self.unary(depth)
        while (tok := self._peek()) and tok[1] == "*":
            self._next()
            self._count()
            node = BinOp("*", node, self.unary(depth), tok[2])
        return node

    def unary(self, depth: int) -> Any:
        tok = self._peek()
        if tok and tok[1] == "-" and tok[0] == "op":
            self._next()
            self._count()
            return Neg(self.unary(depth + 1), tok[2])
        return self.primary(depth)

    def primary(self, depth: int) -> Any:
        kind, value, col = self._next()
        self._count()
        if kind == "num":
            if len(value) > 20:
                raise ExprError("number too long", col)
            return Num(Decimal(value), col)
        if kind == "name":
            nxt = self._peek()
            if value in ("min", "max") and nxt and nxt[1] == "(":
                self._next()
                args = [self.expr(depth + 1)]
                while (t := self._peek()) and t[1] == ",":
                    self._next()
                    args.append(self.expr(depth + 1))
                self._expect(")")
                return Call(value, tuple(args), col)
            if nxt and nxt[1] == "(":
                raise ExprError(f"unknown function {value!r}: only min and max exist", col)
            if nxt and nxt[1] == "[":
                self._next()
                key_kind, key, key_col = self._next()
                if key_kind != "name":
                    raise ExprError("index a table by a path, e.g. t[jurisdiction]", key_col)
                self._expect("]")
                return Lookup(value, key, col)
            return Ref(value, col)
        if value == "(":
            node = self.expr(depth + 1)
            self._expect(")")
            return node
        raise ExprError(f"unexpected {value!r}", col)


def parse(text: str) -> Any:
    """Parse expression text into a tree; raises ExprError with a column."""
    if not isinstance(text, str):
        raise ExprError("an expression must be text")
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"expression longer than {MAX_EXPR_CHARS} characters")
    if not text.strip():
        raise ExprError("empty expression")
    return _Parser(text).parse()


def refs(node: Any) -> list[str]:
    """Every path or constant name the expression reads (lookup keys included)."""
    out: list[str] = []
    if isinstance(node, Ref):
        out.append(node.name)
    elif isinstance(node, Lookup):
        out.append(node.key)
    elif isinstance(node, BinOp):
        out += refs(node.left) + refs(node.right)
    elif isinstance(node, Neg):
        out += refs(node.operand)
    elif isinstance(node, Call):
        for a in node.args:
            out += refs(a)
    return out


def lookups(node: Any) -> list[Lookup]:
    if isinstance(node, Lookup):
        return [node]
    if isinstance(node, BinOp):
        return lookups(node.left) + lookups(node.right)
    if isinstance(node, Neg):
        return lookups(node.operand)
    if isinstance(node, Call):
        return [x for a in node.args for x in lookups(a)]
    return []


def is_linear(node: Any) -> bool:
    """Only + and - (what the engine can compute inside a condition)."""
    if isinstance(node, (Num, Ref, Lookup)):
        return True
    if isinstance(node, BinOp) and node.op in "+-":
        return is_linear(node.left) and is_linear(node.right)
    return False


class Undefined(Exception):
    """A path the expression needs is absent (or a table has no entry for the key)."""


def evaluate(node: Any, get: Any, tables: dict[str, dict]) -> Any:
    """Evaluate over plain values. `get(name)` returns a path's or constant's
    value or None when absent; raises Undefined when something needed is absent."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Ref):
        value = get(node.name)
        if value is None:
            raise Undefined(node.name)
        return value
    if isinstance(node, Lookup):
        key = get(node.key)
        table = tables[node.table]
        if key is None or key not in table:
            raise Undefined(f"{node.table}[{node.key}]")
        return table[key]
    if isinstance(node, Neg):
        return -evaluate(node.operand, get, tables)
    if isinstance(node, BinOp):
        left = evaluate(node.left, get, tables)
        right = evaluate(node.right, get, tables)
        if node.op == "*":
            return left * right
        if isinstance(left, datetime.date) or isinstance(right, datetime.date):
            return _date_arith(node.op, left, right)
        return left + right if node.op == "+" else left - right
    if isinstance(node, Call):
        values = [evaluate(a, get, tables) for a in node.args]
        return min(values) if node.func == "min" else max(values)
    raise ExprError(f"cannot evaluate {node!r}")


def _date_arith(op: str, left: Any, right: Any) -> Any:
    try:
        if isinstance(left, datetime.date) and isinstance(right, datetime.date):
            return Decimal((left - right).days)
        if isinstance(left, datetime.date):
            days = datetime.timedelta(days=int(right))
            return left + days if op == "+" else left - days
        return right + datetime.timedelta(days=int(left))
    except (OverflowError, ValueError) as exc:
        raise Undefined("date out of range") from exc


def type_of(node: Any, kind_of: Any, table_kind: Any) -> str:
    """Static type of an expression: AMOUNT, INT, DATE or NUM (an untyped literal).

    `kind_of(name)` gives a path's or constant's kind (one of the above, or a
    non-numeric type name such as "bool"), None when unknown; `table_kind(name)`
    the kind of a map constant's values, None when there is no such table.
    """
    if isinstance(node, Num):
        return NUM
    if isinstance(node, Ref):
        kind = kind_of(node.name)
        if kind is None:
            raise ExprError(f"unknown path or constant {node.name!r}", node.column)
        if kind not in (AMOUNT, INT, DATE, NUM):
            raise ExprError(f"{node.name} is a {kind}, not a number or date", node.column)
        return kind
    if isinstance(node, Lookup):
        kind = table_kind(node.table)
        if kind is None:
            raise ExprError(f"{node.table!r} is not a table constant", node.column)
        if kind_of(node.key) is None:
            raise ExprError(f"unknown path {node.key!r}", node.column)
        return kind
    if isinstance(node, Neg):
        kind = type_of(node.operand, kind_of, table_kind)
        if kind == DATE:
            raise ExprError("a date cannot be negated", node.column)
        return kind
    if isinstance(node, Call):
        kinds = [type_of(a, kind_of, table_kind) for a in node.args]
        return _unify(kinds, node.column, node.func)
    if isinstance(node, BinOp):
        left = type_of(node.left, kind_of, table_kind)
        right = type_of(node.right, kind_of, table_kind)
        if node.op == "*":
            if DATE in (left, right):
                raise ExprError("a date cannot be multiplied", node.column)
            if left != NUM and right != NUM:
                raise ExprError(
                    f"{left} * {right}: one side of * must be a number constant", node.column
                )
            if NUM in (left, right) and INT in (left, right):
                return INT if _int_literal(node.left) and _int_literal(node.right) else AMOUNT
            return right if left == NUM else left
        if left == DATE and right == DATE:
            if node.op == "+":
                raise ExprError("two dates cannot be added", node.column)
            return INT
        if left == DATE:
            if right not in (INT, NUM):
                raise ExprError(f"date {node.op} {right}: add whole days to a date", node.column)
            return DATE
        if right == DATE:
            if node.op == "-" or left not in (INT, NUM):
                raise ExprError(f"{left} {node.op} date is not meaningful", node.column)
            return DATE
        return _unify([left, right], node.column, node.op)
    raise ExprError(f"unsupported expression {node!r}")


def _int_literal(node: Any) -> bool:
    return not isinstance(node, Num) or node.is_int


def _unify(kinds: list[str], column: int, what: str) -> str:
    concrete = {k for k in kinds if k != NUM}
    if len(concrete) > 1:
        raise ExprError(f"cannot mix {' and '.join(sorted(concrete))} in {what}", column)
    if DATE in concrete and what in ("min", "max"):
        return DATE
    return concrete.pop() if concrete else NUM


def compile_expr(node: Any, constant: Any, tables: dict[str, dict]) -> Any:
    """The expression as a Python closure `fn(ctx) -> value` (raises Undefined).

    Same meaning as `evaluate`, built once at load so the decision path does not
    walk the tree. `constant(name)` gives a named constant's value or None.
    """
    if isinstance(node, Num):
        value = node.value
        return lambda ctx: value
    if isinstance(node, Ref):
        name = node.name
        const = constant(name)
        if const is not None:
            return lambda ctx: const

        def ref(ctx: dict) -> Any:
            v = ctx.get(name)
            if v is None:
                raise Undefined(name)
            return v

        return ref
    if isinstance(node, Lookup):
        table, key_path, label = tables[node.table], node.key, f"{node.table}[{node.key}]"

        def lookup(ctx: dict) -> Any:
            v = table.get(ctx.get(key_path))
            if v is None:
                raise Undefined(label)
            return v

        return lookup
    if isinstance(node, Neg):
        inner = compile_expr(node.operand, constant, tables)
        return lambda ctx: -inner(ctx)
    if isinstance(node, BinOp):
        left = compile_expr(node.left, constant, tables)
        right = compile_expr(node.right, constant, tables)
        op = node.op
        if op == "*":
            return lambda ctx: left(ctx) * right(ctx)

        def arith(ctx: dict) -> Any:
            a, b = left(ctx), right(ctx)
            if isinstance(a, datetime.date) or isinstance(b, datetime.date):
                return _date_arith(op, a, b)
            return a + b if op == "+" else a - b

        return arith
    if isinstance(node, Call):
        args = [compile_expr(a, constant, tables) for a in node.args]
        pick = min if node.func == "min" else max
        return lambda ctx: pick([f(ctx) for f in args])
    raise ExprError(f"cannot compile {node!r}")


def to_text(node: Any) -> str:
    """An expression tree as text in this grammar, parenthesised only where it needs
    (`parse(to_text(tree))` is the same tree)."""
    if isinstance(node, Num):
        return str(node.value)
    if isinstance(node, Ref):
        return node.name
    if isinstance(node, Lookup):
        return f"{node.table}[{node.key}]"
    if isinstance(node, Neg):
        inner = to_text(node.operand)
        return f"-({inner})" if isinstance(node.operand, BinOp) else f"-{inner}"
    if isinstance(node, Call):
        return f"{node.func}(" + ", ".join(to_text(a) for a in node.args) + ")"
    if isinstance(node, BinOp):
        left, right = to_text(node.left), to_text(node.right)
        if node.op == "*":
            if isinstance(node.left, BinOp) and node.left.op != "*":
                left = f"({left})"
            if isinstance(node.right, BinOp):
                right = f"({right})"
        elif isinstance(node.right, BinOp) and node.right.op != "*":
            right = f"({right})"  # a - (b + c)
        return f"{left} {node.op} {right}"
    raise TypeError(f"not an expression: {node!r}")
