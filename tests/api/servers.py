"""The real server as a subprocess, and a TCP proxy that can cut a database off."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, *, port: int, audit_url: str, workers: int = 2,
                 keys: list[dict[str, Any]] | None = None, rules_dir: Path | None = None,
                 threads: int = 8,
                 audit_timeout: int | None = None,
                 audit_settings: dict[str, Any] | None = None) -> Path:
    lines = [
        "server:",
        f"  bind: 127.0.0.1:{port}",
        f"  workers: {workers}",
        f"  threads: {threads}",
        "  graceful_timeout: 10",
        "rules:",
        f"  dir: {rules_dir or ROOT / 'rules'}",
        "audit:",
        f"  url: {audit_url}",
        *([f"  timeout: {audit_timeout}"] if audit_timeout is not None else []),
        *(f"  {name}: {value}" for name, value in (audit_settings or {}).items()),
        "auth:",
    ]
    if keys:
        lines.append("  keys:")
        for k in keys:
            lines += [f"    - name: {k['name']}", f"      sha256: {k['sha256']}",
                      f"      scopes: [{', '.join(k['scopes'])}]"]
    else:
        lines.append("  keys: []")
    path.write_text("\n".join(lines) + "\n")
    return path


class Server:
    """`python -m service.cli serve --config FILE` in its own process group."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0, ready: bool = True) -> Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--config", str(self.config)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items()
                 if not k.startswith(("DEFICIENCY_", "PROMETHEUS_"))},
        )
        log.close()
        self.wait_for("/readyz" if ready else "/healthz", timeout)
        return self

    def wait_for(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.base + path, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not answering {path} in {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """SIGKILL the whole process group: master and workers, no goodbyes."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reap_group()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the master (graceful) and wait; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()
        return int(self.proc.returncode)

    def _reap_group(self) -> None:
        # Workers left behind by a killed master would keep the port: end them too.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def start_sqlite_server(tmp_path: Path, **settings: Any) -> tuple[Path, Server]:
    """The real server on a free loopback port with its audit log in SQLite under
    `tmp_path`; `settings` go to `write_config`. Returns (its config file, the server)."""
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port=port,
                          audit_url=f"sqlite:///{tmp_path}/audit/audit.db", **settings)
    return config, Server(config, port, tmp_path / "server.log").start()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every connection and stops
    listening (the database is "down"), `restore()` listens again on the same port.

    - `stall()` keeps every connection open and accepts new ones, but forwards nothing
      (the database, or the network to it, hangs without closing anything) until
      `resume()`; `stall_when(marker)` stalls as the client sends bytes containing
      `marker` (that chunk is held too).
    - `drop_commit_answers(n)`: the next n answers to a COMMIT (PostgreSQL's "COMMIT"
      command tag, there also for prepared statements) are dropped and their
      connections cut - committed, but the client never hears so (`answers_dropped`
      counts them).
    - `latency(s)` holds every chunk `s` seconds before forwarding it, each way (a
      database far away).
    - `round_trips` counts the times an answer went back after the client had sent
      something: how often a client waited for the database.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._commit_cuts = 0
        self.answers_dropped = 0
        self._latency = 0.0
        self._stall_marker: bytes | None = None
        self.round_trips = 0

    def stall_when(self, marker: bytes) -> None:
        self._stall_marker = marker

    def latency(self, seconds: float) -> None:
        self._latency = seconds

    def drop_commit_answers(self, times: int) -> None:
        with self._lock:
            self._commit_cuts += times

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        t = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        t.start()
        self._threads.append(t)

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):  # as the database's own client and server do
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, upstream))
            last = [False]  # whether the last chunk delivered went to the database
            for a, b, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, outbound, last),
                                 daemon=True).start()

    def _take_commit_cut(self) -> bool:
        with self._lock:
            if self._commit_cuts <= 0:
                return False
            self._commit_cuts -= 1
            return True

    def _pipe(self, src: socket.socket, dst: socket.socket, outbound: bool,
              last: list[bool]) -> None:
        # Chunks are handed to a sender with the time they are due: latency delays each
        # by the same amount without queueing one behind the other's delay, as a
        # network does (several packets in flight at once).
        due: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        sender = threading.Thread(target=self._send, args=(due, dst, outbound, last),
                                  daemon=True)
        sender.start()
        flush = True
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not outbound and b"C\x00\x00\x00\x0bCOMMIT\x00" in data \
                        and self._take_commit_cut():
                    with self._lock:
                        self.answers_dropped += 1
                    flush = False
                    break  # the answer to a COMMIT: dropped, both sides cut
                marker = self._stall_marker
                if outbound and marker is not None and marker in data:
                    self._stall_marker = None
                    self.stall()
                due.put((time.monotonic() + self._latency, data))
        except OSError:
            pass
        finally:
            due.put(None)
            if flush:
                sender.join()  # what was read is delivered before the other side is cut
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _send(self, due: queue.Queue[tuple[float, bytes] | None], dst: socket.socket,
              outbound: bool, last: list[bool]) -> None:
        while (item := due.get()) is not None:
            at, data = item
            self._flowing.wait()
            pause = at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with self._lock:
                if last[0] and not outbound:
                    self.round_trips += 1
                last[0] = outbound
            try:
                dst.sendall(data)
            except OSError:
                return
