"""`deficiency serve`: check what would stop every worker, then run the server.

Errors are `CliError` (one line, exit 2), never a traceback. This module imports
little at the top: `serve` must set up multiprocess metrics before any worker
imports prometheus_client.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import TextIO

from ..commands.errors import CliError
from ..commands.rules import require_checked
from ..config import Config, ConfigError, is_loopback_bind, load_config, split_bind


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as exc:
        raise CliError(f"configuration: {exc}") from None


def serve_command(args: argparse.Namespace, out: TextIO) -> int:
    config = _config(args)
    bind = (args.bind or config.server.bind).strip()
    if not bind.startswith("unix:"):
        try:
            split_bind(bind)
        except ValueError as exc:
            raise CliError(f"--bind: {exc}") from None
    workers = args.workers if args.workers is not None else config.server.workers
    if workers < 1:
        raise CliError("--workers: must be at least 1")
    if not config.auth.keys and not is_loopback_bind(bind):
        raise CliError(
            f"refusing to serve on {bind} without API keys: add keys under auth.keys "
            "(deficiency keys new --scope decide) or bind a loopback address")
    _check_startup(config)
    if not config.auth.keys:
        print("deficiency: no API keys configured (auth.keys): the service is OPEN - every "
              f"request has every scope; listening on loopback only ({bind})",
              file=sys.stderr)

    own_metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="deficiency-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    from .server import serve

    try:
        serve(getattr(args, "config", None), bind=bind, workers=workers,
              threads=config.server.threads, graceful_timeout=config.server.graceful_timeout,
              keepalive=config.server.keepalive)
    except SystemExit as exc:  # granian stops with a code (e.g. a worker crash loop)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
    return 0


def _check_startup(config: Config) -> None:
    """What would make every worker fail to boot is reported here, once, in one line."""
    from ..audit.database import normalise_url

    try:
        normalise_url(config.audit.url)
    except ValueError as exc:
        raise CliError(f"configuration: audit.url: {exc}") from None
    # The workers accept only a ruleset that passes the full check (load errors, engine
    # limits, gaps, conflicts); say what fails here, once, in one line.
    require_checked(config.rules.dir)
    # The signing key, created here (once, before the workers) when none is configured.
    from ..audit.notes import NoteError
    from ..serving.signing import log_signer

    try:
        log_signer(config.audit)
    except (NoteError, OSError) as exc:
        raise CliError(f"configuration: {exc}") from None
    # The console's session secret, likewise created once here when none is configured.
    from ..serving.session_key import session_secret

    try:
        session_secret(config)
    except ValueError as exc:
        raise CliError(f"configuration: {exc}") from None
