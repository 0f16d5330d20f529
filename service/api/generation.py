"""A reload generation number: bumped by the worker that reloads the ruleset, watched
by the others. Kept apart from the engine so the gunicorn master can create the
shared one without importing durable-rules."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any, Protocol


class Generation(Protocol):
    def current(self) -> int: ...

    def bump(self) -> int: ...


class LocalGeneration:
    """A generation number for a single process (tests, one worker)."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def current(self) -> int:
        return self._value

    def bump(self) -> int:
        with self._lock:
            self._value += 1
            return self._value


class SharedGeneration:
    """A generation number in shared memory: create it before forking the workers."""

    def __init__(self) -> None:
        self._value: Any = multiprocessing.Value("Q", 0)

    def current(self) -> int:
        return int(self._value.value)

    def bump(self) -> int:
        with self._value.get_lock():
            self._value.value += 1
            return int(self._value.value)
