"""GET /v1/ruleset and hot reload: atomic swap, old ruleset freed only when unused,
an invalid ruleset refused with every problem, other workers following."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from service.policy.loader import PolicyError
from service.serving import active_ruleset as rulesets_mod
from service.serving.active_ruleset import ActiveRuleset
from service.serving.generation import LocalGeneration

from .conftest import CAR, RULES, ConformingClient, api_keys, bearer, make_config, post_json


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def bump_version(rules_dir: Path, version: str) -> None:
    header = rules_dir / "ruleset.yaml"
    text = header.read_text()
    old = next(line for line in text.splitlines() if line.startswith("version:"))
    header.write_text(text.replace(old, f'version: "{version}"'))


def test_the_active_ruleset_is_listed(client: ConformingClient) -> None:
    r = client.get("/v1/ruleset", headers=bearer("decider"))
    assert r.status_code == 200
    doc = r.json
    assert doc["name"] == "deficiency-default"
    assert len(doc["sha256"]) == 64
    ids = {rule["id"] for rule in doc["rules"]}
    assert {"no-deficiency", "ca-580b-purchase-money", "mortgage-recourse-default"} <= ids
    rule = next(x for x in doc["rules"] if x["id"] == "no-deficiency")
    assert rule["stage"] == "bearer" and rule["priority"] == 1000 and rule["description"]


def test_reload_switches_to_the_new_ruleset(make_app: Callable[..., Flask], tmp_path: Path,
                                            rules_dir: Path) -> None:
    client = ConformingClient(make_app(make_config(tmp_path, keys=api_keys(),
                                                   rules_dir=rules_dir)))
    before = client.get("/v1/ruleset", headers=bearer("admin")).json
    r = client.post("/v1/ruleset/reload", headers=bearer("admin"))
    assert r.status_code == 200 and r.json["changed"] is False

    bump_version(rules_dir, "2099.1.0")
    r = client.post("/v1/ruleset/reload", headers=bearer("admin"))
    assert r.status_code == 200
    assert r.json["changed"] is True
    assert r.json["previous"]["version"] == before["version"]
    assert r.json["ruleset"]["version"] == "2099.1.0"
    assert client.get("/v1/ruleset", headers=bearer("admin")).json["version"] == "2099.1.0"
    decision = post_json(client, "/v1/decisions", CAR).json
    assert decision["ruleset"]["version"] == "2099.1.0"


def test_an_invalid_ruleset_is_refused_and_the_old_one_stays(
        make_app: Callable[..., Flask], tmp_path: Path, rules_dir: Path) -> None:
    client = ConformingClient(make_app(make_config(tmp_path, keys=api_keys(),
                                                   rules_dir=rules_dir)))
    before = client.get("/v1/ruleset", headers=bearer("admin")).json
    bearer_file = rules_dir / "bearer.yaml"
    bearer_file.write_text(bearer_file.read_text().replace("priority: 1000",
                                                           "priority: lots", 1)
                           + "\n  - id: 'Bad Id'\n")
    r = client.post("/v1/ruleset/reload", headers=bearer("admin"))
    assert r.status_code == 422
    assert r.json["type"].endswith("invalid-ruleset")
    paths = [e["path"] for e in r.json["errors"]]
    assert paths and all("bearer.yaml:" in p for p in paths)
    assert r.json["active"]["sha256"] == before["sha256"]
    after = client.get("/v1/ruleset", headers=bearer("admin")).json
    assert after["sha256"] == before["sha256"]
    assert post_json(client, "/v1/decisions", CAR).status_code == 201


def test_another_worker_follows_a_reload(make_app: Callable[..., Flask], tmp_path: Path,
                                         rules_dir: Path) -> None:
    shared = LocalGeneration()  # what SharedGeneration is across forked workers
    config = make_config(tmp_path, keys=api_keys(), rules_dir=rules_dir)
    a = ConformingClient(make_app(config, generation=shared))
    b = ConformingClient(make_app(config, generation=shared))
    bump_version(rules_dir, "2099.2.0")
    assert a.post("/v1/ruleset/reload", headers=bearer("admin")).json["changed"] is True
    assert b.get("/v1/ruleset", headers=bearer("admin")).json["version"] == "2099.2.0"
    assert post_json(b, "/v1/decisions", CAR).json["ruleset"]["version"] == "2099.2.0"


# ------------------------------------------------------------------ swap and free


@dataclass
class FakeDecider:
    """Stands in for the engine's Decider: counts how often it is freed."""

    rs: Any
    closed: int = 0
    ruleset_info: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ruleset_info = {"name": self.rs.name, "version": self.rs.version,
                             "sha256": self.rs.sha256}

    def close(self) -> None:
        self.closed += 1


def test_the_old_decider_is_freed_only_after_its_last_request(
        monkeypatch: pytest.MonkeyPatch, rules_dir: Path) -> None:
    monkeypatch.setattr(rulesets_mod, "Decider", lambda rs, matcher: FakeDecider(rs))
    active = ActiveRuleset(rules_dir)
    with active.use() as first:
        with active.use() as again:
            assert again is first
            bump_version(rules_dir, "2099.2.0")
            assert active.reload().changed is True  # "2" is active now
            with active.use() as second:
                assert second is not first
            assert first.closed == 0  # two requests still inside it
        assert first.closed == 0
    assert first.closed == 1  # the last one left: freed, once
    assert second.closed == 0
    bump_version(rules_dir, "2099.3.0")
    active.reload()  # "3": nobody is using "2", so it is freed at once
    assert second.closed == 1
    active.close()


def test_a_failed_reload_keeps_the_current_decider(monkeypatch: pytest.MonkeyPatch,
                                                   rules_dir: Path) -> None:
    monkeypatch.setattr(rulesets_mod, "Decider", lambda rs, matcher: FakeDecider(rs))
    active = ActiveRuleset(rules_dir)
    with active.use() as current:
        pass
    (rules_dir / "bearer.yaml").write_text("rules: [\n")
    with pytest.raises(PolicyError):
        active.reload()
    with active.use() as still:
        assert still is current and current.closed == 0
    active.close()
