"""The verifiable log over HTTP: receipts on 201s, the checkpoint and key, inclusion
and consistency proofs, and the ruleset archive — each checked the way an upstream
system or an examiner would check it, with nothing but the answers and the key."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from service.audit import merkle
from service.audit.notes import Verifier
from service.cli import main
from service.policy.loader import sources_digest
from tests.api.conftest import (
    CAR,
    KEYS,
    RULES,
    SHORT_SALE,
    ConformingClient,
    api_keys,
    bearer,
    facts,
    make_config,
    post_json,
)


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def _key(client: ConformingClient) -> Verifier:
    r = client.get("/v1/log/key", headers=bearer("auditor"))
    assert r.status_code == 200 and r.mimetype == "text/plain"
    return Verifier(r.get_data(as_text=True))


def test_every_201_carries_a_receipt_that_proves_the_decision_is_logged(
        client: ConformingClient) -> None:
    verifier = _key(client)
    answers = [post_json(client, "/v1/decisions", facts(CAR, loan__id=f"r-{n}"), key="decider")
               for n in range(5)]
    batch = post_json(client, "/v1/decisions/batch", {"items": [CAR, SHORT_SALE]},
                      key="decider").json["results"]
    decisions = [a.json for a in answers] + [item["decision"] for item in batch]
    for n, decision in enumerate(decisions):
        receipt = decision["receipt"]
        checkpoint = verifier.checkpoint(receipt["checkpoint"])
        assert receipt["leaf_index"] == n and receipt["tree_size"] == checkpoint.size
        # The leaf is the record's hash as the log keeps it, under the RFC 9162 prefix.
        record = client.get(f"/v1/decisions/{decision['decision_id']}",
                            headers=bearer("auditor")).json
        assert _b(receipt["leaf_hash"]) == merkle.record_leaf(record["audit"]["hash"])
        merkle.verify_inclusion(n, checkpoint.size, _b(receipt["leaf_hash"]),
                                [_b(p) for p in receipt["inclusion_proof"]], checkpoint.root)
    # Both decisions of the batch were one commit: one checkpoint for both.
    assert batch[0]["decision"]["receipt"]["checkpoint"] == \
        batch[1]["decision"]["receipt"]["checkpoint"]


def test_proofs_lead_to_the_signed_checkpoint_and_the_log_only_grows(
        client: ConformingClient) -> None:
    verifier = _key(client)
    ids = [post_json(client, "/v1/decisions", CAR, key="decider").json["decision_id"]
           for _ in range(3)]
    early = verifier.checkpoint(client.get("/v1/log/checkpoint",
                                           headers=bearer("auditor")).get_data(as_text=True))
    assert early.size == 3
    ids += [post_json(client, "/v1/decisions", CAR, key="decider").json["decision_id"]
            for _ in range(4)]
    latest = verifier.checkpoint(client.get("/v1/log/checkpoint",
                                            headers=bearer("auditor")).get_data(as_text=True))
    assert latest.size == 7
    for n, decision_id in enumerate(ids):
        proof = client.get(f"/v1/decisions/{decision_id}/proof", headers=bearer("auditor")).json
        assert proof["leaf_index"] == n and proof["tree_size"] == 7
        merkle.verify_inclusion(n, 7, _b(proof["leaf_hash"]),
                                [_b(p) for p in proof["inclusion_proof"]], latest.root)
    old = client.get(f"/v1/decisions/{ids[1]}/proof?tree_size=3", headers=bearer("auditor")).json
    merkle.verify_inclusion(1, 3, _b(old["leaf_hash"]), [_b(p) for p in old["inclusion_proof"]],
                            early.root)
    r = client.get("/v1/log/consistency?from=3&to=7", headers=bearer("auditor"))
    assert r.json["from"] == 3 and r.json["to"] == 7
    merkle.verify_consistency(3, 7, early.root, latest.root,
                              [_b(p) for p in r.json["consistency_proof"]])


def test_bad_proof_questions_are_400_or_404_naming_the_parameter(
        client: ConformingClient) -> None:
    decision_id = post_json(client, "/v1/decisions", CAR, key="decider").json["decision_id"]
    for path, status, name in (
            (f"/v1/decisions/{decision_id}/proof?tree_size=9", 404, "tree_size"),  # not yet
            (f"/v1/decisions/{decision_id}/proof?tree_size=0", 400, "tree_size"),
            (f"/v1/decisions/{decision_id}/proof?tree_size=x", 400, "tree_size"),
            (f"/v1/decisions/{decision_id}/proof?size=1", 400, "size"),
            ("/v1/log/consistency?from=0&to=2", 404, "to"),
            ("/v1/log/consistency?from=2&to=1", 400, "to"),
            ("/v1/log/consistency?from=1", 400, "to"),
            ("/v1/log/consistency?from=-1&to=1", 400, "from")):
        r = client.get(path, headers=bearer("auditor"))
        assert r.status_code == status, path
        assert name in [e["path"] for e in r.json["errors"]], (path, r.json)
    r = client.get("/v1/decisions/01ARZ3NDEKTSV4RRFFQ69G5FAV/proof", headers=bearer("auditor"))
    assert r.status_code == 404
    # Reading the log needs audit:read.
    assert client.get("/v1/log/checkpoint", headers=bearer("decider")).status_code == 403
    assert client.get("/v1/log/key").status_code == 401


def test_the_ruleset_that_decided_is_archived_and_its_sha256_recomputes(
        client: ConformingClient) -> None:
    decision = post_json(client, "/v1/decisions", CAR, key="decider").json
    sha256 = decision["ruleset"]["sha256"]
    r = client.get(f"/v1/rulesets/{sha256}", headers=bearer("auditor"))
    assert r.status_code == 200
    archived = r.json
    assert archived["version"] == decision["ruleset"]["version"]
    assert sources_digest(sorted((name, text.encode("utf-8"))
                                 for name, text in archived["files"].items())) == sha256
    assert client.get(f"/v1/rulesets/{'0' * 64}", headers=bearer("auditor")).status_code == 404
    r = client.get("/v1/rulesets/NOT-A-SHA", headers=bearer("auditor"))
    assert r.status_code == 400 and r.json["errors"][0]["path"] == "sha256"


def test_an_idempotent_replay_carries_the_same_receipt(client: ConformingClient) -> None:
    verifier = _key(client)
    first = post_json(client, "/v1/decisions", CAR, key="decider",
                      headers={"Idempotency-Key": "retry-1"})
    post_json(client, "/v1/decisions", SHORT_SALE, key="decider")
    again = post_json(client, "/v1/decisions", CAR, key="decider",
                      headers={"Idempotency-Key": "retry-1"})
    assert again.status_code == 200
    # The very receipt of the first answer: a replay answers as the first time did.
    assert again.json == first.json
    receipt = again.json["receipt"]
    checkpoint = verifier.checkpoint(receipt["checkpoint"])
    assert checkpoint.size == 1 and receipt["leaf_index"] == 0
    merkle.verify_inclusion(0, 1, _b(receipt["leaf_hash"]),
                            [_b(p) for p in receipt["inclusion_proof"]], checkpoint.root)


def test_each_ruleset_that_decides_is_archived_and_reproduces(
        make_app, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    config = make_config(tmp_path, keys=api_keys(), rules_dir=rules)
    client = ConformingClient(make_app(config))
    first = post_json(client, "/v1/decisions", CAR, key="decider").json
    text = (rules / "ruleset.yaml").read_text()
    old_version = first["ruleset"]["version"]
    (rules / "ruleset.yaml").write_text(text.replace(old_version, old_version + ".1", 1))
    assert client.post("/v1/ruleset/reload", headers=bearer("admin")).status_code == 200
    second = post_json(client, "/v1/decisions", CAR, key="decider").json
    assert second["ruleset"]["sha256"] != first["ruleset"]["sha256"]
    for decision in (first, second):
        archived = client.get(f"/v1/rulesets/{decision['ruleset']['sha256']}",
                              headers=bearer("auditor")).json
        assert archived["version"] == decision["ruleset"]["version"]
        out = io.StringIO()
        assert main(["audit", "--url", config.audit.url, "reproduce",
                     decision["decision_id"]], out=out) == 0
        assert out.getvalue().startswith(f"REPRODUCED: decision {decision['decision_id']}")
    out = io.StringIO()
    assert main(["audit", "--url", config.audit.url, "verify", "--redecide"], out=out) == 0
    assert out.getvalue().startswith("OK: 2 decisions decided again")


def test_the_witness_reads_the_log_with_an_audit_read_key(
        app, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        state = str(tmp_path / "witness")
        monkeypatch.delenv("DEFICIENCY_API_KEY", raising=False)
        out = io.StringIO()
        assert main(["audit", "witness", url, "--state", state], out=out) == 2  # 401
        assert main(["audit", "witness", url, "--state", state,
                     "--api-key", KEYS["decider"][0]], out=out) == 2  # 403: not audit:read
        monkeypatch.setenv("DEFICIENCY_API_KEY", KEYS["auditor"][0])
        assert main(["audit", "witness", url, "--state", state], out=out) == 0
        assert "first checkpoint kept: tree size 0" in out.getvalue()
        ConformingClient(app).post("/v1/decisions", data=json.dumps(CAR),
                                   content_type="application/json", headers=bearer("decider"))
        out = io.StringIO()
        assert main(["audit", "witness", url, "--state", state], out=out) == 0
        assert out.getvalue().startswith("OK: tree size 0 -> 1, consistent")
    finally:
        server.shutdown()
