"""HTTP benchmark: today's stack against the working tree's, in one sitting, under keep-alive load.

    .venv/bin/python bench/http.py [--stacks baseline,current] [--baseline-rev REV]
        [--only sqlite,postgresql,batch] [--seconds 10] [--warmup 2] [--connections 16]
        [--workers 2] [--threads M] [--baseline-workers 2]
        [--pg-url URL] [--engine-sample 5000] [--engine-repeat 3] [--start-timeout 60]

Stacks: `baseline` is the service at `--baseline-rev REV` (`--baseline` is the same
flag), run from the git worktree /tmp/deficiency-baseline-<7-digit sha of REV> (added,
detached, when missing; reused when it is at REV) as `deficiency serve` with
`--baseline-workers` workers and its default threads; `current` is this working tree,
run as `deficiency serve` in the shape `--workers`/`--threads` give. Both use this
interpreter and venv, the stack's tree first on PYTHONPATH; nothing is installed.
Baselines of note:
- fc64932 (the default): the stack before issue 13. It runs on gunicorn 27, which this
  venv must then have: `.venv/bin/pip install 'gunicorn>=27,<28'`;
- 58f44a8: the same granian server right before the audit log's Merkle tree and
  receipts, i.e. "the same server without receipts" (the receipts issue asks
  current/baseline recorded decisions/s >= 90% in one sitting):
  `.venv/bin/python bench/http.py --baseline-rev 58f44a8`.
A stack whose configuration knows `audit.signing_key` (the current one) is given a
fresh Ed25519 key and checkpoint file in the run's temporary directory, so nothing is
written under the working tree's data/.

Scenarios, each on a freshly started server with a fresh audit log:
- `sqlite`:     POST /v1/decisions, audit log in a SQLite file;
- `postgresql`: POST /v1/decisions, audit log in a fresh PostgreSQL database created
                under --pg-url's server and dropped afterwards;
- `batch`:      POST /v1/decisions/batch, 100 items per request, SQLite.

For each it prints recorded decisions/s (answered 2xx; batch items answered 201 counted
one by one), whether a 201 carries a `receipt` (one probe request before the load),
p50/p99 request latency, the server's CPU time per recorded decision (its
whole process group: master, workers, helpers) and that CPU divided by the in-process
decision path's CPU per decision (`bench/engine.py` of the same stack, run first in the
same sitting). The load comes from a separate client process (one raw keep-alive socket
per connection, requests pre-encoded), sharing the machine's cores with the server.
With both stacks it ends with current/baseline recorded decisions/s per scenario, as a
percentage, and whether it is at least 90%.
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
import importlib.util
import json
import re
import shlex
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_BASELINE = "fc64932"
SCENARIOS = ("sqlite", "postgresql", "batch")
STACKS = ("baseline", "current")
BATCH_ITEMS = 100
TARGET_PERCENT = 90  # current/baseline recorded decisions/s (the receipts issue)

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


class Failed(Exception):
    """A stack or scenario that could not be measured; the message says why."""


# ------------------------------------------------------------------ load client


def _request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: keep-alive\r\n\r\n")
    return head.encode("ascii") + body


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bool, bytes]:
    """Read one response from the keep-alive socket: (status, server closes, body)."""
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
    body = bytes(buf[end + 4:total])
    del buf[:total]
    return status, closing, body


def _recorded(status: int, body: bytes, batch: bool) -> tuple[int, int]:
    """(decisions recorded, decisions refused) by one answer."""
    if not 200 <= status < 300:
        return 0, BATCH_ITEMS if batch else 1
    if not batch:
        return 1, 0
    results = json.loads(body)["results"]
    done = sum(1 for r in results if r.get("status") == 201)
    return done, len(results) - done


def run_client(host: str, port: int, path: str, bodies: list[bytes], seconds: float,
               connections: int, warmup: float, batch: bool) -> dict[str, Any]:
    requests = [_request_bytes(host, port, path, b) for b in bodies]
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    results: list[tuple[list[float], int, int, int]] = []
    problems: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        latencies: list[float] = []
        recorded = refused = everything = 0
        sock: socket.socket | None = None
        buf = bytearray()
        i = offset
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    break
                try:
                    if sock is None:  # (re)connect: the server may recycle connections
                        sock = socket.create_connection((host, port), timeout=30)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        buf.clear()
                    sock.sendall(requests[i % len(requests)])
                    i += 1
                    status, closing, body = _read_response(sock, buf)
                    done, bad = _recorded(status, body, batch)
                except (OSError, ValueError) as exc:  # reset, timed out, garbled: counted
                    with lock:
                        problems.append(f"{type(exc).__name__}: {exc}")
                    if sock is not None:
                        sock.close()
                        sock = None
                    if t0 >= start_at:
                        refused += BATCH_ITEMS if batch else 1
                    time.sleep(0.05)
                    continue
                if closing:
                    sock.close()
                    sock = None
                t1 = time.perf_counter()
                everything += done
                if t0 >= start_at:
                    latencies.append(t1 - t0)
                    recorded += done
                    refused += bad
        finally:
            if sock is not None:
                sock.close()
        with lock:
            results.append((latencies, recorded, refused, everything))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = sorted(x for r in results for x in r[0])

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    recorded = sum(r[1] for r in results)
    return {"recorded": recorded, "errors": sum(r[2] for r in results),
            "recorded_all": sum(r[3] for r in results),  # warm-up included
            "rate": recorded / seconds, "requests": len(latencies) / seconds,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
            "problems": sorted(set(problems))[:5]}


def client_bodies(batch: bool) -> list[bytes]:
    if batch:
        items = [SEED_FACTS[i % len(SEED_FACTS)] for i in range(BATCH_ITEMS)]
        return [json.dumps({"items": items}).encode()]
    return [json.dumps(f).encode() for f in SEED_FACTS]


# ------------------------------------------------------------------ stacks and servers


@dataclass(frozen=True)
class Stack:
    name: str  # baseline | current
    root: Path  # the source tree run (PYTHONPATH and working directory)
    revision: str
    workers: int
    threads: int | None  # None: the stack's default

    @property
    def shape(self) -> str:
        threads = "its default threads" if self.threads is None else f"{self.threads} threads"
        return f"serve, {self.workers} workers x {threads}"


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", "--no-optional-locks", "-C", str(cwd), *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise Failed(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def baseline_tree(rev: str) -> tuple[Path, str]:
    """The worktree of `rev` in /tmp (added, detached, when missing): (path, short sha)."""
    full = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    short = _git("rev-parse", "--short=7", full)
    path = Path("/tmp") / f"deficiency-baseline-{short}"
    if not path.exists():
        _git("worktree", "add", "--detach", str(path), full)
    elif _git("rev-parse", "HEAD", cwd=path) != full:
        raise Failed(f"{path} exists but is not at {short}: remove it or pick another "
                     "--baseline-rev")
    return path, short


def current_revision() -> str:
    head = _git("rev-parse", "--short=7", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head}+changes" if dirty else head


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").rstrip("\n").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join("    | " + line for line in text[-lines:]) or "    | (empty log)"


def _server_env(stack: Stack, config: Path) -> dict[str, str]:
    # No DEFICIENCY_* from the caller's environment: the written config is the whole story.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFICIENCY_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(stack.root), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["DEFICIENCY_CONFIG"] = str(config)
    return env


def _runs_on_gunicorn(root: Path) -> bool:
    """Whether the tree's package depends on gunicorn (fc64932 and before do)."""
    with contextlib.suppress(OSError):
        return re.search(r'^\s*"gunicorn\b', (root / "pyproject.toml").read_text(),
                         re.MULTILINE) is not None
    return False


def _signs_checkpoints(root: Path) -> bool:
    """Whether the tree's configuration has `audit.signing_key` (receipts exist)."""
    with contextlib.suppress(OSError):
        return "signing_key" in (root / "service" / "config.py").read_text()
    return False


def _write_signing_key(path: Path) -> None:
    """A new Ed25519 key, PEM (PKCS#8), as `deficiency audit keygen` writes one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.chmod(0o600)


def _server_command(stack: Stack, config: Path) -> list[str]:
    if _runs_on_gunicorn(stack.root) and importlib.util.find_spec("gunicorn") is None:
        raise Failed(f"the {stack.name} stack ({stack.revision}) runs on gunicorn: "
                     ".venv/bin/pip install 'gunicorn>=27,<28'")
    return [PYTHON, "-m", "service.cli", "serve", "--config", str(config)]


@contextlib.contextmanager
def server(stack: Stack, audit_url: str, workdir: Path,
           start_timeout: float) -> Iterator[tuple[int, int]]:
    """A started server of `stack` on a free port: (port, process group id). Raises Failed
    with the tail of the server's log when it exits or is not ready in time."""
    port = _free_port()
    config = workdir / f"config-{port}.yaml"
    threads = "" if stack.threads is None else f"  threads: {stack.threads}\n"
    signing = ""
    if _signs_checkpoints(stack.root):  # else the key may land in the tree's data/
        key = workdir / f"signing-key-{port}.pem"
        _write_signing_key(key)
        signing = (f"  signing_key: {key}\n"
                   f"  checkpoint_file: {workdir / f'checkpoints-{port}.jsonl'}\n")
    config.write_text(
        f"server:\n  bind: 127.0.0.1:{port}\n  workers: {stack.workers}\n{threads}"
        f"rules:\n  dir: {stack.root / 'rules'}\n"
        f"audit:\n  url: {audit_url}\n{signing}")
    log_path = workdir / f"server-{port}.log"
    command = _server_command(stack, config)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=stack.root,
                                env=_server_env(stack, config),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise Failed(f"server exited with status {proc.returncode} before it was "
                             f"ready: {shlex.join(command)}\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failed(f"server not ready after {start_timeout:g} s: "
                             f"{shlex.join(command)}\n{_tail(log_path)}")
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
        if _group_members(proc.pid):  # a helper outlived the master: still our group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    import psycopg

    name = f"deficiency_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise Failed(f"cannot create a database under {server_url}: {exc}") from None
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------ measurement


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[2]) == pgid:
                    members.append(int(entry.name))
    return members


def group_cpu_seconds(pgid: int) -> tuple[float, float]:
    """CPU time (user + system) used so far by the processes of a process group — the
    server's master, workers and any helper — and by the children they reaped: (all of
    it, the audit commit process's share; 0 when there is none)."""
    total = commit = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            used = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
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


def load(running: tuple[int, int], path: str, batch: bool,
         args: argparse.Namespace) -> dict[str, Any]:
    """Run the client in its own process (its GIL is not the server's) and account the
    server's CPU per recorded decision, warm-up included on both sides."""
    import resource

    port, pgid = running
    spec = json.dumps({"port": port, "path": path, "seconds": args.seconds, "batch": batch,
                       "connections": args.connections, "warmup": args.warmup})
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_before = usage.ru_utime + usage.ru_stime
    busy_before, (cpu_before, commit_before) = machine_busy_seconds(), group_cpu_seconds(pgid)
    started = time.monotonic()
    try:
        out = subprocess.run([PYTHON, __file__, "--client", spec], capture_output=True,
                             text=True, cwd=ROOT, timeout=args.seconds + args.warmup + 120)
    except subprocess.TimeoutExpired:
        raise Failed("the load client did not finish (server stuck?)") from None
    if out.returncode != 0:
        raise Failed(f"the load client failed:\n{out.stderr.strip()[-2000:]}")
    elapsed = time.monotonic() - started
    cpu, commit = group_cpu_seconds(pgid)
    cpu, commit = cpu - cpu_before, commit - commit_before
    busy = machine_busy_seconds() - busy_before
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = usage.ru_utime + usage.ru_stime - client_before
    result = dict(json.loads(out.stdout))
    everything = result["recorded_all"]
    result["server_cpu_ms"] = cpu / everything * 1000 if everything else float("nan")
    result["commit_cpu_ms"] = commit / everything * 1000 if everything else float("nan")
    # Cores kept busy by anything but this benchmark (other work on the machine).
    result["other_cores"] = max(0.0, busy - cpu - client) / elapsed
    return result


def probe_receipt(port: int, path: str, batch: bool) -> str:
    """One request before the load: `yes` when its 201 carries a `receipt`, `no` when
    it does not, else what the server answered (its status and the body's start)."""
    body = client_bodies(batch)[0]
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, text = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    except OSError as exc:
        return f"no answer: {exc}"
    try:
        answer = json.loads(text)
        if batch:
            answer = answer["results"][0]
            status = answer.get("status", status)
            answer = answer.get("decision", answer)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        answer = None
    if status != 201 or not isinstance(answer, dict):
        return f"{status}: {text[:300].decode(errors='replace')}"
    return "yes" if isinstance(answer.get("receipt"), dict) else "no"


def server_means(port: int) -> dict[str, float]:
    """Mean time per decision spent deciding and per audit write, from the server's own
    histograms (all workers); NaN where the server does not expose them."""
    means = {"decide_ms": float("nan"), "audit_ms": float("nan")}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return means
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")) and "{" not in name:
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    for key, metric in (("decide_ms", "deficiency_decision_duration_seconds"),
                        ("audit_ms", "deficiency_audit_write_duration_seconds")):
        count = values.get(f"{metric}_count", 0.0)
        if count:
            means[key] = values.get(f"{metric}_sum", 0.0) / count * 1000
    return means


_ENGINE_LINE = re.compile(r"^\(a\) full path.*?\s([\d,]+)\s+([\d.]+)\s*$", re.MULTILINE)


def engine_ms(stack: Stack, args: argparse.Namespace) -> float:
    """CPU ms per decision of the in-process decision path: `bench/engine.py` of the
    stack's own tree, its full path with the durable-rules engine."""
    command = [PYTHON, "bench/engine.py", "--repeat", str(args.engine_repeat),
               "--sample", str(args.engine_sample), "--decisions", "1000"]
    env = dict(os.environ, PYTHONPATH=str(stack.root))
    try:
        out = subprocess.run(command, cwd=stack.root, env=env, capture_output=True, text=True,
                             timeout=900)
    except subprocess.TimeoutExpired:
        raise Failed(f"{shlex.join(command)} in {stack.root}: no answer in 900 s") from None
    found = _ENGINE_LINE.search(out.stdout)
    if out.returncode != 0 or found is None:
        tail = "\n".join("    | " + x for x in (out.stderr or out.stdout).splitlines()[-15:])
        raise Failed(f"{shlex.join(command)} in {stack.root} failed "
                     f"(status {out.returncode}):\n{tail}")
    return float(found.group(2)) / 1000


def run_scenario(stack: Stack, scenario: str, work: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    batch = scenario == "batch"
    path = "/v1/decisions/batch" if batch else "/v1/decisions"
    with contextlib.ExitStack() as stack_of:
        if scenario == "postgresql":
            url = stack_of.enter_context(postgres_database(args.pg_url))
        else:
            url = f"sqlite:///{work / f'audit-{stack.name}-{scenario}-{uuid.uuid4().hex[:6]}.db'}"
        port, pgid = stack_of.enter_context(server(stack, url, work, args.start_timeout))
        receipt = probe_receipt(port, path, batch)
        result = load((port, pgid), path, batch, args)
        result["receipt"] = receipt
        result.update(server_means(port))
    return result


# ------------------------------------------------------------------ report


def _f(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN: not measured


def report(stacks: list[Stack], wanted: list[str], engine: dict[str, tuple[float, str]],
           results: dict[tuple[str, str], dict[str, Any] | str],
           args: argparse.Namespace) -> None:
    print()
    print(f"$ {shlex.join(sys.orig_argv)}")
    print(f"{args.connections} keep-alive connections, {args.seconds:g} s per scenario after "
          f"{args.warmup:g} s warm-up, {os.cpu_count()} CPUs, batch {BATCH_ITEMS} items")
    for s in stacks:
        ms, note = engine.get(s.name, (float("nan"), "not measured"))
        print(f"  {s.name:<9} {s.revision:<16} {s.shape:<38} in-process "
              f"{_f(ms, '.3f')} ms CPU/decision{note}")
    print(f"{'stack':<9} {'scenario':<11} {'dec/s':>8} {'rcpt':>4} {'req/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'errors':>6} {'cpu ms':>7} {'ratio':>6} {'commit':>7} "
          f"{'others':>6} {'decide':>7} {'audit':>7}")
    for scenario in wanted:
        for s in stacks:
            r = results.get((s.name, scenario))
            if r is None:
                continue
            if isinstance(r, str):
                print(f"{s.name:<9} {scenario:<11} FAILED: {r.splitlines()[0]}")
                continue
            ms = engine.get(s.name, (float("nan"), ""))[0]
            receipt = r["receipt"] if r["receipt"] in ("yes", "no") else "?"
            print(f"{s.name:<9} {scenario:<11} {r['rate']:>8.0f} {receipt:>4} "
                  f"{r['requests']:>8.0f} "
                  f"{_f(r['p50_ms'], '.2f'):>7} {_f(r['p99_ms'], '.2f'):>7} "
                  f"{r['errors']:>6} {_f(r['server_cpu_ms'], '.3f'):>7} "
                  f"{_f(r['server_cpu_ms'] / ms, '.2f'):>6} "
                  f"{_f(r['commit_cpu_ms'] or float('nan'), '.3f'):>7} "
                  f"{r['other_cores']:>6.2f} {_f(r['decide_ms'], '.2f'):>7} "
                  f"{_f(r['audit_ms'], '.2f'):>7}")
            if receipt == "?":
                print(f"{'':<21} probe: {r['receipt']}")
            for problem in r["problems"]:
                print(f"{'':<21} client: {problem}")
    print("dec/s: decisions recorded per second (answered 2xx; batch: items answered 201)\n"
          "rcpt: whether a 201 answer carries a receipt (one probe before the load; ?: the\n"
          "  probe was not answered 201, its answer below)\n"
          "req/s: requests answered per second; p50/p99: request latency\n"
          "cpu ms: server CPU per recorded decision, warm-up included (its process group:\n"
          "  master, workers, helpers; not PostgreSQL's own)\n"
          "ratio: cpu ms / the stack's in-process CPU per decision (bench/engine.py, this\n"
          "  sitting; issue 13: today's about 7, target at most 4)\n"
          "commit: the audit commit process's share of cpu ms (-: there is none)\n"
          "others: cores busy with other work on the machine meanwhile (compare runs with\n"
          "  similar values); decide/audit: the server's mean ms per decision and per audit\n"
          "  write (its /metrics)")


# ------------------------------------------------------------------ main


def report_ratios(stacks: list[Stack], wanted: list[str],
                  results: dict[tuple[str, str], dict[str, Any] | str]) -> None:
    """current/baseline recorded decisions/s per scenario, against the 90% target."""
    names = {s.name: s for s in stacks}
    if set(names) != set(STACKS):
        return
    base, cur = names["baseline"], names["current"]
    print()
    print(f"current ({cur.revision}) / baseline ({base.revision}), recorded decisions/s "
          f"(target >= {TARGET_PERCENT}%):")
    for scenario in wanted:
        b, c = results.get(("baseline", scenario)), results.get(("current", scenario))
        if not isinstance(b, dict) or not isinstance(c, dict) or not b["rate"]:
            print(f"  {scenario:<11} not measured")
            continue
        percent = c["rate"] / b["rate"] * 100
        verdict = "yes" if percent >= TARGET_PERCENT else "NO"
        print(f"  {scenario:<11} {c['rate']:>7.0f} / {b['rate']:>7.0f} = {percent:5.1f}%   "
              f">= {TARGET_PERCENT}%: {verdict}")


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise SystemExit(f"{what}: unknown {', '.join(unknown) or '(none given)'} "
                         f"(choose from {', '.join(allowed)})")
    return [n for n in allowed if n in names]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stacks", default="baseline,current", help="baseline,current")
    p.add_argument("--baseline-rev", "--baseline", dest="baseline", default=DEFAULT_BASELINE,
                   metavar="REV", help="the baseline stack's commit (default %(default)s; "
                   "58f44a8: the same server before receipts)")
    p.add_argument("--only", default=",".join(SCENARIOS), help="sqlite,postgresql,batch")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="current stack's worker processes")
    p.add_argument("--threads", type=int, default=None,
                   help="current stack's threads per worker (default: the server's own)")
    p.add_argument("--baseline-workers", type=int, default=2)
    p.add_argument("--pg-url", default=os.environ.get(
        "DEFICIENCY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--engine-sample", type=int, default=5000,
                   help="decisions per timed repeat of bench/engine.py")
    p.add_argument("--engine-repeat", type=int, default=3)
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        spec = json.loads(args.client)
        print(json.dumps(run_client("127.0.0.1", spec["port"], spec["path"],
                                    client_bodies(spec["batch"]), spec["seconds"],
                                    spec["connections"], spec["warmup"], spec["batch"])))
        return 0

    wanted = _names(args.only, SCENARIOS, "--only")
    stacks: list[Stack] = []
    for name in _names(args.stacks, STACKS, "--stacks"):
        if name == "baseline":
            try:
                root, short = baseline_tree(args.baseline)
            except Failed as exc:
                raise SystemExit(f"baseline: {exc}") from None
            stacks.append(Stack("baseline", root, short, args.baseline_workers, None))
        else:
            stacks.append(Stack("current", ROOT, current_revision(), args.workers,
                                args.threads))

    engine: dict[str, tuple[float, str]] = {}
    for s in stacks:
        print(f"[{s.name}] bench/engine.py ...", file=sys.stderr, flush=True)
        try:
            engine[s.name] = (engine_ms(s, args), "")
        except Failed as exc:
            print(f"[{s.name}] in-process measurement FAILED: {exc}", file=sys.stderr)
    for s in stacks:  # a stack whose bench/engine.py fails borrows the other's figure
        if s.name not in engine and engine:
            other, (ms, _) = next(iter(engine.items()))
            engine[s.name] = (ms, f" (its own bench/engine.py failed: {other}'s figure)")

    results: dict[tuple[str, str], dict[str, Any] | str] = {}
    with tempfile.TemporaryDirectory(prefix="deficiency-bench-") as tmp:
        for scenario in wanted:  # stacks interleaved, so both see the same machine
            for s in stacks:
                print(f"[{s.name}] {scenario} ({s.shape}) ...", file=sys.stderr, flush=True)
                try:
                    results[(s.name, scenario)] = run_scenario(s, scenario, Path(tmp), args)
                except Failed as exc:
                    print(f"[{s.name}] {scenario} FAILED: {exc}", file=sys.stderr, flush=True)
                    results[(s.name, scenario)] = str(exc)
    report(stacks, wanted, engine, results, args)
    report_ratios(stacks, wanted, results)
    failed = any(isinstance(r, str) for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
