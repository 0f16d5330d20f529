"""Messages for people, one line each: an error's first line, and "the first problem
and N more". Pure; every layer may use it."""

from __future__ import annotations

from collections.abc import Sequence


def one_line(exc: BaseException) -> str:
    """The first line of an error's text, white space folded (a database driver's own
    error when `exc` wraps one); the error's type name when it has no text."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def first_and_more(problems: Sequence[object], hint: str | None = None) -> str:
    """`first` or `first (and N more[; hint])`; `problems` must not be empty."""
    first = one_line(problems[0]) if isinstance(problems[0], BaseException) \
        else str(problems[0])
    rest = len(problems) - 1
    if rest < 1:
        return first
    return f"{first} (and {rest} more{f'; {hint}' if hint else ''})"
