"""Posted facts (SPEC §2): the field table, validation and normalisation. Pure, no I/O.

* :data:`FIELDS` is the one declarative table: a :class:`Field` per leaf path with its
  kind, bounds, allowed values, default and requirement. The validator is compiled from
  it, and every reader (the OpenAPI document, the rule analysis) reads it instead of
  repeating a bound; :data:`FACT_FIELDS` and the other ``FACT_*`` mappings derive from it.
* :func:`validate_facts` checks a parsed document (see :mod:`service.strictjson`) and
  returns a new, normalised nested dict, or raises :class:`FactsInvalid` listing every
  violation at once, each with its dotted JSON path.
* :func:`to_json_facts` turns normalised facts back into JSON-ready values (money as
  two-decimal strings, dates as ISO strings).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, Rounded
from typing import Any, NamedTuple

__all__ = [
    "FACT_DEFAULTS",
    "FACT_ENUMS",
    "FACT_FIELDS",
    "FACT_OPTIONAL",
    "FACT_REQUIRED",
    "FIELDS",
    "FIELDS_BY_PATH",
    "JURISDICTIONS",
    "DATE_TEXT",
    "KINDS",
    "MAX_BODY_BYTES",
    "MAX_DATE",
    "MAX_ERRORS",
    "MAX_MONEY",
    "MIN_DATE",
    "MONEY_PLACES",
    "MONEY_TEXT",
    "NO_DEFAULT",
    "TODAY",
    "FactsInvalid",
    "Field",
    "FieldError",
    "field_path",
    "to_json_facts",
    "validate_facts",
]

# --------------------------------------------------------------------------- limits

#: Largest request body the HTTP layer should accept for one facts document.
MAX_BODY_BYTES = 1024 * 1024
#: At most this many errors are listed; the last entry then says how many more there were.
MAX_ERRORS = 100
#: Largest money (and acres) value; amounts have at most :data:`MONEY_PLACES` decimals.
MAX_MONEY = Decimal("999999999999.99")
MONEY_PLACES = 2
#: Earliest and latest date accepted in any date field.
MIN_DATE = datetime.date(1900, 1, 1)
MAX_DATE = datetime.date(2199, 12, 31)

_CENT = Decimal(1).scaleb(-MONEY_PLACES)
_ZERO = Decimal(0).quantize(_CENT)
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


def field_path(parent: str, key: object) -> str:
    """Dotted path of ``key`` under ``parent`` (``""``: the document); odd keys are shown
    JSON-quoted in brackets (``loan["a b"]``), cut to 64 characters."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    text = key if isinstance(key, str) else repr(key)
    if len(text) > _SHOWN_KEY_CHARS:
        text = text[:_SHOWN_KEY_CHARS] + "\u2026"
    return f"{parent}[{json.dumps(text, ensure_ascii=True)}]"


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


#: The kinds of leaf a facts document holds.
KINDS = ("date", "jurisdiction", "string", "enum", "bool", "int", "money", "decimal")


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: ``Field.default`` of a field that stays absent when omitted.
NO_DEFAULT: Any = _Marker("NO_DEFAULT")
#: ``Field.default`` of ``as_of``: today's date (UTC, or ``validate_facts(today=...)``).
TODAY: Any = _Marker("TODAY")

_MONEY_DIGITS = len(str(int(MAX_MONEY)))
#: What a money (or decimal) string must be, whole: up to 12 digits, at most 2 decimals.
MONEY_TEXT = rf"[0-9]{{1,{_MONEY_DIGITS}}}(?:\.[0-9]{{1,{MONEY_PLACES}}})?"
#: What a date string must be, whole, before it is read as a calendar date.
DATE_TEXT = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
#: Length bounds of a string field that declares none.
_STRING_LENGTH = (0, 1024)


@dataclass(frozen=True, slots=True)
class Field:
    """One leaf of the facts document and everything that bounds it.

    ``kind`` is one of :data:`KINDS`. Bounds are inclusive: ``minimum``/``maximum`` bound
    the value (``int``; ``Decimal`` for money and decimal; ``date``), ``min_length``/
    ``max_length`` a string's length in characters (strings are also printable:
    ``str.isprintable``). Money and decimal values have at most ``places`` decimal places
    (in their JSON spelling too: ``1.100`` is refused); a string spelling of a money,
    decimal or date value matches ``pattern`` whole. ``choices`` are the allowed values of
    an enum or jurisdiction. ``default`` is what an omitted field becomes
    (:data:`NO_DEFAULT`: it stays absent; :data:`TODAY`). ``required_when`` is
    ``(path, value)``: the field is required when that field has that value.
    """

    path: str
    kind: str
    required: bool = False
    required_when: tuple[str, str] | None = None
    default: Any = NO_DEFAULT
    choices: tuple[str, ...] = ()
    minimum: int | Decimal | datetime.date | None = None
    maximum: int | Decimal | datetime.date | None = None
    places: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None

    @property
    def optional(self) -> bool:
        """Whether normalised facts may lack it: neither required nor defaulted."""
        return not self.required and self.default is NO_DEFAULT


def _money(path: str, kind: str = "money", **kw: Any) -> Field:
    return Field(path, kind, minimum=Decimal(0), maximum=MAX_MONEY, places=MONEY_PLACES,
                 pattern=MONEY_TEXT, **kw)


def _date(path: str, **kw: Any) -> Field:
    return Field(path, "date", minimum=MIN_DATE, maximum=MAX_DATE, pattern=DATE_TEXT, **kw)


def _enum(path: str, choices: tuple[str, ...], **kw: Any) -> Field:
    return Field(path, "enum", choices=choices, **kw)


_COST_KEYS = ("repossession", "storage", "preparation", "sale", "legal", "admin")

#: The one declarative table (SPEC §2), in document order.
FIELDS: tuple[Field, ...] = (
    _date("as_of", default=TODAY),
    Field("jurisdiction", "jurisdiction", required=True, choices=JURISDICTIONS),
    Field("loan.id", "string", required=True, min_length=1, max_length=128),
    _enum("loan.type", ("auto", "mortgage", "other_secured"), required=True),
    Field("loan.consumer", "bool", default=True),
    _money("loan.unpaid_balance", required=True),
    _money("loan.accrued_interest", default=_ZERO),
    _money("loan.fees", default=_ZERO),
    Field("loan.purchase_money", "bool", default=False),
    Field("loan.home_equity", "bool", default=False),
    _enum("loan.investor", ("portfolio", "fannie_mae", "freddie_mac", "fha", "va"),
          default="portfolio"),
    _enum("collateral.kind", ("vehicle", "dwelling", "other"), required=True),
    Field("collateral.dwelling_units", "int", minimum=1, maximum=1000),
    Field("collateral.owner_occupied", "bool", default=False),
    _money("collateral.acres", "decimal"),
    _money("collateral.fair_value"),
    _enum("disposition.method", ("auction", "private_sale", "short_sale", "deed_in_lieu",
                                 "judicial_foreclosure", "non_judicial_foreclosure"),
          required=True),
    _date("disposition.date", required=True),
    _money("disposition.proceeds", required=True),
    *(_money(f"disposition.costs.{k}", default=_ZERO) for k in _COST_KEYS),
    _money("disposition.credits", default=_ZERO),
    Field("disposition.notice_sent", "bool", default=True),
    Field("disposition.commercially_reasonable", "bool", default=True),
    _enum("negotiation.state", ("none", "in_progress", "short_sale_approved",
                                "deed_in_lieu_agreed", "settlement_agreed", "judgment_sought",
                                "judgment_obtained"), default="none"),
    Field("negotiation.deficiency_waived", "bool", default=False),
    Field("negotiation.deficiency_reserved", "bool", default=False),
    _money("negotiation.settlement_amount",
           required_when=("negotiation.state", "settlement_agreed")),
    _money("negotiation.borrower_contribution", default=_ZERO),
    Field("negotiation.third_party_agent", "bool", default=False),
    Field("borrower.in_bankruptcy", "bool", default=False),
    Field("borrower.insolvent", "bool", default=False),
)
#: Each field by its dotted path.
FIELDS_BY_PATH: dict[str, Field] = {f.path: f for f in FIELDS}

#: Every dotted leaf path → its kind.
FACT_FIELDS: dict[str, str] = {f.path: f.kind for f in FIELDS}
#: Allowed values of every enum path (and of ``jurisdiction``).
FACT_ENUMS: dict[str, tuple[str, ...]] = {f.path: f.choices for f in FIELDS if f.choices}
#: Static defaults of optional fields (``as_of`` defaults to today, UTC, and is not listed).
FACT_DEFAULTS: dict[str, Any] = {
    f.path: f.default for f in FIELDS if f.default is not NO_DEFAULT and f.default is not TODAY
}
#: Paths that must be present (``negotiation.settlement_amount`` is conditionally required).
FACT_REQUIRED: frozenset[str] = frozenset(f.path for f in FIELDS if f.required)
#: Paths that may be absent from normalised facts (optional, no default).
FACT_OPTIONAL: frozenset[str] = frozenset(f.path for f in FIELDS if f.optional)

# --------------------------------------------------------------------------- leaf checks


class _Bad(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def _exact_decimal_check(f: Field) -> Callable[[Any], Decimal]:
    """Money/decimal: a JSON string matching ``f.pattern``, an int or an exact Decimal."""
    low, high, places = f.minimum, f.maximum, f.places
    assert isinstance(low, Decimal) and isinstance(high, Decimal) and places is not None
    assert f.pattern is not None
    quantum = Decimal(1).scaleb(-places)
    # The pattern's digits say the range: it must be 0 to all nines, to the last place.
    assert low == 0 and high == Decimal(10) ** len(str(int(high))) - quantum
    text = re.compile(f.pattern)
    zero = Decimal(0).quantize(quantum)
    bad_format = (f"must be an amount from {low} to {high} with at most {places} decimal places, "
                  'as a string like "8500.00" or a JSON number')
    bad_range = f"must be between {low} and {high}"
    bad_places = f"must have at most {places} decimal places"

    def check(v: Any) -> Decimal:
        t = type(v)
        if t is str:
            if not text.fullmatch(v):
                raise _Bad(bad_format)
            if v[-places - 1 : -places] == ".":
                return Decimal(v)  # already exactly ``places`` places
            return Decimal(v).quantize(quantum, context=_CTX)
        if t is int:
            if v < low or v > high:
                raise _Bad(bad_range)
            return Decimal(v).quantize(quantum, context=_CTX)
        if isinstance(v, Decimal):
            if not v.is_finite():
                raise _Bad("must be a finite number")
            if v < low or v > high:
                raise _Bad(bad_range)
            try:
                d = v.quantize(quantum, context=_STRICT_CTX)  # traps Rounded: too many places
            except Rounded:
                raise _Bad(bad_places) from None
            if d.is_zero():  # zeros round silently ("0E-5"), and "-0.0" must not become "-0.00"
                if v.as_tuple().exponent < -places:  # type: ignore[operator]
                    raise _Bad(bad_places)
                return zero
            return d
        if t is float:
            raise _Bad("binary floating-point numbers are not accepted (parse with parse_json)")
        raise _Bad(bad_format)

    return check


def _make_check(f: Field) -> Callable[[Any], Any]:
    kind = f.kind
    if kind in ("money", "decimal"):
        return _exact_decimal_check(f)
    if kind == "bool":

        def check_bool(v: Any) -> bool:
            if v is True or v is False:
                return v
            raise _Bad("must be a boolean (true or false)")

        return check_bool
    if kind == "int":
        lo = f.minimum if f.minimum is not None else -(2**63)
        hi = f.maximum if f.maximum is not None else 2**63 - 1
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
        lo = f.min_length if f.min_length is not None else _STRING_LENGTH[0]
        hi = f.max_length if f.max_length is not None else _STRING_LENGTH[1]
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
        return _date_check(f)
    raise AssertionError(f"unknown field kind {kind!r}")  # pragma: no cover


def _date_check(f: Field) -> Callable[[Any], datetime.date]:
    low, high = f.minimum, f.maximum
    assert isinstance(low, datetime.date) and isinstance(high, datetime.date)
    assert f.pattern is not None
    text = re.compile(f.pattern)

    def check_date(v: Any) -> datetime.date:
        if type(v) is not str or text.fullmatch(v) is None:
            raise _Bad('must be a date string "YYYY-MM-DD"')
        try:
            d = datetime.date.fromisoformat(v)  # the pattern already fixed the format
        except ValueError:
            raise _Bad("not a valid calendar date") from None
        if d < low or d > high:
            raise _Bad(f"must be between {low} and {high}")
        return d

    return check_date


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


def _compile(table: tuple[Field, ...]) -> _Node:
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
                parent.items.append((part, path, None, False, NO_DEFAULT, node))
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


_ROOT = _compile(FIELDS)
_CONDITIONAL = tuple(f for f in FIELDS if f.required_when is not None)


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
                    errors.append(FieldError(field_path(node.path, key), "unknown field"))
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
            elif default is not NO_DEFAULT:
                if default is TODAY:
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
