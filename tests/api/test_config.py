"""config.yaml and DEFICIENCY_<SECTION>_<KEY> overrides, validated at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import (
    PACKAGED_RULES,
    ConfigError,
    cpu_count,
    is_loopback_bind,
    load_config,
)

ROOT = Path(__file__).resolve().parents[2]
HASH = "ab" * 32


def test_the_repository_config_yaml_loads_with_the_documented_defaults(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "config.yaml", env={})
    assert config.server.bind == "127.0.0.1:8080"
    assert config.server.workers == cpu_count()
    assert config.server.threads == 8
    assert config.limits.max_body_bytes == 1024 * 1024
    assert config.limits.max_batch_items == 100
    assert config.limits.max_json_depth == 32
    assert config.auth.keys == ()
    # Relative paths are pinned to the working directory.
    assert config.audit.url == f"sqlite:///{tmp_path}/data/audit.db"
    assert config.audit.timeout == 10
    assert config.rules.dir == PACKAGED_RULES  # no ./rules here: the packaged policy


def test_no_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config.source is None
    assert config.server.bind == "127.0.0.1:8080"


def test_deficiency_config_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  threads: 3\n")
    assert load_config(env={"DEFICIENCY_CONFIG": str(f)}).server.threads == 3


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("server:\n  bind: 127.0.0.1:9000\n  workers: 3\naudit:\n  url: sqlite:////a.db\n")
    config = load_config(f, env={
        "DEFICIENCY_SERVER_BIND": "127.0.0.1:9100",
        "DEFICIENCY_SERVER_WORKERS": "5",
        "DEFICIENCY_AUDIT_URL": "postgresql://u@db:5432/audit",
        "DEFICIENCY_AUDIT_TIMEOUT": "3",
        "DEFICIENCY_LIMITS_MAX_BATCH_ITEMS": "7",
        "DEFICIENCY_SERVER_ACCESS_LOG": "false",
        "DEFICIENCY_AUTH_KEYS": f'[{{"name": "ci", "sha256": "{HASH}", "scopes": ["decide"]}}]',
        "DEFICIENCY_SOMETHING": "not ours, ignored",
    })
    assert config.server.bind == "127.0.0.1:9100"
    assert config.server.workers == 5
    assert config.audit.url == "postgresql://u@db:5432/audit"
    assert config.audit.timeout == 3
    assert config.limits.max_batch_items == 7
    assert config.server.access_log is False
    assert [(k.name, k.sha256, set(k.scopes)) for k in config.auth.keys] == [
        ("ci", HASH, {"decide"})]


@pytest.mark.parametrize(("text", "env", "message"), [
    ("server:\n  workers: many\n", {}, "server.workers: must be an integer"),
    ("server:\n  workers: 0\n", {}, "server.workers: must be an integer from 1 to 256 (got 0)"),
    ("server:\n  bind: nowhere\n", {}, "server.bind:"),
    ("server:\n  bind: 127.0.0.1:70000\n", {}, "server.bind: port must be"),
    ("server:\n  colour: blue\n", {}, "unknown setting server.colour"),
    ("servers:\n  bind: x\n", {}, "unknown section 'servers'"),
    ("limits:\n  max_body_bytes: 10\n", {}, "limits.max_body_bytes"),
    ("limits:\n  max_json_depth: 2\n", {}, "limits.max_json_depth"),
    ("audit:\n  url: mysql://x\n", {}, "audit.url"),
    ("audit:\n  url: \"sqlite:///:memory:\"\n", {}, "audit.url"),
    ("audit:\n  timeout: 0\n", {}, "audit.timeout: must be an integer from 1 to 600 (got 0)"),
    ("", {"DEFICIENCY_AUDIT_TIMEOUT": "2.5s"}, "environment DEFICIENCY_AUDIT_TIMEOUT: "
                                               "audit.timeout"),
    ("auth:\n  keys:\n    - name: a\n      sha256: nothex\n      scopes: [decide]\n", {},
     "auth.keys: [0].sha256"),
    ("auth:\n  keys:\n    - name: a\n      sha256: " + HASH + "\n      scopes: [root]\n", {},
     "auth.keys: [0].scopes"),
    ("auth:\n  keys:\n    - {name: a, sha256: " + HASH + ", scopes: [decide]}\n"
     "    - {name: a, sha256: " + "cd" * 32 + ", scopes: [decide]}\n", {},
     "duplicate key name 'a'"),
    ("auth:\n  keys:\n    - {name: a, sha256: " + HASH + ", scopes: [decide], key: x}\n", {},
     "unknown field 'key'"),
    ("server:\n  bind: a\n  bind: b\n", {}, "duplicate key 'bind'"),
    ("server: [\n", {}, "YAML syntax"),
    ("", {"DEFICIENCY_SERVER_THREADS": "lots"}, "environment DEFICIENCY_SERVER_THREADS: "
                                                "server.threads"),
    ("", {"DEFICIENCY_SERVER_BINDING": "x"}, "unknown setting server.binding"),
    ("", {"DEFICIENCY_SERVER_ACCESS_LOG": "maybe"}, "server.access_log: must be true or false"),
])
def test_bad_settings_are_reported_by_name(tmp_path: Path, text: str, env: dict[str, str],
                                           message: str) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f, env=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_file_errors_carry_the_position(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("server:\n  threads: 0\n")
    with pytest.raises(ConfigError, match=rf"^{f}:2:12: server.threads"):
        load_config(f, env={})


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", env={})


@pytest.mark.parametrize(("bind", "loopback"), [
    ("127.0.0.1:8080", True), ("127.1.2.3:1", True), ("localhost:80", True),
    ("[::1]:8080", True), ("unix:/run/d.sock", True),
    ("0.0.0.0:8080", False), ("10.0.0.5:8080", False), ("[::]:8080", False),
    ("example.com:80", False),
])
def test_loopback_binds(bind: str, loopback: bool) -> None:
    assert is_loopback_bind(bind) is loopback
