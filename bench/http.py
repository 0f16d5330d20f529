"""HTTP benchmark: the real server (`deficiency serve`, 2 workers) under keep-alive load.

    .venv/bin/python bench/http.py [--seconds 10] [--connections 16] [--workers 2]
                                   [--only sqlite,postgresql,floor] [--pg-url URL]

For each scenario it starts the server as a subprocess with its own config, waits
for /readyz, and drives load from a separate client process (threads, one raw
keep-alive socket each, requests pre-encoded so the client stays cheap):

- `sqlite`:      POST /v1/decisions, audit log in a SQLite file (the default);
- `postgresql`:  POST /v1/decisions, audit log in a fresh PostgreSQL database
                 (created under --pg-url's server and dropped afterwards);
- `floor`:       POST /v1/_floor with the same body: the same server, routing,
                 body read and JSON answer, but no decision and no audit write;
- `unrecorded`:  a diagnostic, not a way to run the service: POST /v1/decisions on
                 the same server with the audit hand-off replaced by nothing (the
                 decision is validated, made, encoded for the log and answered, but
                 not recorded). Its ratio to the floor is the most any audit log
                 could leave: what the decision path costs by itself.

It prints decisions/s, p50/p99 latency, each decision scenario's ratio to the
floor, the server's CPU time per answer (and the audit commit process's share of
it) and how many cores other work on the machine kept busy meanwhile (a loaded
machine lowers every figure: compare runs with similar `others`). Targets on a
2-core machine: >= 1000 decisions/s on SQLite, p99 < 25 ms, ratio >= 0.5. The
client shares the machine's cores with the server.
"""

from __future__ import annotations

import os
import sys

# Run as `python bench/http.py`, this file's directory comes first on sys.path and
# its name would shadow the standard library's `http` package: drop that entry.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import contextlib
import json
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

SEED_FACTS: list[dict[str, Any]] = [
    {"jurisdiction": "OH", "as_of": "2026-02-01",
     "loan": {"id": "bench-car", "type": "auto", "unpaid_balance": "10000.00"},
     "collateral": {"kind": "vehicle"},
     "disposition": {"method": "auction", "date": "2026-01-10", "proceeds": "8500.00",
                     "costs": {"legal": "500.00"}}},
    {"jurisdiction": "TX", "as_of": "2026-02-01",
     "loan": {"id": "bench-home", "type": "mortgage", "unpaid_balance": "250000.00"},
     "collateral": {"kind": "dwelling", "dwelling_units": 1, "owner_occupied": True},
     "disposition": {"method": "short_sale", "date": "2026-01-10", "proceeds": "200000.00"},
     "negotiation": {"state": "short_sale_approved", "deficiency_waived": True}},
]


# ------------------------------------------------------------------ load client


def _request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: keep-alive\r\n\r\n")
    return head.encode("ascii") + body


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bool]:
    """Read one response from the keep-alive socket: (status, server closes)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head = bytes(buf[:end]).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = 0
    closing = False
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            closing = value.strip().lower() == "close"
    total = end + 4 + length
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    del buf[:total]
    return status, closing


def run_client(host: str, port: int, path: str, bodies: list[bytes], seconds: float,
               connections: int, warmup: float) -> dict[str, Any]:
    requests = [_request_bytes(host, port, path, b) for b in bodies]
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    results: list[tuple[list[float], int, int]] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        latencies: list[float] = []
        ok = bad = 0
        sock: socket.socket | None = None
        buf = bytearray()
        i = offset
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    break
                if sock is None:  # (re)connect: the server recycles connections
                    sock = socket.create_connection((host, port))
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buf.clear()
                sock.sendall(requests[i % len(requests)])
                i += 1
                status, closing = _read_response(sock, buf)
                if closing:
                    sock.close()
                    sock = None
                t1 = time.perf_counter()
                if t0 >= start_at:
                    latencies.append(t1 - t0)
                    if 200 <= status < 300:
                        ok += 1
                    else:
                        bad += 1
        finally:
            if sock is not None:
                sock.close()
        with lock:
            results.append((latencies, ok, bad))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = sorted(x for r in results for x in r[0])
    ok = sum(r[1] for r in results)
    bad = sum(r[2] for r in results)

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"ok": ok, "errors": bad, "rate": ok / seconds, "p50_ms": pct(0.50),
            "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan")}


# ------------------------------------------------------------------ server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_unrecorded(config: str) -> int:
    """`deficiency serve` with AuditLink.submit replaced by nothing (the `unrecorded`
    scenario). Patched in the master before gunicorn forks the workers."""
    sys.path.insert(0, str(ROOT))
    from service.api.audit_link import AuditLink
    from service.audit.store import prepare
    from service.cli import main as cli_main

    AuditLink.submit = lambda self, record: prepare(record) and None  # type: ignore
    return int(cli_main(["serve", "--config", config]) or 0)


@contextlib.contextmanager
def server(audit_url: str, workers: int, workdir: Path,
           unrecorded: bool = False) -> Iterator[tuple[int, int]]:
    port = _free_port()
    config = workdir / f"config-{port}.yaml"
    config.write_text(
        f"server:\n  bind: 127.0.0.1:{port}\n  workers: {workers}\n"
        f"rules:\n  dir: {ROOT / 'rules'}\n"
        f"audit:\n  url: {audit_url}\n")
    log = open(workdir / f"server-{port}.log", "wb")  # noqa: SIM115
    command = ([PYTHON, __file__, "--serve-unrecorded", str(config)] if unrecorded
               else [PYTHON, "-m", "service.cli", "serve", "--config", str(config)])
    proc = subprocess.Popen(command,
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited ({proc.returncode}); see {log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready after 60 s; see {log.name}")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    import psycopg

    name = f"deficiency_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def group_cpu_seconds(pgid: int) -> tuple[float, float]:
    """CPU time (user + system) used so far by the processes of a process group (the
    server's master, workers and audit commit process): (all of them, the commit
    process alone)."""
    total = commit = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            used = int(fields[11]) + int(fields[12])
            if b"service.audit.commit_process" in (entry / "cmdline").read_bytes():
                commit += used
        except OSError:
            continue
        total += used
    return total / tick, commit / tick


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def load(server: tuple[int, int], path: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the client in its own process, so its GIL is not the server's."""
    import resource

    port, pgid = server
    spec = json.dumps({"port": port, "path": path, "seconds": args.seconds,
                       "connections": args.connections, "warmup": args.warmup})
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_before = usage.ru_utime + usage.ru_stime
    busy_before, (cpu_before, commit_before) = machine_busy_seconds(), group_cpu_seconds(pgid)
    started = time.monotonic()
    out = subprocess.run([PYTHON, __file__, "--client", spec], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    elapsed = time.monotonic() - started
    cpu, commit = group_cpu_seconds(pgid)
    cpu, commit = cpu - cpu_before, commit - commit_before
    busy = machine_busy_seconds() - busy_before
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = usage.ru_utime + usage.ru_stime - client_before
    result = dict(json.loads(out.stdout))
    answered = result["ok"] * (args.seconds + args.warmup) / args.seconds
    # Server CPU per answer, warm-up included (approximately: same rate assumed).
    result["server_cpu_ms"] = cpu / answered * 1000 if answered else float("nan")
    result["commit_cpu_ms"] = commit / answered * 1000 if answered else float("nan")
    # Cores kept busy by anything but this benchmark (other work on the machine).
    result["other_cores"] = max(0.0, busy - cpu - client) / elapsed
    return result


def server_means(server: tuple[int, int]) -> dict[str, float]:
    """Mean time per decision spent deciding and waiting for the audit commit, from
    the server's own histograms (all workers)."""
    port = server[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")) and "{" not in name:
            values[name] = float(value)
    means = {}
    for key, metric in (("decide_ms", "deficiency_decision_duration_seconds"),
                        ("audit_ms", "deficiency_audit_write_duration_seconds")):
        count = values.get(f"{metric}_count", 0.0)
        means[key] = values.get(f"{metric}_sum", 0.0) / count * 1000 if count else float("nan")
    return means


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", default="sqlite,postgresql,floor,unrecorded")
    p.add_argument("--pg-url", default=os.environ.get(
        "DEFICIENCY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--serve-unrecorded", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_unrecorded:
        return serve_unrecorded(args.serve_unrecorded)
    if args.client:
        spec = json.loads(args.client)
        bodies = [json.dumps(f).encode() for f in SEED_FACTS]
        print(json.dumps(run_client("127.0.0.1", spec["port"], spec["path"], bodies,
                                    spec["seconds"], spec["connections"], spec["warmup"])))
        return 0

    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="deficiency-bench-") as tmp:
        work = Path(tmp)
        if "sqlite" in wanted or "floor" in wanted:
            with server(f"sqlite:///{work / 'audit.db'}", args.workers, work) as running:
                if "floor" in wanted:
                    results["floor"] = load(running, "/v1/_floor", args)
                if "sqlite" in wanted:
                    results["sqlite"] = load(running, "/v1/decisions", args)
                    results["sqlite"].update(server_means(running))
        if "unrecorded" in wanted:
            with server(f"sqlite:///{work / 'unrecorded.db'}", args.workers, work,
                        unrecorded=True) as running:
                results["unrecorded"] = load(running, "/v1/decisions", args)
                results["unrecorded"].update(server_means(running))
        if "postgresql" in wanted:
            with postgres_database(args.pg_url) as url, \
                    server(url, args.workers, work) as running:
                results["postgresql"] = load(running, "/v1/decisions", args)
                results["postgresql"].update(server_means(running))

    print(f"{args.workers} workers, {args.connections} keep-alive connections, "
          f"{args.seconds:g} s per scenario (after {args.warmup:g} s warm-up), "
          f"{os.cpu_count()} CPUs")
    print(f"{'scenario':<12} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'errors':>7} {'vs floor':>9} {'cpu ms':>7} {'commit':>7} {'others':>7} "
          f"{'decide ms':>10} {'audit ms':>9}")
    floor = results.get("floor", {}).get("rate")
    for name in ("sqlite", "postgresql", "floor", "unrecorded"):
        r = results.get(name)
        if r is None:
            continue
        ratio = f"{r['rate'] / floor:.2f}" if floor and name != "floor" else "-"
        server_side = (f" {r['decide_ms']:>10.2f} {r['audit_ms']:>9.2f}" if "decide_ms" in r
                       else "")
        print(f"{name:<12} {r['rate']:>9.0f} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} {r['errors']:>7} {ratio:>9} "
              f"{r['server_cpu_ms']:>7.2f} {r['commit_cpu_ms']:>7.2f} {r['other_cores']:>7.2f}"
              + server_side)
    print("cpu ms: server CPU (master, workers, audit commit process) per answer; commit: "
          "the audit commit process's share of it; others: cores busy with other work on "
          "the machine meanwhile; decide/audit ms: the server's mean time deciding and "
          "waiting for the audit commit (from /metrics); unrecorded: a diagnostic, the "
          "decision path with the audit hand-off replaced by nothing (the ratio no audit "
          "log could raise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
