"""Moments as people and systems write them: RFC 3339 date-times with an offset, or a
full date (midnight UTC). One parser for the API's query parameters and the command
line: a time without an offset is refused, never guessed."""

from __future__ import annotations

import datetime
import re

_DATE_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}):([0-9]{2})"
                        r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})")
_EARLIEST = datetime.datetime.min.replace(tzinfo=datetime.UTC)
_LATEST = datetime.datetime.max.replace(tzinfo=datetime.UTC)


def parse_timestamp(text: str) -> datetime.datetime:
    """An RFC 3339 date-time (`2026-01-31T12:00:00Z`: seconds and offset required; a leap
    second, 23:59:60 UTC, reads as the next second) or full-date (midnight UTC), in UTC.
    A moment past either end of what `datetime` holds is read as that end."""
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        try:
            day = datetime.date.fromisoformat(text)
        except ValueError:
            raise ValueError("not a valid date") from None
        return datetime.datetime.combine(day, datetime.time(), datetime.UTC)
    parts = _DATE_TIME.fullmatch(text)
    if parts is None:
        raise ValueError("must be an RFC 3339 timestamp with a time zone "
                         "(e.g. 2026-01-31T12:00:00Z) or a date YYYY-MM-DD")
    day, hour_minute, second, fraction, offset = parts.groups()
    leap = second == "60"
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        moment = datetime.datetime.fromisoformat(
            f"{day}T{hour_minute}:{'59' if leap else second}{fraction or ''}{offset}")
    except ValueError:
        raise ValueError("not a valid timestamp") from None
    try:
        moment = moment.astimezone(datetime.UTC)
    except OverflowError:
        return _LATEST if moment.year == datetime.MAXYEAR else _EARLIEST
    if leap:
        if (moment.hour, moment.minute) != (23, 59):
            raise ValueError("not a valid timestamp (a leap second is 23:59:60 UTC)")
        if moment.date() == _LATEST.date():
            return _LATEST
        moment = moment.replace(microsecond=0) + datetime.timedelta(seconds=1)
    return moment
