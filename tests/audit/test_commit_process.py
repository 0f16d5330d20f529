"""The commit process: one writer committing the records of every worker together."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.audit.commit_process import (
    CommitAnswerLost,
    CommitClient,
    CommitProcess,
    CommitProcessUnreachable,
    CommitServer,
)
from service.audit.store import (
    DuplicateIdempotencyKey,
    StoreUnavailable,
    open_store,
    prepare,
)
from tests.audit.records import make_record


class Running:
    def __init__(self, server: CommitServer, thread: threading.Thread, stop_fd: int,
                 path: str) -> None:
        self.server, self.thread, self._stop_fd, self.path = server, thread, stop_fd, path

    def stop(self) -> None:
        if self._stop_fd >= 0:
            os.close(self._stop_fd)  # the control pipe closes: the loop ends
            self._stop_fd = -1
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def commit_server(tmp_path: Path, store_url: str) -> Iterator[Running]:
    path = str(tmp_path / "commit.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    read_fd, write_fd = os.pipe()
    server = CommitServer(listener, store_url, control_fd=read_fd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    running = Running(server, thread, write_fd, path)
    try:
        yield running
    finally:
        running.stop()
        listener.close()
        os.close(read_fd)


def test_records_from_many_threads_are_committed_together(commit_server, store_url):
    client = CommitClient(commit_server.path)
    failures: list[BaseException] = []
    ids: list[str] = []

    def submit(thread: int) -> None:
        try:
            for i in range(25):
                record = make_record(thread * 1000 + i)
                assert client.submit_many([prepare(record)]) == [None]
                ids.append(record.decision_id)
        except BaseException as exc:  # collected, asserted below
            failures.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert commit_server.server.committed == 200
    assert commit_server.server.transactions < 200
    with open_store(store_url) as store:
        assert {r["decision_id"] for r in store.iter_records()} == set(ids)
        assert store.verify().ok


def test_duplicates_come_back_as_the_store_reports_them(commit_server, store_url):
    client = CommitClient(commit_server.path)
    first = make_record(1, key="k")
    assert client.submit_many([prepare(first)]) == [None]
    errors = client.submit_many([prepare(make_record(2)), prepare(make_record(3, key="k"))])
    assert errors[0] is None
    assert isinstance(errors[1], DuplicateIdempotencyKey)
    assert (errors[1].key, errors[1].decision_id) == ("k", first.decision_id)
    assert client.submit_many([]) == []
    client.close()


def test_an_unreachable_commit_process_is_reported_before_anything_is_sent(tmp_path):
    client = CommitClient(str(tmp_path / "nobody.sock"))
    with pytest.raises(CommitProcessUnreachable):
        client.submit_many([prepare(make_record(1))])


def test_losing_the_commit_process_is_store_unavailable(commit_server):
    client = CommitClient(commit_server.path)
    assert client.submit_many([prepare(make_record(1))]) == [None]
    commit_server.stop()  # closes every connection
    with pytest.raises(StoreUnavailable, match="lost the commit process"):
        client.submit_many([prepare(make_record(2))])


def test_an_unavailable_store_is_answered_not_fatal(tmp_path):
    path = str(tmp_path / "commit.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    read_fd, write_fd = os.pipe()
    server = CommitServer(listener, "postgresql://postgres@127.0.0.1:1/a?connect_timeout=2",
                          control_fd=read_fd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        errors = CommitClient(path).submit_many([prepare(make_record(1))])
        assert isinstance(errors[0], StoreUnavailable)
    finally:
        os.close(write_fd)
        thread.join(10)
        listener.close()
        os.close(read_fd)


@pytest.mark.parametrize("where", ["abstract", "directory"])
def test_the_process_starts_commits_and_stops(tmp_path, where):
    url = f"sqlite:///{tmp_path}/audit.db"
    process = CommitProcess(url, None if where == "abstract" else str(tmp_path))
    assert process.path.startswith("\0") == (where == "abstract")
    try:
        assert process.alive()
        client = CommitClient(process.path)
        assert client.submit_many([prepare(make_record(1))]) == [None]
        client.close()
    finally:
        process.stop()
    assert not process.alive()
    if where == "directory":
        assert not os.path.exists(process.path)
    with open_store(url) as store:
        assert store.count() == 1 and store.verify().ok


class ScriptedCommitProcess:
    """Takes one request on a Unix socket and answers it as `answer(payload, conn)` does."""

    def __init__(self, path: str, answer) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.answer = answer
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            head = conn.recv(4, socket.MSG_WAITALL)
            (size,) = struct.unpack("!I", head)
            self.received.append(conn.recv(size, socket.MSG_WAITALL))
            self.answer(self.received[-1], conn)

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def test_an_answer_arriving_in_pieces_is_read_whole(tmp_path):
    """The client reads an answer in as few receives as it arrives in: one that comes a
    few bytes at a time is still read to its end, and not past it."""

    def trickle(payload: bytes, conn: socket.socket) -> None:
        verdicts = pickle.dumps([None, ("id", "01SOMEID")])
        frame = struct.pack("!I", len(verdicts)) + verdicts
        for i in range(0, len(frame), 3):
            conn.sendall(frame[i:i + 3])
            time.sleep(0.002)

    path = str(tmp_path / "trickle.sock")
    fake = ScriptedCommitProcess(path, trickle)
    try:
        client = CommitClient(path, timeout=5)
        errors = client.submit_many([prepare(make_record(1)), prepare(make_record(2))])
        assert errors[0] is None and errors[1].decision_id == "01SOMEID"
        assert len(pickle.loads(fake.received[0])) == 2
    finally:
        fake.close()


def test_a_commit_process_that_never_answers_is_given_up_on_after_the_timeout(tmp_path):
    """The answer's timeout is kept by the kernel (the socket itself blocks): a process
    that takes the records and stays silent is reported as timed out, not waited for."""
    release = threading.Event()
    path = str(tmp_path / "silent.sock")
    fake = ScriptedCommitProcess(path, lambda payload, conn: release.wait(10))
    try:
        client = CommitClient(path, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(CommitAnswerLost, match=r"no answer in 0\.3 s") as lost:
            client.submit_many([prepare(make_record(1))])
        waited = time.monotonic() - started
        assert lost.value.timed_out
        assert 0.25 <= waited < 2, waited
    finally:
        release.set()
        fake.close()


def test_an_answer_with_bytes_after_it_is_refused(tmp_path):
    """Extra bytes after an answer mean the connection is out of step: the answer is not
    trusted (the records may or may not be committed)."""

    def garbled(payload: bytes, conn: socket.socket) -> None:
        verdicts = pickle.dumps([None])
        conn.sendall(struct.pack("!I", len(verdicts)) + verdicts + b"junk")

    path = str(tmp_path / "garbled.sock")
    fake = ScriptedCommitProcess(path, garbled)
    try:
        with pytest.raises(CommitAnswerLost, match="unexpected bytes") as lost:
            CommitClient(path, timeout=5).submit_many([prepare(make_record(1))])
        assert not lost.value.timed_out
    finally:
        fake.close()
