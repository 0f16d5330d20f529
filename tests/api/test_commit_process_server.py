"""The real server's audit commit process: it commits for both workers, and when it is
killed mid-stream nothing answered 2xx is lost, nothing fails, and it comes back."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from .servers import Server, start_sqlite_server
from .test_durability import audit_verify, hammer


def commit_processes(server: Server) -> list[int]:
    """Processes of the server's group running the commit process."""
    assert server.proc is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if (int(fields[2]) == server.proc.pid and fields[0] != b"Z"
                and b"service.audit.commit_process" in cmdline):
            found.append(int(entry.name))
    return found


def test_killing_the_commit_process_loses_and_fails_nothing(tmp_path: Path) -> None:
    config, server = start_sqlite_server(tmp_path)
    answered: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()
    try:
        [first] = commit_processes(server)
        workers = set(Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
                      .read_text().split())
        assert str(first) not in workers  # not counted as a worker
        threads = hammer(server, stop, answered, statuses)
        while len(answered) < 100:
            time.sleep(0.02)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while commit_processes(server) in ([], [first]) and time.monotonic() < deadline:
            time.sleep(0.05)
        [second] = commit_processes(server)
        assert second != first
        count = len(answered)
        while len(answered) < count + 100:
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(15)
        code = server.stop()
    finally:
        stop.set()
        server.kill()
    assert code == 0, server.log()
    assert all(s == 201 for s in statuses), sorted(set(statuses))
    assert "Traceback" not in server.log()
    assert "ended unexpectedly" in (tmp_path / "server.log").read_text()
    assert commit_processes(server) == []
    verify = audit_verify(config)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert int(verify.stdout.split()[1]) >= len(answered)
