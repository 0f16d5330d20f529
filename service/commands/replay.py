"""`deficiency replay --candidate RULES`: the options, the audit log to read, and the
report (`service.tooling.replay`) as text, JSON (`--format json`) or one
self-contained HTML page (`--format html`, `service.tooling.replay_html`).

`--since`/`--until` take an ISO date (midnight UTC) or an RFC 3339 timestamp with an
offset (a time without one is refused); `--until` is exclusive. `--limit N` (default
50) caps the changed decisions listed, in every format; `--all` lists them all.

`--out FILE` writes the report to FILE (whole or not at all: a temporary file beside
it, then renamed) and prints one line saying so; HTML needs it. `--console-url URL`
(HTML only) is the base of each decision's link, `URL/console/decisions/{id}`;
without it the links are root-relative.

Exit codes: 0 the report is complete; 1 the report is written but some records
could not be decided again (listed under failures); 2 the question could not be
asked (bad option, invalid candidate ruleset, audit log unreachable, --out not
writable).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

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
from .files import write_atomically
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


def output_from_args(args: argparse.Namespace) -> tuple[Path | None, str]:
    """(`--out` file or None for stdout, `--console-url` base), checked before any work."""
    out = Path(args.out) if args.out else None
    if args.format == "html" and out is None:
        raise CliError("--format html writes a file: give --out FILE")
    if out is not None:
        if out.is_dir():
            raise CliError(f"--out: {out} is a directory")
        if not out.parent.is_dir():
            raise CliError(f"--out: no directory {out.parent}")
    console = args.console_url or ""
    if console and args.format != "html":
        raise CliError("--console-url: only with --format html")
    if console:
        try:
            parts = urlsplit(console)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc \
                or parts.query or parts.fragment or any(c.isspace() for c in console):
            raise CliError(f"--console-url: {console!r} is not an http:// or https:// base "
                           "URL (no query or fragment)")
    return out, console.rstrip("/")


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
    target, console_url = output_from_args(args)
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
    if args.format == "html":
        from ..tooling.replay_html import render_html

        text = render_html(report, console_url)
    elif args.format == "json":
        text = json.dumps(report_json(report), indent=2, ensure_ascii=False) + "\n"
    else:
        text = render_text(report)
    if target is None:
        out.write(text)
    else:
        write_atomically(target, text)
        out.write(f"wrote {target}: {args.format} replay report, {tally.changed:,} changed "
                  f"of {tally.evaluated:,} replayed, {len(tally.failures):,} failed\n")
    return EXIT_FAILURES if tally.failures else EXIT_OK
