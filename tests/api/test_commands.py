"""`deficiency keys new`, the checks `serve` makes before starting, and `audit` through
the configuration."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml

from service.api.auth import Keyring
from service.apikeys import key_sha256
from service.cli import main
from service.config import load_config

from .conftest import CAR, ConformingClient, make_config, post_json


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def test_keys_new_prints_the_key_once_and_a_config_snippet(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(["keys", "new", "--scope", "decide", "--scope", "audit:read",
                        "--name", "servicing"], capsys)
    assert code == 0
    key = out.splitlines()[0]
    assert re.fullmatch(r"dfy_[A-Za-z0-9_-]{43}", key)
    snippet = "\n".join(line for line in out.splitlines() if line.startswith("  "))
    config_file = tmp_path / "config.yaml"
    config_file.write_text("auth:\n  keys:\n" + snippet + "\n")
    config = load_config(config_file, env={})
    (api_key,) = config.auth.keys
    assert api_key.name == "servicing"
    assert api_key.sha256 == key_sha256(key)
    assert api_key.scopes == {"decide", "audit:read"}
    assert Keyring(config.auth.keys).authenticate(f"Bearer {key}", None).name == "servicing"
    assert out.count(key) == 1


def test_serve_refuses_a_public_bind_without_keys(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"audit:\n  url: sqlite:///{tmp_path}/a.db\n")
    code, _, err = run(["serve", "--config", str(config), "--bind", "0.0.0.0:8080"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "without API keys" in err and "Traceback" not in err


def test_serve_reports_bad_configuration_in_one_line(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  workers: -1\n")
    code, _, err = run(["serve", "--config", str(config)], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "server.workers" in err


def test_serve_reports_an_invalid_ruleset_in_one_line(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "ruleset.yaml").write_text("ruleset: x\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"rules:\n  dir: {rules}\naudit:\n  url: sqlite:///{tmp_path}/a.db\n")
    code, _, err = run(["serve", "--config", str(config)], capsys)
    assert code == 2
    assert "invalid ruleset" in err and err.strip().count("\n") == 0


def test_audit_commands_use_the_configured_store(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path, make_app) -> None:
    config = make_config(tmp_path)
    client = ConformingClient(make_app(config))
    decision_id = post_json(client, "/v1/decisions", CAR, key=None).json["decision_id"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({"audit": {"url": config.audit.url}}))

    code, out, _ = run(["audit", "--config", str(config_file), "verify"], capsys)
    assert code == 0 and out.startswith("OK: 1 records")
    code, out, _ = run(["audit", "--config", str(config_file), "show", decision_id], capsys)
    assert code == 0 and json.loads(out)["decision_id"] == decision_id
    code, out, _ = run(["audit", "--url", config.audit.url, "verify"], capsys)
    assert code == 0
    code, _, err = run(["audit", "--url", f"sqlite:///{tmp_path}/none.db", "verify"], capsys)
    assert code == 2 and "no audit log" in err
