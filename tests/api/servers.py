"""The real server as a subprocess, and a TCP proxy that can cut a database off."""

from __future__ import annotations

import contextlib
import os
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
                 threads: int = 8, keepalive_requests: int = 1000,
                 audit_timeout: int | None = None) -> Path:
    lines = [
        "server:",
        f"  bind: 127.0.0.1:{port}",
        f"  workers: {workers}",
        f"  threads: {threads}",
        "  graceful_timeout: 10",
        f"  keepalive_requests: {keepalive_requests}",
        "rules:",
        f"  dir: {rules_dir or ROOT / 'rules'}",
        "audit:",
        f"  url: {audit_url}",
        *([f"  timeout: {audit_timeout}"] if audit_timeout is not None else []),
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
    `stall()` keeps every connection open and accepts new ones, but forwards nothing
    (the database, or the network to it, hangs without closing anything) until
    `resume()`. `drop_commit_answers(n)`: the next n connections that send a COMMIT
    have it delivered, and are cut the moment the database answers it - committed,
    but the client never hears so (`answers_dropped` counts them)."""

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
            with self._lock:
                self._sockets.update((client, upstream))
            committing = threading.Event()  # this connection's COMMIT is on its way
            for a, b, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, outbound, committing),
                                 daemon=True).start()

    def _take_commit_cut(self) -> bool:
        with self._lock:
            if self._commit_cuts <= 0:
                return False
            self._commit_cuts -= 1
            return True

    def _pipe(self, src: socket.socket, dst: socket.socket, outbound: bool,
              committing: threading.Event) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if outbound and b"COMMIT" in data and self._take_commit_cut():
                    committing.set()
                elif not outbound and committing.is_set():
                    with self._lock:
                        self.answers_dropped += 1
                    break  # the answer to the COMMIT: dropped, both sides cut
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
