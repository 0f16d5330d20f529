"""Hypothesis strategies for hostile request bodies: the bytes an upstream system with a
bug, or an attacker holding a `decide` key, could post as facts.

A generated example is a `Hostile`: the exact bytes, plus what the generator knows
must be reported about them when they parse (the path of an injected duplicate key,
the paths of injected `sid` / `id` / `$`-prefixed keys).

Documents are built as trees whose objects are lists of (key, value) pairs, so that
keys can repeat, and whose numbers can be raw JSON tokens (`1e-05`, `NaN`, 150
digits), then written out by hand (`dump`): the standard encoder could produce none
of that. Most examples start from valid facts and mutate them, so that they get past
the first checks and reach the deep ones; some are arbitrary JSON or arbitrary bytes.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from service import facts as facts_mod

from .conftest import key_path

# ------------------------------------------------------------------ the tree


class Raw(str):
    """A token written out as it is: a number's text, or `NaN` / `Infinity`."""


class Obj(list):  # type: ignore[type-arg]
    """A JSON object as (key, value) pairs, in order; keys may repeat."""


def dump(node: Any, *, ascii_only: bool = True, space: str = "") -> str:
    """The JSON text of a tree (iterative: trees may be deeper than Python's stack)."""
    out: list[str] = []
    stack: list[Any] = [node]
    sep, colon = "," + space, ":" + space
    while stack:
        item = stack.pop()
        if isinstance(item, _Lit):
            out.append(item.text)
        elif isinstance(item, Raw):
            out.append(str(item))
        elif item is None:
            out.append("null")
        elif item is True:
            out.append("true")
        elif item is False:
            out.append("false")
        elif isinstance(item, int):
            out.append(str(item))
        elif isinstance(item, str):
            out.append(json.dumps(item, ensure_ascii=ascii_only))
        elif isinstance(item, Obj):
            parts: list[Any] = [_Lit("{")]
            for i, (k, v) in enumerate(item):
                if i:
                    parts.append(_Lit(sep))
                parts += [_Lit(json.dumps(k, ensure_ascii=ascii_only) + colon), v]
            parts.append(_Lit("}"))
            stack.extend(reversed(parts))
        elif isinstance(item, dict):
            stack.append(Obj(item.items()))
        elif isinstance(item, (list, tuple)):
            parts = [_Lit("[")]
            for i, v in enumerate(item):
                if i:
                    parts.append(_Lit(sep))
                parts.append(v)
            parts.append(_Lit("]"))
            stack.extend(reversed(parts))
        else:  # pragma: no cover - a generator bug
            raise TypeError(type(item))
    return "".join(out)


@dataclass(frozen=True)
class _Lit:
    text: str


def to_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return Obj((k, to_tree(v)) for k, v in value.items())
    if isinstance(value, list):
        return [to_tree(v) for v in value]
    return value


# ------------------------------------------------------------------ leaves

NUMBER_TOKENS = [
    # exponents without a dot (the engine's parser fails on them), huge and tiny
    "1e-05", "1e+16", "1E400", "1e-400", "1e999999999", "1e-999999999", "8.5e3", "1E+3",
    "0e0", "1.0e2", "-1e-05", "2.5E-1",
    # edges of money
    "-0", "-0.0", "0.000", "1.005", "0.01", "0.001", "999999999999.99", "999999999999.995",
    "1000000000000", "1000000000000.00", "-0.01", "99999999999999999999",
    # longer than the parser accepts
    "1" + "0" * 150, "0." + "0" * 120 + "1", "1" + "0" * 99,
    # not numbers JSON allows, but Python's decoder would
    "NaN", "Infinity", "-Infinity",
]
HUGE_INTS = [0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30,
             999_999_999_999, 1_000_000_000_000, 99_999_999_999_999]
STRING_SAMPLES = [
    "", " ", "CA", "ca", "C", "CAL", "true", "false", "1", "0", "900", "1000", "-1", "NaN",
    "inf", "Infinity", "8500.00", "8500.000", "8500.5", "1e3", "1,000.00", "$8500",
    "2026-02-30", "2026-02-01T00:00:00Z", "2026-2-1", "20260201", "9999-12-31", "0001-01-01",
    "auto", "AUTO", "mortgage ", "settlement_agreed", "\u0000", "\u2028", "\u202e",
    "\ud800", "\udfff", "\U0001f600", "Robert'); DROP TABLE audit_log;--", "{{7*7}}",
    "${jndi:ldap://x}", "../../etc/passwd", "<script>alert(1)</script>",
]
RESERVED_KEYS = ["sid", "id", "$", "$where", "$lt", "$m", "$and", "$nex", "$ex", "$iall",
                 "$s", "$i"]
ODD_KEYS = ["", " ", "__proto__", "constructor", "loan.id", "a" * 70, "\u0000", "\ud800",
            "\u00e9", "$" * 3, "sid ", "ID", "Sid"]


def long_strings() -> st.SearchStrategy[str]:
    """64 KiB and more: durable-rules compares strings on a 16-bit length."""
    return st.builds(lambda prefix, n: prefix + "x" * n,
                     st.sampled_from(["", "CA", "auto", "L-", "2026-01-01"]),
                     st.sampled_from([65_534, 65_535, 65_536, 70_000, 131_072]))


def numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(NUMBER_TOKENS).map(Raw),
        st.sampled_from(HUGE_INTS),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Raw(repr(f))),
        st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: Raw(str(d))),
    )


def strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(STRING_SAMPLES), st.text(max_size=30))


def keys() -> st.SearchStrategy[str]:
    real = sorted({part for path in facts_mod.FACT_FIELDS for part in path.split(".")})
    return st.one_of(st.sampled_from(RESERVED_KEYS), st.sampled_from(ODD_KEYS),
                     st.sampled_from(real), st.text(max_size=12))


def leaves() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), numbers(), strings())


def values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Arbitrary JSON (objects without repeated keys), including the odd leaves above."""
    return st.recursive(
        leaves(),
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(keys(), children, max_size=5).map(to_tree),
        ),
        max_leaves=max_leaves,
    )


def hostile_values() -> st.SearchStrategy[Any]:
    """A value to put where a field is expected."""
    return st.one_of(
        LEAVES, VALUES, long_strings(),
        st.builds(nested, st.integers(1, 80), LEAVES, st.booleans()),
        st.builds(wide, st.integers(200, 600), st.booleans()),
    )


def nested(depth: int, inner: Any, as_objects: bool) -> Any:
    node = inner
    for _ in range(depth):
        node = Obj([("a", node)]) if as_objects else [node]
    return node


def wide(count: int, reserved: bool, offset: int = 0) -> Obj:
    """Hundreds of keys in one object (the engine fails above ~252 properties); names
    numbered from `offset`, so that adding to an object never repeats a key."""
    names = (RESERVED_KEYS * (count // len(RESERVED_KEYS) + 1))[:count] if reserved else []
    return Obj((f"{names[i]}{offset + i}" if reserved else f"k{offset + i}", i)
               for i in range(count))


# Built once: building strategies is the expensive part of drawing from them.
LEAVES = leaves()
KEYS = keys()
VALUES = values()
SMALL_VALUES = values(max_leaves=5)
HOSTILE_VALUES = hostile_values()

# ------------------------------------------------------------------ valid facts

MONEY = st.one_of(
    st.decimals(min_value=0, max_value=facts_mod.MAX_MONEY, places=2).map(str),
    st.decimals(min_value=0, max_value=facts_mod.MAX_MONEY, places=2).map(lambda d: Raw(str(d))),
    st.integers(0, 999_999_999_999),
    st.sampled_from(["0", "0.00", "8500.00", "999999999999.99", "0.01", "1"]),
)
DATES = st.dates(facts_mod.MIN_DATE, facts_mod.MAX_DATE).map(datetime.date.isoformat)


def _field_strategy(path: str, kind: str) -> st.SearchStrategy[Any]:
    if kind in ("money", "decimal"):
        return MONEY
    if kind == "bool":
        return st.booleans()
    if kind in ("enum", "jurisdiction"):
        return st.sampled_from(facts_mod.FACT_ENUMS[path])
    if kind == "int":
        return st.integers(1, 1000)
    if kind == "date":
        return DATES
    return st.text(st.characters(codec="utf-8", categories=["L", "N", "P"]),
                   min_size=1, max_size=128)


_FIELDS = [(path, path in facts_mod.FACT_REQUIRED, _field_strategy(path, kind))
           for path, kind in facts_mod.FACT_FIELDS.items()]


@st.composite
def valid_facts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid facts document (every optional field maybe present)."""
    doc: dict[str, Any] = {}
    for path, required, strategy in _FIELDS:
        if not required and not draw(st.booleans()):
            continue
        node = doc
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = draw(strategy)
    if doc.get("negotiation", {}).get("state") == "settlement_agreed":
        doc["negotiation"].setdefault("settlement_amount", "100.00")
    return doc


# ------------------------------------------------------------------ mutations

#: The objects the validator walks into (so an unknown key there must be reported).
OBJECT_PATHS = ("", "loan", "collateral", "disposition", "disposition.costs", "negotiation",
                "borrower")
_KNOWN_AT = {p: {f[len(p) + 1:].split(".")[0] if p else f.split(".")[0]
                 for f in facts_mod.FACT_FIELDS if not p or f.startswith(p + ".")}
             for p in OBJECT_PATHS}


RESERVED_NAMES = st.one_of(st.sampled_from(RESERVED_KEYS), st.text(max_size=8).map("$".__add__))


@dataclass
class Hostile:
    data: bytes
    #: The path of the one duplicated key (when the bytes are otherwise sound JSON).
    dup_path: str | None = None
    #: Paths of unknown keys injected where the validator must look.
    unknown_paths: list[str] = field(default_factory=list)
    #: The bytes were corrupted after writing (no promise about what is reported).
    corrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        shown = self.data[:300] + (b"..." if len(self.data) > 300 else b"")
        return (f"Hostile({len(self.data)} bytes {shown!r}, dup={self.dup_path!r}, "
                f"unknown={self.unknown_paths!r}, notes={self.notes!r})")


def _walkable(root: Obj) -> dict[str, Obj]:
    """The object nodes at OBJECT_PATHS that are still objects (reached through objects)."""
    found = {"": root}
    for path in OBJECT_PATHS[1:]:
        parent_path, _, name = path.rpartition(".")
        parent = found.get(parent_path)
        if parent is None:
            continue
        for k, v in parent:
            if k == name and isinstance(v, Obj):
                found[path] = v
                break
    return found


def _leaf_slots(root: Obj) -> list[tuple[Obj, int, str]]:
    slots: list[tuple[Obj, int, str]] = []
    for path, node in _walkable(root).items():
        for i, (k, _) in enumerate(node):
            slots.append((node, i, f"{path}.{k}" if path else k))
    return slots


@st.composite
def mutated_facts(draw: st.DrawFn, *, max_mutations: int = 4) -> Hostile:
    root = to_tree(draw(valid_facts()))
    notes: list[str] = []
    for _ in range(draw(st.integers(0, max_mutations))):
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "add", "wide", "deep",
                                     "object"]))
        slots = _leaf_slots(root)
        if kind in ("set", "delete", "object") and slots:
            node, i, path = draw(st.sampled_from(slots))
            if kind == "set":
                node[i] = (node[i][0], draw(HOSTILE_VALUES))
            elif kind == "delete":
                del node[i]
            else:
                node[i] = (node[i][0], draw(VALUES))
            notes.append(f"{kind} {path}")
        elif kind == "add":
            target_path, target = draw(st.sampled_from(sorted(_walkable(root).items())))
            name = draw(KEYS)
            if all(k != name for k, _ in target):
                target.append((name, draw(HOSTILE_VALUES)))
                notes.append(f"add {name!r} at {target_path!r}")
        elif kind == "wide":
            target_path, target = draw(st.sampled_from(sorted(_walkable(root).items())))
            target.extend(wide(draw(st.integers(253, 400)), draw(st.booleans()), len(target)))
            notes.append(f"wide at {target_path!r}")
        elif kind == "deep":
            depth = draw(st.integers(20, 200))
            root = Obj([*root, (f"deep{len(root)}", nested(depth, 1, draw(st.booleans())))])
            notes.append(f"deep {depth}")

    hostile = Hostile(b"", notes=notes)
    tracked = draw(st.sampled_from(["none", "reserved", "reserved", "dup"]))
    walkable = _walkable(root)
    if tracked == "reserved":
        for _ in range(draw(st.integers(1, 3))):
            path, node = draw(st.sampled_from(sorted(walkable.items())))
            name = draw(RESERVED_NAMES)
            if name in _KNOWN_AT[path] or any(k == name for k, _ in node):
                continue
            position = draw(st.integers(0, len(node)))
            node.insert(position, (name, draw(SMALL_VALUES)))
            hostile.unknown_paths.append(key_path(path, name))
    elif tracked == "dup":
        path, node = draw(st.sampled_from(sorted(walkable.items())))
        if node:
            name = draw(st.sampled_from([k for k, _ in node]))
            node.append((name, draw(LEAVES)))
            hostile.dup_path = key_path(path, name)

    text = dump(root, ascii_only=draw(st.booleans()), space=draw(st.sampled_from(["", " "])))
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate: invalid UTF-8
    hostile.data, hostile.corrupted = draw(corrupt(data))
    return hostile


@st.composite
def corrupt(draw: st.DrawFn, data: bytes) -> tuple[bytes, bool]:
    """Mostly untouched; sometimes a byte-level accident."""
    how = draw(st.sampled_from(["none"] * 6 + ["byte", "bom", "truncate", "trail", "nul"]))
    if how == "none" or not data:
        return data, False
    at = draw(st.integers(0, len(data)))
    if how == "byte":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf8"]))
        return data[:at] + bad + data[at:], True
    if how == "bom":
        return b"\xef\xbb\xbf" + data, True
    if how == "truncate":
        return data[:at], True
    if how == "trail":
        return data + draw(st.sampled_from([b" x", b"{}", b"\x00", b" // c", b"\n{}"])), True
    return data[:at] + b"\x00" + data[at:], True


def arbitrary_json() -> st.SearchStrategy[Hostile]:
    return st.builds(lambda v, a: Hostile(dump(v, ascii_only=a).encode("utf-8", "surrogatepass"),
                                          notes=["arbitrary json"]),
                     st.one_of(VALUES, HOSTILE_VALUES), st.booleans())


def arbitrary_bytes() -> st.SearchStrategy[Hostile]:
    return st.binary(max_size=300).map(lambda b: Hostile(b, corrupted=True, notes=["bytes"]))


def valid_bodies() -> st.SearchStrategy[Hostile]:
    """Valid facts, written out like the rest (numbers as raw tokens, any spacing)."""
    return st.builds(lambda doc, a: Hostile(dump(to_tree(doc), ascii_only=a).encode(),
                                            notes=["valid"]),
                     valid_facts(), st.booleans())


def hostile_bodies() -> st.SearchStrategy[Hostile]:
    """What the tests post: mostly mutated facts, some arbitrary JSON, some raw bytes."""
    return _HOSTILE_BODIES


_MUTATED = mutated_facts()
_HOSTILE_BODIES = st.one_of(_MUTATED, _MUTATED, _MUTATED, arbitrary_json(), arbitrary_bytes())
