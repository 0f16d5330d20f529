"""Decision ids: ULIDs, unique, increasing, and never repeated across a fork."""

from __future__ import annotations

import os
import re
import threading

from service.engine.decide import new_decision_id

ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def test_ids_are_ulids_that_only_increase() -> None:
    ids = [new_decision_id() for _ in range(3000)]  # more than one block of random bytes
    assert all(ULID.match(i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_threads_never_share_an_id() -> None:
    seen: list[list[str]] = []

    def make() -> None:
        seen.append([new_decision_id() for _ in range(2000)])

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for chunk in seen for i in chunk]
    assert len(set(ids)) == len(ids) == 16000


def test_a_forked_worker_does_not_reuse_its_parents_random_bits() -> None:
    """Workers are forked from one master: random bits drawn before the fork must not
    be handed out by both sides (two workers, same millisecond, same id)."""
    new_decision_id()  # random bytes now buffered in this process
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids' random parts
        try:
            os.write(write_fd, "".join(new_decision_id()[10:] for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    parent = [new_decision_id()[10:] for _ in range(5)]
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    child = [text[i:i + 16] for i in range(0, len(text), 16)]
    assert len(child) == 5
    assert not set(child) & set(parent)
