"""`deficiency replay --candidate RULES`: the options, the audit log to read, and the
report (`service.tooling.replay`) as text or JSON (`--format json`).

`--since`/`--until` take an ISO date (midnight UTC) or an RFC 3339 timestamp with an
offset (a time without one is refused); `--until` is exclusive. `--limit N` (default
50) caps the changed decisions listed, in text and JSON alike; `--all` lists them all.

Exit codes: 0 the report is complete; 1 the report is printed but some records
could not be decided again (listed under failures); 2 the question could not be
asked (bad option, invalid candidate ruleset, audit log unreachable).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import TextIO

from ..messages import first_and_more, one_line
from ..timestamps import parse_timestamp
from ..tooling.replay import (
    DEFAULT_LIMIT,
    Filters,
    ReplayError,
    ReplayReport,
    load_candidate,
    named_in,
    render_text,
    replay,
    report_json,
)
from .audit import audit_url, open_existing
from .errors import CliError
from .rules import require_checked

EXIT_OK, EXIT_FAILURES, EXIT_ERROR = 0, 1, 2


def parse_time(option: str, text: str) -> datetime.datetime:
    """`--since`/`--until`: an RFC 3339 timestamp with an offset, or a date (midnight UTC)."""
    try:
        return parse_timestamp(text.strip())
    except ValueError:
        raise CliError(f"{option}: {text!r} is not an ISO date (YYYY-MM-DD) or RFC 3339 "
                       "timestamp with an offset (YYYY-MM-DDTHH:MM:SSZ or +HH:MM)") from None


def filters_from_args(args: argparse.Namespace) -> Filters:
    from ..facts import FACT_ENUMS, JURISDICTIONS

    since = parse_time("--since", args.since) if args.since else None
    until = parse_time("--until", args.until) if args.until else None
    if since is not None and until is not None and since >= until:
        raise CliError("--since must be before --until (--until is exclusive)")
    codes = frozenset(c.strip().upper() for c in args.jurisdiction or ())
    for code in sorted(codes):
        if code not in JURISDICTIONS:
            raise CliError(f"--jurisdiction: unknown code {code!r} "
                           "(two letters: a US state, DC, PR, GU or VI)")
    types = frozenset(t.strip() for t in args.loan_type or ())
    for kind in sorted(types):
        if kind not in FACT_ENUMS["loan.type"]:
            raise CliError(f"--loan-type: unknown type {kind!r} "
                           f"(one of {', '.join(FACT_ENUMS['loan.type'])})")
    version = args.ruleset_version
    if version is not None and not version.strip():
        raise CliError("--ruleset-version: must not be empty")
    return Filters(since, until, codes, types, version)


def limit_from_args(args: argparse.Namespace) -> int | None:
    """How many changed decisions to list: `--limit N`, all with `--all` (None)."""
    if args.all:
        return None
    limit = DEFAULT_LIMIT if args.limit is None else args.limit
    if limit < 0:
        raise CliError("--limit: must be 0 or more (--all lists every change)")
    return limit


def _shown_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _default_workers() -> int:
    from ..config import cpu_count

    return cpu_count()


def replay_command(args: argparse.Namespace, out: TextIO) -> int:
    from ..audit import StoreUnavailable
    from ..engine.runtime import EngineError
    from ..policy.loader import PolicyError

    workers = args.workers if args.workers is not None else _default_workers()
    if not 1 <= workers <= 256:
        raise CliError("--workers: must be from 1 to 256")
    filters = filters_from_args(args)
    limit = limit_from_args(args)
    directory = Path(args.candidate)
    require_checked(directory, "candidate ruleset")
    try:
        rs = load_candidate(directory)
    except PolicyError as exc:
        found = first_and_more(exc.problems or [exc], f"run `deficiency check {directory}`")
        raise CliError(f"invalid candidate ruleset: {found}") from None
    url = audit_url(args)
    try:
        store = open_existing(url)
    except (ValueError, StoreUnavailable) as exc:
        raise CliError(f"audit store: {one_line(exc)}") from None
    started = time.perf_counter()
    try:
        tally = replay(store, directory, filters=filters, workers=workers, ruleset=rs)
    except EngineError as exc:
        raise CliError(f"candidate ruleset exceeds an engine limit: {one_line(exc)}") from None
    except StoreUnavailable as exc:
        raise CliError(f"audit store: {one_line(exc)}") from None
    except ReplayError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    report = ReplayReport(
        candidate_dir=str(directory),
        candidate={"name": rs.name, "version": rs.version, "sha256": rs.sha256},
        store=_shown_url(url), filters=filters, tally=tally,
        seconds=time.perf_counter() - started, named=named_in(rs), limit=limit)
    if args.format == "json":
        out.write(json.dumps(report_json(report), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(render_text(report))
    return EXIT_FAILURES if tally.failures else EXIT_OK
