"""Strict parsing, validation and normalisation of posted facts (SPEC §2).

Two steps, both raising only :class:`FactsInvalid`:

* :func:`parse_json` turns request bytes into Python values.  Numbers are read
  from their JSON text as exact values (integers as ``int``, everything else as
  ``decimal.Decimal``), never through a binary float.  NaN/Infinity literals,
  duplicate object keys, invalid UTF-8, a byte-order mark, nesting deeper than
  ``max_depth`` and malformed JSON are rejected.
* :func:`validate_facts` checks a parsed document against the declarative
  field table (:data:`FACT_FIELDS`, :data:`FACT_ENUMS`, :data:`FACT_DEFAULTS`)
  and returns a new, normalised nested dict, or reports every violation at once.

:func:`to_json_facts` turns normalised facts back into JSON-ready values
(money as two-decimal strings, dates as ISO strings).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, Rounded
from itertools import accumulate
from typing import Any, NamedTuple

__all__ = [
    "FACT_DEFAULTS",
    "FACT_ENUMS",
    "FACT_FIELDS",
    "FACT_OPTIONAL",
    "FACT_REQUIRED",
    "FactsInvalid",
    "FieldError",
    "JURISDICTIONS",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_ERRORS",
    "MAX_MONEY",
    "MAX_NUMBER_CHARS",
    "MIN_DATE",
    "MAX_DATE",
    "parse_json",
    "to_json_facts",
    "validate_facts",
]

# --------------------------------------------------------------------------- limits

#: Largest request body the HTTP layer should accept for one facts document.
#: ``parse_json`` itself only enforces a size when given ``max_bytes``.
MAX_BODY_BYTES = 1024 * 1024
#: Default maximum nesting of arrays/objects accepted by :func:`parse_json`.
MAX_DEPTH = 32
#: Longest JSON number literal (in characters) accepted by :func:`parse_json`.
MAX_NUMBER_CHARS = 100
#: At most this many errors are listed; the last entry then says how many more there were.
MAX_ERRORS = 100
#: Largest money (and acres) value.
MAX_MONEY = Decimal("999999999999.99")
MIN_DATE = datetime.date(1900, 1, 1)
MAX_DATE = datetime.date(2199, 12, 31)

_CENT = Decimal("0.01")
_ZERO = Decimal("0.00")
_MAX_MONEY_INT = 999_999_999_999
# Explicit context: results never depend on the calling thread's decimal context.
_CTX = Context(prec=40, rounding=ROUND_HALF_EVEN, Emax=999_999, Emin=-999_999)
# Same, but quantizing to cents raises ``Rounded`` when digits (even zeros) would be dropped.
_STRICT_CTX = Context(
    prec=40,
    rounding=ROUND_HALF_EVEN,
    Emax=999_999,
    Emin=-999_999,
    traps=[Rounded, InvalidOperation],
)

# --------------------------------------------------------------------------- errors


class FieldError(NamedTuple):
    """One violation: ``path`` is dotted (``loan.unpaid_balance``); ``""`` is the document."""

    path: str
    message: str


class FactsInvalid(Exception):
    """The facts (or the JSON carrying them) are invalid; ``errors`` lists every violation."""

    errors: list[FieldError]

    def __init__(self, errors: list[FieldError]) -> None:
        errors = list(errors)
        super().__init__(errors)
        self.errors = errors

    def __str__(self) -> str:
        return "; ".join(f"{e.path}: {e.message}" if e.path else e.message for e in self.errors)

    def to_list(self) -> list[dict[str, str]]:
        """The errors as JSON-ready ``{"path", "message"}`` objects."""
        return [{"path": e.path, "message": e.message} for e in self.errors]


def _fail(path: str, message: str) -> FactsInvalid:
    return FactsInvalid([FieldError(path, message)])


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$@-]{1,64}")
_SHOWN_KEY_CHARS = 64


def _join(parent: str, key: object) -> str:
    """Dotted path of ``key`` under ``parent``; odd keys are shown JSON-quoted in brackets."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    text = key if isinstance(key, str) else repr(key)
    if len(text) > _SHOWN_KEY_CHARS:
        text = text[:_SHOWN_KEY_CHARS] + "\u2026"
    return f"{parent}[{json.dumps(text, ensure_ascii=True)}]"


# --------------------------------------------------------------------------- parse_json


class _ParseError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _DupDict(dict):  # type: ignore[type-arg]
    """A parsed object that had duplicate keys (recorded so their paths can be reported)."""

    dup_keys: list[str]


def _reject_constant(name: str) -> Any:
    raise _ParseError(f"{name} is not allowed: numbers must be finite")


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _ParseError(f"number too long (more than {MAX_NUMBER_CHARS} characters)")
    return int(text)


def _parse_decimal(text: str) -> Decimal:
    if len(text) > MAX_NUMBER_CHARS:
        raise _ParseError(f"number too long (more than {MAX_NUMBER_CHARS} characters)")
    try:
        return Decimal(text)
    except (InvalidOperation, ValueError):
        raise _ParseError(f"number out of range: {text}") from None


_KEEP_FOR_DEPTH = b'"[]{}'
_DROP_FOR_DEPTH = bytes(b for b in range(256) if b not in _KEEP_FOR_DEPTH)
_BYTE_DELTA = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))
_DEPTH_CHUNK = 4096


def _too_deep(text: str, max_depth: int) -> bool:
    """Whether containers nest deeper than ``max_depth`` (brackets inside strings ignored).

    No recursion and no per-character Python loop: escapes are removed (an escaped
    backslash first, then an escaped quote), then everything but quotes and brackets,
    then string contents (every other piece between quotes); the running depth of
    what is left is computed in chunks, stopping at the first chunk that is too deep.
    Invalid JSON may be misjudged only after the point where ``json.loads`` fails.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False  # the common case: cannot possibly be too deep
    data = text.encode("utf-8", "surrogatepass")
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(data.translate(None, _DROP_FOR_DEPTH).split(b'"')[::2])
    depth = 0
    delta = _BYTE_DELTA.__getitem__
    for start in range(0, len(outside), _DEPTH_CHUNK):
        running = list(accumulate(map(delta, outside[start : start + _DEPTH_CHUNK]), initial=depth))
        if max(running) > max_depth:
            return True
        depth = running[-1]
    return False


def _dup_paths(root: Any) -> list[str]:
    """Paths of every duplicated key in the parsed tree (iterative walk, document order)."""
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            if isinstance(value, _DupDict):
                found.extend(_join(path, k) for k in value.dup_keys)
            stack.extend((v, _join(path, k)) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    return found


def parse_json(
    data: bytes | bytearray | memoryview | str,
    *,
    max_depth: int = MAX_DEPTH,
    max_bytes: int | None = None,
) -> Any:
    """Parse one JSON document exactly and strictly; raise only :class:`FactsInvalid`.

    Integers become ``int``, other numbers ``Decimal`` (never ``float``).  ``max_bytes``
    (off by default: the HTTP layer bounds bodies) rejects larger input up front.
    """
    try:
        if isinstance(data, str):
            text = data
            if max_bytes is not None and (
                len(text) > max_bytes
                or (
                    len(text) * 4 > max_bytes
                    and len(text.encode("utf-8", "surrogatepass")) > max_bytes
                )
            ):
                raise _fail("", f"document too large (more than {max_bytes} bytes)")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = data if isinstance(data, bytes) else bytes(data)
            if max_bytes is not None and len(raw) > max_bytes:
                raise _fail("", f"document too large (more than {max_bytes} bytes)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _fail("", f"invalid UTF-8 at byte {exc.start}") from None
        else:
            raise _fail("", "document must be bytes or str")

        if text.startswith("\ufeff"):
            raise _fail("", "malformed JSON: byte order mark not allowed")
        if not text.strip(" \t\r\n"):
            raise _fail("", "malformed JSON: empty document")
        if _too_deep(text, max_depth):
            raise _fail("", f"JSON nested too deeply (more than {max_depth} levels)")

        saw_duplicate = False

        def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            nonlocal saw_duplicate
            obj = dict(pairs)
            if len(obj) == len(pairs):
                return obj
            saw_duplicate = True
            dup = _DupDict(obj)
            seen: set[str] = set()
            dups: dict[str, None] = {}  # ordered set
            for key, _ in pairs:
                if key in seen:
                    dups[key] = None
                seen.add(key)
            dup.dup_keys = list(dups)
            return dup

        try:
            value = json.loads(
                text,
                parse_float=_parse_decimal,
                parse_int=_parse_int,
                parse_constant=_reject_constant,
                object_pairs_hook=pairs_hook,
            )
        except _ParseError as exc:
            raise _fail("", exc.message) from None
        except json.JSONDecodeError as exc:
            raise _fail(
                "", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if saw_duplicate:
            paths = _dup_paths(value)
            errors = [FieldError(p, "duplicate key") for p in paths[:MAX_ERRORS]]
            if len(paths) > MAX_ERRORS:
                errors[-1] = FieldError("", f"{len(paths) - MAX_ERRORS + 1} more errors not listed")
            raise FactsInvalid(errors)
        return value
    except FactsInvalid:
        raise
    except RecursionError:
        raise _fail("", f"JSON nested too deeply (more than {max_depth} levels)") from None
    except (ValueError, TypeError, ArithmeticError, UnicodeError) as exc:
        raise _fail("", f"malformed JSON: {type(exc).__name__}") from None


# --------------------------------------------------------------------------- field table

#: The 50 states, DC, PR, GU and VI, sorted.
JURISDICTIONS: tuple[str, ...] = (
    "AK",
    "AL",
    "AR",
    "AZ",
    "CA",
    "CO",
    "CT",
    "DC",
    "DE",
    "FL",
    "GA",
    "GU",
    "HI",
    "IA",
    "ID",
    "IL",
    "IN",
    "KS",
    "KY",
    "LA",
    "MA",
    "MD",
    "ME",
    "MI",
    "MN",
    "MO",
    "MS",
    "MT",
    "NC",
    "ND",
    "NE",
    "NH",
    "NJ",
    "NM",
    "NV",
    "NY",
    "OH",
    "OK",
    "OR",
    "PA",
    "PR",
    "RI",
    "SC",
    "SD",
    "TN",
    "TX",
    "UT",
    "VA",
    "VI",
    "VT",
    "WA",
    "WI",
    "WV",
    "WY",
)


class _Today:
    """Default marker for ``as_of``: today's date (UTC, or the ``today`` argument)."""

    def __repr__(self) -> str:
        return "<today UTC>"


_TODAY: Any = _Today()
_NO_DEFAULT: Any = object()


@dataclass(frozen=True, slots=True)
class _Field:
    path: str
    kind: str  # date | jurisdiction | string | enum | bool | int | money | decimal
    required: bool = False
    default: Any = _NO_DEFAULT
    choices: tuple[str, ...] = ()
    low: int | None = None  # string length / int value bounds
    high: int | None = None
    required_when: tuple[str, str] | None = None  # (path, value)


_F = _Field
_COST_KEYS = ("repossession", "storage", "preparation", "sale", "legal", "admin")

#: The one declarative table: every rule below and every public table derive from it.
_TABLE: tuple[_Field, ...] = (
    _F("as_of", "date", default=_TODAY),
    _F("jurisdiction", "jurisdiction", required=True, choices=JURISDICTIONS),
    _F("loan.id", "string", required=True, low=1, high=128),
    _F("loan.type", "enum", required=True, choices=("auto", "mortgage", "other_secured")),
    _F("loan.consumer", "bool", default=True),
    _F("loan.unpaid_balance", "money", required=True),
    _F("loan.accrued_interest", "money", default=_ZERO),
    _F("loan.fees", "money", default=_ZERO),
    _F("loan.purchase_money", "bool", default=False),
    _F("loan.home_equity", "bool", default=False),
    _F(
        "loan.investor",
        "enum",
        default="portfolio",
        choices=("portfolio", "fannie_mae", "freddie_mac", "fha", "va"),
    ),
    _F("collateral.kind", "enum", required=True, choices=("vehicle", "dwelling", "other")),
    _F("collateral.dwelling_units", "int", low=1, high=1000),
    _F("collateral.owner_occupied", "bool", default=False),
    _F("collateral.acres", "decimal"),
    _F("collateral.fair_value", "money"),
    _F(
        "disposition.method",
        "enum",
        required=True,
        choices=(
            "auction",
            "private_sale",
            "short_sale",
            "deed_in_lieu",
            "judicial_foreclosure",
            "non_judicial_foreclosure",
        ),
    ),
    _F("disposition.date", "date", required=True),
    _F("disposition.proceeds", "money", required=True),
    *(_F(f"disposition.costs.{k}", "money", default=_ZERO) for k in _COST_KEYS),
    _F("disposition.credits", "money", default=_ZERO),
    _F("disposition.notice_sent", "bool", default=True),
    _F("disposition.commercially_reasonable", "bool", default=True),
    _F(
        "negotiation.state",
        "enum",
        default="none",
        choices=(
            "none",
            "in_progress",
            "short_sale_approved",
            "deed_in_lieu_agreed",
            "settlement_agreed",
            "judgment_sought",
            "judgment_obtained",
        ),
    ),
    _F("negotiation.deficiency_waived", "bool", default=False),
    _F("negotiation.deficiency_reserved", "bool", default=False),
    _F(
        "negotiation.settlement_amount",
        "money",
        required_when=("negotiation.state", "settlement_agreed"),
    ),
    _F("negotiation.borrower_contribution", "money", default=_ZERO),
    _F("negotiation.third_party_agent", "bool", default=False),
    _F("borrower.in_bankruptcy", "bool", default=False),
    _F("borrower.insolvent", "bool", default=False),
)

#: Every dotted leaf path → its type name.
FACT_FIELDS: dict[str, str] = {f.path: f.kind for f in _TABLE}
#: Allowed values of every enum path (and of ``jurisdiction``).
FACT_ENUMS: dict[str, tuple[str, ...]] = {f.path: f.choices for f in _TABLE if f.choices}
#: Static defaults of optional fields (``as_of`` defaults to today, UTC, and is not listed).
FACT_DEFAULTS: dict[str, Any] = {
    f.path: f.default for f in _TABLE if f.default is not _NO_DEFAULT and f.default is not _TODAY
}
#: Paths that must be present (``negotiation.settlement_amount`` is conditionally required).
FACT_REQUIRED: frozenset[str] = frozenset(f.path for f in _TABLE if f.required)
#: Paths that may be absent from normalised facts (optional, no default).
FACT_OPTIONAL: frozenset[str] = frozenset(
    f.path for f in _TABLE if not f.required and f.default is _NO_DEFAULT
)

# --------------------------------------------------------------------------- leaf checks


class _Bad(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


_MONEY_TEXT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,2})?")
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONEY_FORMAT = (
    "must be an amount from 0 to 999999999999.99 with at most 2 decimal places, "
    'as a string like "8500.00" or a JSON number'
)
_MONEY_RANGE = "must be between 0 and 999999999999.99"
_MONEY_PLACES = "must have at most 2 decimal places"


def _check_exact_decimal(v: Any) -> Decimal:
    """Money/decimal: a JSON string ``^\\d{1,12}(\\.\\d{1,2})?$``, an int or an exact Decimal."""
    t = type(v)
    if t is str:
        if not _MONEY_TEXT.fullmatch(v):
            raise _Bad(_MONEY_FORMAT)
        if v[-3:-2] == ".":
            return Decimal(v)  # already exactly two places
        return Decimal(v).quantize(_CENT, context=_CTX)
    if t is int:
        if v < 0 or v > _MAX_MONEY_INT:
            raise _Bad(_MONEY_RANGE)
        return Decimal(v).quantize(_CENT, context=_CTX)
    if isinstance(v, Decimal):
        if not v.is_finite():
            raise _Bad("must be a finite number")
        if v < 0 or v > MAX_MONEY:
            raise _Bad(_MONEY_RANGE)
        try:
            d = v.quantize(_CENT, context=_STRICT_CTX)  # traps Rounded: exponent below -2
        except Rounded:
            raise _Bad(_MONEY_PLACES) from None
        if d.is_zero():  # zeros round silently ("0E-5"), and "-0.0" must not become "-0.00"
            if v.as_tuple().exponent < -2:  # type: ignore[operator]
                raise _Bad(_MONEY_PLACES)
            return _ZERO
        return d
    if t is float:
        raise _Bad("binary floating-point numbers are not accepted (parse with parse_json)")
    raise _Bad(_MONEY_FORMAT)


def _make_check(f: _Field) -> Callable[[Any], Any]:
    kind = f.kind
    if kind in ("money", "decimal"):
        return _check_exact_decimal
    if kind == "bool":

        def check_bool(v: Any) -> bool:
            if v is True or v is False:
                return v
            raise _Bad("must be a boolean (true or false)")

        return check_bool
    if kind == "int":
        lo = f.low if f.low is not None else -(2**63)
        hi = f.high if f.high is not None else 2**63 - 1
        range_msg = f"must be an integer from {lo} to {hi}"

        def check_int(v: Any) -> int:
            if type(v) is not int:
                raise _Bad(range_msg if isinstance(v, Decimal) else "must be an integer")
            if v < lo or v > hi:
                raise _Bad(range_msg)
            return v

        return check_int
    if kind in ("enum", "jurisdiction"):
        allowed = frozenset(f.choices)
        if kind == "jurisdiction":
            msg = (
                'must be the uppercase two-letter code of a US state, DC, PR, GU or VI (e.g. "CA")'
            )
        else:
            msg = "not one of " + ", ".join(f.choices)

        def check_enum(v: Any) -> str:
            if type(v) is str and v in allowed:
                return v
            raise _Bad(msg)

        return check_enum
    if kind == "string":
        lo = f.low or 0
        hi = f.high if f.high is not None else 1024
        len_msg = f"must be {lo} to {hi} characters long"

        def check_string(v: Any) -> str:
            if type(v) is not str:
                raise _Bad("must be a string")
            if not lo <= len(v) <= hi:
                raise _Bad(len_msg)
            if not v.isprintable():
                raise _Bad("must contain only printable characters")
            return v

        return check_string
    if kind == "date":
        return _check_date
    raise AssertionError(f"unknown field kind {kind!r}")  # pragma: no cover


def _check_date(v: Any) -> datetime.date:
    if type(v) is not str:
        raise _Bad('must be a date string "YYYY-MM-DD"')
    if _DATE_TEXT.fullmatch(v) is None:
        raise _Bad('must be a date string "YYYY-MM-DD"')
    try:
        d = datetime.date.fromisoformat(v)  # the regex already fixed the format
    except ValueError:
        raise _Bad("not a valid calendar date") from None
    if d < MIN_DATE or d > MAX_DATE:
        raise _Bad("must be between 1900-01-01 and 2199-12-31")
    return d


# --------------------------------------------------------------------------- compiled tree


@dataclass(slots=True)
class _Node:
    """An object in the facts tree, compiled from the table for a fast walk."""

    key: str
    path: str
    # (key, path, check or None for a sub-object, required, default, sub-object node or None)
    items: list[tuple[str, str, Callable[[Any], Any] | None, bool, Any, _Node | None]]
    keys: frozenset[str] = frozenset()
    required: bool = False


def _compile(table: tuple[_Field, ...]) -> _Node:
    root = _Node("", "", [])
    nodes: dict[str, _Node] = {"": root}
    for f in table:
        parts = f.path.split(".")
        parent = root
        for i, part in enumerate(parts[:-1]):
            path = ".".join(parts[: i + 1])
            node = nodes.get(path)
            if node is None:
                node = nodes[path] = _Node(part, path, [])
                parent.items.append((part, path, None, False, _NO_DEFAULT, node))
            parent = node
        parent.items.append((parts[-1], f.path, _make_check(f), f.required, f.default, None))

    def finish(node: _Node) -> bool:
        """Set ``keys`` and ``required`` (an object is required when any leaf under it is)."""
        required = False
        for index, (key, path, check, leaf_required, default, sub) in enumerate(node.items):
            if sub is not None:
                sub_required = finish(sub)
                node.items[index] = (key, path, check, sub_required, default, sub)
                required = required or sub_required
            else:
                required = required or leaf_required
        node.keys = frozenset(item[0] for item in node.items)
        node.required = required
        return required

    finish(root)
    return root


_ROOT = _compile(_TABLE)
_CONDITIONAL = tuple(f for f in _TABLE if f.required_when is not None)


def _walk(
    node: _Node,
    value: dict[Any, Any],
    out: dict[str, Any],
    errors: list[FieldError],
    today: datetime.date | None,
) -> int:
    """Validate ``value`` against ``node`` into ``out``; returns the count of errors not listed."""
    hidden = 0
    known = node.keys
    if not value.keys() <= known:
        for key in value:
            if key not in known:
                if len(errors) < MAX_ERRORS:
                    errors.append(FieldError(_join(node.path, key), "unknown field"))
                else:
                    hidden += 1
    get = value.get
    for key, path, check, required, default, sub in node.items:
        v = get(key)
        if v is None:
            if required:
                errors.append(FieldError(path, "required"))
            elif sub is not None:
                child: dict[str, Any] = {}
                hidden += _walk(sub, {}, child, errors, today)
                out[key] = child
            elif default is not _NO_DEFAULT:
                if default is _TODAY:
                    out[key] = today if today is not None else _utc_today()
                else:
                    out[key] = default
        elif check is not None:
            try:
                out[key] = check(v)
            except _Bad as bad:
                errors.append(FieldError(path, bad.message))
        elif isinstance(v, dict):
            assert sub is not None
            child = {}
            hidden += _walk(sub, v, child, errors, today)
            out[key] = child
        else:
            errors.append(FieldError(path, "must be an object"))
    return hidden


def _utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def _lookup(facts: dict[str, Any], path: str) -> Any:
    value: Any = facts
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def validate_facts(obj: Any, *, today: datetime.date | None = None) -> dict[str, Any]:
    """Validate a parsed facts document; return new normalised facts or raise FactsInvalid.

    Every violation is reported at once (up to :data:`MAX_ERRORS`).  ``today`` is the
    default ``as_of`` (today's UTC date when not given).
    """
    if isinstance(today, datetime.datetime):
        today = today.date()
    if not isinstance(obj, dict):
        raise _fail("", "must be a JSON object")
    out: dict[str, Any] = {}
    errors: list[FieldError] = []
    try:
        hidden = _walk(_ROOT, obj, out, errors, today)
    except RecursionError:  # pragma: no cover - the tree is three levels deep
        raise _fail("", "document nested too deeply") from None
    for f in _CONDITIONAL:
        assert f.required_when is not None
        cond_path, cond_value = f.required_when
        # The condition holds only on valid facts, so the parent object is a valid dict here;
        # a given-but-invalid value has already been reported.
        if _lookup(out, cond_path) == cond_value and _lookup(obj, f.path) is None:
            errors.append(FieldError(f.path, f"required when {cond_path} is {cond_value}"))
    if errors:
        if hidden or len(errors) > MAX_ERRORS:
            total = len(errors) + hidden
            errors = errors[: MAX_ERRORS - 1]
            errors.append(FieldError("", f"{total - len(errors)} more errors not listed"))
        raise FactsInvalid(errors)
    return out


# --------------------------------------------------------------------------- output


def _json_value(value: Any) -> Any:
    t = type(value)
    if t is dict:
        return {k: _json_value(v) for k, v in value.items()}
    if t is Decimal:
        return format(value, ".2f")  # normalised amounts are already exact to the cent
    if t is datetime.date:
        return value.isoformat()
    if t is str or t is bool or t is int or value is None:
        return value
    if isinstance(value, Decimal):
        return format(value, ".2f")
    if isinstance(value, datetime.datetime):
        return value.date().isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def to_json_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """Normalised facts as JSON-ready values: money/decimal ``"8500.00"``, dates ISO strings."""
    result = _json_value(facts)
    assert isinstance(result, dict)
    return result
