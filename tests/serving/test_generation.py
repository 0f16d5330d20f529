"""The record the workers of one server share (service/serving/generation.py) survives a
worker SIGKILLed at any moment: nothing it held stays held."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from service.serving.generation import SharedGeneration

KILLS = 60


def _churn(generation: SharedGeneration) -> None:
    """What a worker does with the record, as fast as it can: read it, publish to it."""
    while True:
        generation.current()
        with generation.exclusive():
            generation.bump()


def _within(seconds: float, action) -> bool:
    done = threading.Event()

    def run() -> None:
        action()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def test_a_worker_killed_while_reading_or_publishing_blocks_no_other(tmp_path: Path) -> None:
    generation = SharedGeneration(str(tmp_path / "state"))
    for _ in range(KILLS):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child is killed
            try:
                _churn(generation)
            finally:
                os._exit(1)
        time.sleep(0.003)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

        def read_and_publish() -> None:
            before = generation.current()
            with generation.exclusive():
                assert generation.bump() == generation.current() > before

        assert _within(5.0, read_and_publish), "a killed worker left the record locked"
