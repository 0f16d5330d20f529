"""What the workers of one server agree on about the ruleset: which content of the rules
directory was last accepted (fully checked), the verdict on the last content examined,
and a generation number bumped on every change of either.

Every worker follows the accepted ruleset, whichever worker accepted it; a worker
that starts (SIGHUP replaces them all) examines the rules directory
against this record, so it never serves a content another worker rejected and
never checks the same content twice (`exclusive()` lets one worker check while
the others wait for its verdict).

Kept apart from the engine so the server's master can create the shared one
without importing durable-rules.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..policy.model import Ruleset

ACCEPTED, REJECTED, UNCHANGED = "accepted", "rejected", "unchanged"
#: Problems kept with a verdict: enough to act on, bounded in size.
MAX_KEPT_PROBLEMS = 100


@dataclass(frozen=True)
class Verdict:
    """The outcome of examining one content of the rules directory."""

    result: str  # ACCEPTED, REJECTED, or UNCHANGED (the files went back to the active ruleset)
    sha256: str | None  # of the rule files (None: the directory could not be read)
    trigger: str  # api, watcher, boot
    at: float = field(default_factory=time.time)
    name: str | None = None
    version: str | None = None
    reason: str = ""
    #: {"file", "line", "column", "severity", "message", "hint"}, errors first.
    problems: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "problems": list(self.problems)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Verdict:
        return cls(**{**doc, "problems": tuple(doc.get("problems", ()))})


@dataclass(frozen=True)
class RulesetState:
    accepted: Verdict | None = None  # the ruleset every worker should decide with
    last: Verdict | None = None  # the latest examination (a rejection stays visible here)


class ContentChanged(Exception):
    """The rule files changed while they were being checked or copied: examine again."""


class Generation(Protocol):
    #: Seconds between looks at the rules directory (None: no watching).
    watch_interval: float | None

    def current(self) -> int: ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]: ...

    def state(self) -> RulesetState: ...

    def publish(self, verdict: Verdict, ruleset: Ruleset | None = None,
                source: Path | None = None) -> int: ...

    def accepted_ruleset(self) -> Ruleset | None: ...


class LocalGeneration:
    """The record for the apps of a single process (tests, one worker): the accepted
    ruleset is kept as the object itself."""

    def __init__(self, watch_interval: float | None = None) -> None:
        self.watch_interval = watch_interval
        self._value = 0
        self._lock = threading.Lock()
        self._exclusive = threading.Lock()
        self._state = RulesetState()
        self._ruleset: Ruleset | None = None

    def current(self) -> int:
        return self._value

    def bump(self) -> int:
        with self._lock:
            self._value += 1
            return self._value

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._exclusive

    def state(self) -> RulesetState:
        return self._state

    def publish(self, verdict: Verdict, ruleset: Ruleset | None = None,
                source: Path | None = None) -> int:
        """Record a verdict (call inside `exclusive()`); an accepted one with its ruleset."""
        if verdict.result == ACCEPTED:
            self._ruleset = ruleset
            self._state = RulesetState(verdict, verdict)
        else:
            self._state = RulesetState(self._state.accepted, verdict)
        return self.bump()

    def accepted_ruleset(self) -> Ruleset | None:
        return self._ruleset


class SharedGeneration:
    """The record in shared memory and a private state directory: create it in the
    server's master, before the workers are forked.

    The directory holds `state.json` (written by atomic rename) and a copy of the
    accepted rule files (`snapshots/<sha256>/`), so a worker starting after the files
    were broken still loads exactly the content that was checked. `exclusive()` is an
    flock (released by the kernel if its holder dies) plus a lock for the threads of
    one process.
    """

    watch_interval: float | None = 1.0
    KEEP_SNAPSHOTS = 3

    def __init__(self, directory: str | None = None) -> None:
        # No lock of its own: a process-shared lock stays held for ever when its holder
        # is SIGKILLed. Readers read one aligned word; the one writer at a time is the
        # holder of `exclusive()` (an flock, released by the kernel if its holder dies).
        self._value: Any = multiprocessing.RawValue("Q", 0)
        self.directory = Path(directory or tempfile.mkdtemp(prefix="deficiency-rulesets-"))
        (self.directory / "snapshots").mkdir(parents=True, exist_ok=True)
        self._owner = os.getpid()
        self._pid = -1  # the process that opened _fd (flocks must not be shared by forks)
        self._fd = -1
        self._thread_lock = threading.Lock()
        self._snapshot_cache: tuple[str, Ruleset] | None = None
        if directory is None:
            atexit.register(self._remove)

    def _remove(self) -> None:
        if os.getpid() == self._owner:  # forked workers run atexit handlers too
            shutil.rmtree(self.directory, ignore_errors=True)

    def current(self) -> int:
        return int(self._value.value)

    def bump(self) -> int:
        """Call inside `exclusive()`."""
        self._value.value += 1
        return int(self._value.value)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._thread_lock:
            if self._pid != os.getpid():
                self._fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def state(self) -> RulesetState:
        try:
            doc = json.loads((self.directory / "state.json").read_bytes())
        except FileNotFoundError:
            return RulesetState()
        return RulesetState(*(Verdict.from_json(doc[k]) if doc.get(k) else None
                              for k in ("accepted", "last")))

    def publish(self, verdict: Verdict, ruleset: Ruleset | None = None,
                source: Path | None = None) -> int:
        """Record a verdict (call inside `exclusive()`). An accepted one copies the rule
        files of `source` first; ContentChanged when they no longer are that content."""
        state = self.state()
        if verdict.result == ACCEPTED:
            assert verdict.sha256 is not None and source is not None
            self._snapshot(source, verdict.sha256)
            state = RulesetState(verdict, verdict)
        else:
            state = RulesetState(state.accepted, verdict)
        doc = {k: v.to_json() if v else None
               for k, v in (("accepted", state.accepted), ("last", state.last))}
        tmp = self.directory / f"state.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.directory / "state.json")
        self._prune(state.accepted.sha256 if state.accepted else None)
        return self.bump()

    def accepted_ruleset(self) -> Ruleset | None:
        """The accepted ruleset, loaded from its snapshot (cached while it stays accepted)."""
        from ..policy.loader import load_ruleset

        accepted = self.state().accepted
        if accepted is None or accepted.sha256 is None:
            return None
        cached = self._snapshot_cache
        if cached is not None and cached[0] == accepted.sha256:
            return cached[1]
        ruleset = load_ruleset(self.directory / "snapshots" / accepted.sha256)
        if ruleset.sha256 != accepted.sha256:  # pragma: no cover - snapshots are verified
            return None
        self._snapshot_cache = (accepted.sha256, ruleset)
        return ruleset

    def _snapshot(self, source: Path, sha256: str) -> None:
        from ..policy.loader import rule_files, ruleset_digest

        target = self.directory / "snapshots" / sha256
        if target.is_dir():
            os.utime(target)  # accepted again: the newest, as far as pruning goes
            return
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.directory / "snapshots"))
        try:
            for f in rule_files(source):
                shutil.copyfile(f, tmp / f.name)
            if ruleset_digest(tmp, rule_files(tmp)) != sha256:
                raise ContentChanged(str(source))
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _prune(self, keep: str | None) -> None:
        """Keep the accepted snapshot and the few before it (a worker may be loading one)."""
        snapshots = sorted((p for p in (self.directory / "snapshots").iterdir()
                            if p.is_dir() and p.name != keep and not p.name.startswith(".")),
                           key=lambda p: p.stat().st_mtime, reverse=True)
        for old in snapshots[self.KEEP_SNAPSHOTS - 1:]:
            shutil.rmtree(old, ignore_errors=True)
