"""Strict, exact JSON: one document from request bytes, or every reason it is refused.

:func:`parse_json` reads numbers from their JSON text as exact values (integers as
``int``, everything else as ``decimal.Decimal``), never through a binary float. It
refuses, raising only :class:`~service.facts.FactsInvalid`: invalid UTF-8, a byte-order
mark, malformed JSON, nesting deeper than ``max_depth``, a number literal longer than
:data:`MAX_NUMBER_CHARS`, and, each at its path, duplicate object keys and the
``NaN`` / ``Infinity`` / ``-Infinity`` literals. Pure: no I/O.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from itertools import accumulate
from typing import Any

from .facts import MAX_ERRORS, FactsInvalid, FieldError, field_path

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "parse_json"]

#: Default maximum nesting of arrays/objects.
MAX_DEPTH = 32
#: Longest JSON number literal (in characters).
MAX_NUMBER_CHARS = 100


def _fail(message: str) -> FactsInvalid:
    return FactsInvalid([FieldError("", message)])


class _ParseError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _DupDict(dict):  # type: ignore[type-arg]
    """A parsed object that had duplicate keys (recorded so their paths can be reported)."""

    dup_keys: list[str]


class _NonFinite:
    """Where a ``NaN`` / ``Infinity`` / ``-Infinity`` literal stood (reported with its path)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


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


def _refusals(root: Any) -> list[FieldError]:
    """Every duplicated key and non-finite literal in the parsed tree, in document order
    (an iterative walk: the depth is bounded, but not by Python's stack)."""
    found: list[FieldError] = []
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            if isinstance(value, _DupDict):
                found.extend(FieldError(field_path(path, k), "duplicate key")
                             for k in value.dup_keys)
            stack.extend((v, field_path(path, k)) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
        elif isinstance(value, _NonFinite):
            found.append(FieldError(path, f"{value.name} is not allowed: numbers must be finite"))
    return found


def _capped(errors: list[FieldError]) -> list[FieldError]:
    if len(errors) <= MAX_ERRORS:
        return errors
    listed = errors[: MAX_ERRORS - 1]
    return [*listed, FieldError("", f"{len(errors) - len(listed)} more errors not listed")]


def _text(data: bytes | bytearray | memoryview | str, max_bytes: int | None) -> str:
    """The document's text: UTF-8 decoded, within ``max_bytes`` when given."""
    if isinstance(data, str):
        if max_bytes is not None and (
            len(data) > max_bytes
            or (len(data) * 4 > max_bytes
                and len(data.encode("utf-8", "surrogatepass")) > max_bytes)
        ):
            raise _fail(f"document too large (more than {max_bytes} bytes)")
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = data if isinstance(data, bytes) else bytes(data)
        if max_bytes is not None and len(raw) > max_bytes:
            raise _fail(f"document too large (more than {max_bytes} bytes)")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(f"invalid UTF-8 at byte {exc.start}") from None
    raise _fail("document must be bytes or str")


def parse_json(
    data: bytes | bytearray | memoryview | str,
    *,
    max_depth: int = MAX_DEPTH,
    max_bytes: int | None = None,
) -> Any:
    """Parse one JSON document exactly and strictly; raise only :class:`FactsInvalid`.

    Integers become ``int``, other numbers ``Decimal`` (never ``float``).  ``max_bytes``
    (off by default: the HTTP layer bounds bodies) rejects larger input up front.  A
    document that parses but holds duplicate keys or non-finite literals is refused with
    the path of each (``loan.unpaid_balance: NaN is not allowed: numbers must be finite``).
    """
    try:
        text = _text(data, max_bytes)
        if text.startswith("\ufeff"):
            raise _fail("malformed JSON: byte order mark not allowed")
        if not text.strip(" \t\r\n"):
            raise _fail("malformed JSON: empty document")
        if _too_deep(text, max_depth):
            raise _fail(f"JSON nested too deeply (more than {max_depth} levels)")

        suspect = False  # a duplicate key or a non-finite literal was seen

        def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            nonlocal suspect
            obj = dict(pairs)
            if len(obj) == len(pairs):
                return obj
            suspect = True
            dup = _DupDict(obj)
            seen: set[str] = set()
            dups: dict[str, None] = {}  # ordered set
            for key, _ in pairs:
                if key in seen:
                    dups[key] = None
                seen.add(key)
            dup.dup_keys = list(dups)
            return dup

        def non_finite(name: str) -> _NonFinite:
            nonlocal suspect
            suspect = True
            return _NonFinite(name)

        try:
            value = json.loads(
                text,
                parse_float=_parse_decimal,
                parse_int=_parse_int,
                parse_constant=non_finite,
                object_pairs_hook=pairs_hook,
            )
        except _ParseError as exc:
            raise _fail(exc.message) from None
        except json.JSONDecodeError as exc:
            raise _fail(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
                from None
        if suspect:  # never empty: a literal a later duplicate replaced leaves that key
            raise FactsInvalid(_capped(_refusals(value)))
        return value
    except FactsInvalid:
        raise
    except RecursionError:
        raise _fail(f"JSON nested too deeply (more than {max_depth} levels)") from None
    except (ValueError, TypeError, ArithmeticError, UnicodeError) as exc:
        raise _fail(f"malformed JSON: {type(exc).__name__}") from None
