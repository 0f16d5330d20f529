"""The insider attack the verifiable log exists for, against the real server and store
(SQLite and PostgreSQL).

A database writer changes a recorded decision (the borrower owed 2000.00; now the
lender absorbs it), then recomputes every hash the project stores — records, chain
head, Merkle tree — with the project's own functions, and deletes the checkpoints the
log kept from that point on (it cannot sign new ones). The chain alone then verifies.
What must still catch it: a checkpoint signed earlier (the operator's checkpoint
file, or one saved by hand), a receipt the upstream system got with the decision,
and a witness. A log truncated and appended to again (a fork) is caught by the
witness; an evidence bundle with one byte changed fails `check-bundle`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from service.audit import merkle, open_store
from service.audit.chain import GENESIS_HASH, record_hash
from service.cli import main
from tests.api.conftest import CAR
from tests.api.servers import Server, free_port, write_config


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/data/audit.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def server(log_url: str, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    config = write_config(tmp_path / "config.yaml", port=port, audit_url=log_url,
                          audit_settings={"signing_key": tmp_path / "keys" / "log.pem",
                                          "checkpoint_file": tmp_path / "checkpoints.jsonl"})
    (tmp_path / "keys").mkdir()
    assert run("audit", "--config", str(config), "keygen", "--out",
               str(tmp_path / "keys" / "log.pem"))[0] == 0
    running = Server(config, port, tmp_path / "server.log").start()
    try:
        yield running
    finally:
        running.stop()


def run(*argv: str, capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str]:
    import io

    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def decide(server: Server, loan: str) -> dict[str, Any]:
    doc = copy.deepcopy(CAR)
    doc["loan"]["id"] = loan
    r = requests.post(server.base + "/v1/decisions", json=doc, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def raw_engine(url: str) -> sa.Engine:
    return sa.create_engine(make_url(url).set(
        drivername="sqlite" if url.startswith("sqlite") else "postgresql+psycopg"))


def rewrite(url: str, seq: int, *, truncate: bool = False) -> None:
    """The insider: alter record `seq` (or, with truncate, drop every record after it),
    recompute every later hash, the tree and the head with the project's functions,
    and delete the kept checkpoints that no longer match."""
    store = open_store(url)
    try:
        records = list(store.iter_records())
    finally:
        store.close()
    if truncate:
        records = records[:seq]
    else:
        outcome = records[seq - 1]["decision"]["outcome"]
        assert outcome["borrower_owes"] == "2000.00"
        outcome.update(bearer="lender", action="write_off", borrower_owes="0.00",
                       lender_absorbs="2000.00")
    prev = GENESIS_HASH
    for record in records:
        record["prev_hash"] = prev
        record["hash"] = prev = record_hash(record)
    created, frontier = merkle.append(0, [], [merkle.record_leaf(r["hash"]) for r in records])
    engine = raw_engine(url)
    try:
        with engine.begin() as c:
            if truncate:
                c.execute(sa.text("DELETE FROM audit_records WHERE seq > :s"), {"s": seq})
            for record in records[seq - 1:]:
                c.execute(sa.text("UPDATE audit_records SET decision = :d, prev_hash = :p, "
                                  "hash = :h WHERE seq = :s"),
                          {"d": json.dumps(record["decision"]), "p": record["prev_hash"],
                           "h": record["hash"], "s": record["seq"]})
            c.execute(sa.text("DELETE FROM audit_tree"))
            c.execute(sa.text("INSERT INTO audit_tree (node, hash) VALUES (:n, :h)"),
                      [{"n": n, "h": h} for n, h in created.items()])
            c.execute(sa.text("UPDATE audit_chain_head SET seq = :s, hash = :h, frontier = :f"),
                      {"s": len(records), "h": prev, "f": b"".join(frontier)})
            c.execute(sa.text("DELETE FROM audit_checkpoints WHERE tree_size >= :s"),
                      {"s": seq})
    finally:
        engine.dispose()


def test_a_rewritten_decision_is_caught_by_checkpoints_receipts_and_the_witness(
        server: Server, log_url: str, tmp_path: Path) -> None:
    config = str(server.config)
    answers = [decide(server, f"insider-{n}") for n in range(1, 7)]
    receipt_file = tmp_path / "answer-3.json"
    receipt_file.write_text(json.dumps(answers[2]))
    state = str(tmp_path / "witness")
    code, out = run("audit", "--config", config, "witness", server.base, "--state", state)
    assert code == 0 and out.startswith("OK: first checkpoint kept: tree size 6")
    saved = tmp_path / "checkpoint-6.txt"
    code, out = run("audit", "--config", config, "checkpoint")
    saved.write_text(out)
    assert code == 0 and out.split("\n")[1] == "6"
    code, out = run("audit", "--config", config, "verify")
    assert code == 0 and "matches" in out

    rewrite(log_url, 3)
    victim = answers[2]["decision_id"]

    # The chain and the tree agree with the rewrite: the log alone cannot tell. (Its
    # kept checkpoints from seq 3 on are gone; a worker that opens the store now signs
    # the rewritten head, as it signs every commit group: the service signs the tree
    # the database holds.)
    code, out = run("audit", "--config", config, "verify")
    assert code == 0 and out.startswith("OK: 6 records, chain intact"), out

    # The receipt the upstream system got names the altered decision exactly.
    code, out = run("audit", "--config", config, "verify", "--checkpoint", str(receipt_file))
    assert code == 1
    assert out.startswith(f"TAMPERED: record seq=3 decision_id={victim}")
    # So does the operator's checkpoint file (a checkpoint per commit group).
    code, out = run("audit", "--config", config, "verify", "--checkpoint",
                    str(tmp_path / "checkpoints.jsonl"))
    assert code == 1 and f"seq=3 decision_id={victim}" in out
    # A single checkpoint saved after the fact brackets it.
    code, out = run("audit", "--config", config, "verify", "--checkpoint", str(saved))
    assert code == 1 and "does not match the records" in out

    # The service goes on signing the rewritten log; the witness is not fooled.
    decide(server, "insider-7")
    code, out = run("audit", "--config", config, "witness", server.base, "--state", state)
    assert code == 1
    assert out.startswith("FAILED: the log of 7 records does not extend the one of 6")


def test_a_truncated_and_reappended_log_is_a_fork_the_witness_catches(
        server: Server, log_url: str, tmp_path: Path) -> None:
    config = str(server.config)
    for n in range(1, 6):
        decide(server, f"fork-{n}")
    state = str(tmp_path / "witness")
    assert run("audit", "--config", config, "witness", server.base, "--state", state)[0] == 0
    rewrite(log_url, 2, truncate=True)
    for n in range(6, 10):
        decide(server, f"fork-{n}")
    # The forked log is consistent with itself ...
    code, out = run("audit", "--config", config, "verify")
    assert code == 0, out
    # ... but not with what the witness saw.
    code, out = run("audit", "--config", config, "witness", server.base, "--state", state)
    assert code == 1 and "does not extend the one of 5" in out
    assert (tmp_path / "witness" / "checkpoint").read_text().split("\n")[1] == "5"


def test_an_evidence_bundle_with_one_byte_changed_does_not_hold(
        server: Server, tmp_path: Path) -> None:
    config = str(server.config)
    answer = decide(server, "bundle-1")
    decide(server, "bundle-2")
    bundle = tmp_path / "bundle.json"
    code, _ = run("audit", "--config", config, "prove", answer["decision_id"], "--out",
                  str(bundle))
    assert code == 0
    code, out = run("audit", "check-bundle", str(bundle))
    assert code == 0 and out.rstrip().endswith("and its rules decide it the same way")
    text = bundle.read_text()
    for old, new in (('"borrower_owes": "2000.00"', '"borrower_owes": "2000.01"'),
                     ("deficiency-default", "deficiency-defaulT"),
                     ('"loan_id": "bundle-1"', '"loan_id": "bundle-7"')):
        assert old in text
        altered = tmp_path / "altered.json"
        altered.write_text(text.replace(old, new, 1))
        code, out = run("audit", "check-bundle", str(altered))
        assert code == 1 and "BUNDLE DOES NOT HOLD" in out, (old, out)
    # A bundle signed by another key than the one pinned does not hold either.
    other = tmp_path / "other.pem"
    code, other_key = run("audit", "--config", config, "keygen", "--out", str(other))
    code, out = run("audit", "check-bundle", str(bundle), "--key", other_key.strip())
    assert code == 1 and "FAILED signature" in out
