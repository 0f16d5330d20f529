"""Service configuration: `config.yaml`, overridden by `DEFICIENCY_<SECTION>_<KEY>`.

The file is found by the `path` argument (`--config`), else `DEFICIENCY_CONFIG`,
else `config.yaml` in the working directory when there is one; without a file
the defaults apply. Every value is checked at start-up and a bad one is reported
as `ConfigError("<where>: <section>.<key>: <what is wrong>")`.

Relative paths (`rules.dir`, a SQLite `audit.url`) are resolved against the
working directory when the configuration is loaded, so every worker process and
every `deficiency audit` command sees the same absolute location.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .policy.yamlsafe import PosDict, YamlError, load_yaml

CONFIG_ENV = "DEFICIENCY_CONFIG"
ENV_PREFIX = "DEFICIENCY_"
DEFAULT_FILE = "config.yaml"
PACKAGED_RULES = Path(__file__).resolve().parent.parent / "rules"

SCOPES = ("decide", "audit:read", "admin")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_MAX_CONFIG_BYTES = 1_000_000


class ConfigError(Exception):
    """A configuration value is missing, malformed or out of range (one line)."""


@dataclass(frozen=True)
class ApiKey:
    """A configured API key: only the sha256 of the key is ever stored."""

    name: str
    sha256: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "127.0.0.1:8080"
    workers: int = 1
    threads: int = 8
    graceful_timeout: int = 30
    keepalive: int = 5
    access_log: bool = True


@dataclass(frozen=True)
class RulesConfig:
    dir: Path = PACKAGED_RULES


@dataclass(frozen=True)
class AuditConfig:
    url: str = "sqlite:///data/audit.db"
    timeout: int = 10  # service.audit.database.STORE_TIMEOUT (not imported: config stays light)
    #: The Ed25519 key (PEM, PKCS#8) checkpoints are signed with; None: `key_path`.
    signing_key: Path | None = None
    log_name: str = "deficiency-service/audit"
    #: Where every signed checkpoint is also appended; None: `checkpoints_path`.
    checkpoint_file: Path | None = None

    @property
    def data_dir(self) -> Path:
        """The SQLite file's directory, else ./data: where the defaults below live."""
        if self.url.startswith("sqlite:///"):
            return Path(self.url[len("sqlite:///"):].partition("?")[0]).parent
        return Path.cwd() / "data"

    @property
    def key_path(self) -> Path:
        return self.signing_key or self.data_dir / "audit-signing-key.pem"

    @property
    def checkpoints_path(self) -> Path:
        return self.checkpoint_file or self.data_dir / "checkpoints.jsonl"


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = 1024 * 1024
    max_batch_items: int = 100
    max_json_depth: int = 32


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[ApiKey, ...] = ()


@dataclass(frozen=True)
class ConsoleConfig:
    #: A console session ends after this many minutes without a request.
    session_idle_minutes: int = 30
    #: A console session ends this many hours after sign-in, however active.
    session_max_hours: int = 12
    #: The secret session cookies are signed with (a file); None: beside the audit log's
    #: signing key by default (`AuditConfig.data_dir / "console-session-key"`).
    session_key: Path | None = None
    #: Send the session cookie only over HTTPS (true behind TLS).
    secure_cookie: bool = False


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    #: The file read, or None when only defaults and the environment applied.
    source: Path | None = None


# --------------------------------------------------------------------------- value parsers
# Each takes a value from YAML (typed) or from the environment (a string) and returns
# the checked value or raises ValueError with what is expected.


def _int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,12}\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer from {low} to {high}")
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high} (got {value})")
        return value

    return parse


def _workers(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return cpu_count()
    return _int(1, 256)(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    raise ValueError("must be true or false")


def _bind(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError('must be "HOST:PORT" (e.g. "127.0.0.1:8080") or "unix:/path"')
    value = value.strip()
    if value.startswith("unix:"):
        if len(value) <= len("unix:"):
            raise ValueError("unix: needs a socket path")
        return value
    split_bind(value)  # raises ValueError
    return value


def split_bind(bind: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` → (host, port); raises ValueError."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]\s]+):([0-9]{1,5})", bind)
    if not match:
        raise ValueError(f'must be "HOST:PORT" or "[IPv6]:PORT" (got {bind!r})')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port must be from 1 to 65535 (got {port})")
    return host, port


def is_loopback_bind(bind: str) -> bool:
    """Whether `bind` only accepts connections from this machine."""
    if bind.startswith("unix:"):
        return True
    host, _ = split_bind(bind)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rules_dir(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a directory path")
    return Path(value).expanduser().resolve()


def _audit_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError('must be a database URL ("sqlite:///path/audit.db" or "postgresql://…")')
    url = value.strip()
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # A relative SQLite path: pin it to the working directory now.
        rest = url[len("sqlite:///"):]
        path, sep, query = rest.partition("?")
        if not path or path == ":memory:":
            raise ValueError("the audit log needs a SQLite file, not an in-memory database")
        url = "sqlite:///" + str(Path(path).expanduser().resolve()) + sep + query
    elif not re.match(r"^(sqlite|postgres|postgresql)(\+[a-z0-9_]+)?://", url):
        raise ValueError('must start with "sqlite:///" or "postgresql://"')
    return url


def _file_path(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a file path")
    return Path(value).expanduser().resolve()


def _log_name(value: Any) -> str:
    if not isinstance(value, str) or re.fullmatch(r"[^\s+]{1,200}", value) is None:
        raise ValueError("must be 1 to 200 characters, without spaces or '+'")
    return value


def _keys(value: Any) -> tuple[ApiKey, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # from the environment: YAML or JSON text
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError("must be a YAML/JSON list of {name, sha256, scopes}") from None
        if value is None:
            return ()
    if not isinstance(value, list):
        raise ValueError("must be a list of {name, sha256, scopes}")
    keys: list[ApiKey] = []
    names: set[str] = set()
    hashes: set[str] = set()
    for i, item in enumerate(value):
        where = f"[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping with name, sha256 and scopes")
        unknown = sorted(str(k) for k in item if k not in ("name", "sha256", "scopes"))
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r} "
                             "(expected name, sha256, scopes)")
        name = item.get("name")
        if not isinstance(name, str) or not KEY_NAME.match(name):
            raise ValueError(f"{where}.name: must be 1-64 letters, digits, '_', '.', '@' or '-'")
        digest = item.get("sha256")
        if not isinstance(digest, str) or not _SHA256_HEX.match(digest.strip().lower()):
            raise ValueError(f"{where}.sha256: must be the 64 hex digits of the key's sha256 "
                             "(deficiency keys new prints it)")
        digest = digest.strip().lower()
        scopes = item.get("scopes")
        if isinstance(scopes, str):
            scopes = [scopes]
        if not isinstance(scopes, list) or not scopes \
                or not all(isinstance(s, str) and s in SCOPES for s in scopes):
            raise ValueError(f"{where}.scopes: must be a non-empty list of {', '.join(SCOPES)}")
        if name in names:
            raise ValueError(f"{where}.name: duplicate key name {name!r}")
        if digest in hashes:
            raise ValueError(f"{where}.sha256: the same key is configured twice")
        names.add(name)
        hashes.add(digest)
        keys.append(ApiKey(name, digest, frozenset(scopes)))
    return tuple(keys)


# section -> key -> parser
_SETTINGS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "server": {
        "bind": _bind,
        "workers": _workers,
        "threads": _int(1, 256),
        "graceful_timeout": _int(1, 3600),
        "keepalive": _int(0, 3600),
        "access_log": _bool,
    },
    "rules": {"dir": _rules_dir},
    "audit": {"url": _audit_url, "timeout": _int(1, 600), "signing_key": _file_path,
              "log_name": _log_name, "checkpoint_file": _file_path},
    "limits": {
        "max_body_bytes": _int(1024, 64 * 1024 * 1024),
        "max_batch_items": _int(1, 10_000),
        # The facts document itself is 3 levels deep; a batch adds 2.
        "max_json_depth": _int(4, 256),
    },
    "auth": {"keys": _keys},
    "console": {"session_idle_minutes": _int(1, 7 * 24 * 60),
                "session_max_hours": _int(1, 30 * 24), "session_key": _file_path,
                "secure_cookie": _bool},
}


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def find_config_file(path: str | os.PathLike[str] | None,
                     env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path.cwd() / DEFAULT_FILE
    return default if default.is_file() else None


def _read_file(path: Path) -> dict[str, tuple[Any, str]]:
    """The file's settings as {"section.key": (value, "file:line:col")}."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    if len(data) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: configuration file larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        root = load_yaml(data, str(path))
    except YamlError as exc:
        raise ConfigError(str(exc)) from None
    if root is None:
        return {}
    if not isinstance(root, PosDict):
        raise ConfigError(f"{path}: the configuration must be a mapping of sections")
    found: dict[str, tuple[Any, str]] = {}
    for section, body in root.items():
        where = str(root.key_pos[section])
        if section not in _SETTINGS:
            raise ConfigError(f"{where}: unknown section {section!r} "
                              f"(expected one of {', '.join(_SETTINGS)})")
        if body is None:
            continue
        if not isinstance(body, PosDict):
            raise ConfigError(f"{where}: {section}: must be a mapping")
        for key, value in body.items():
            if key not in _SETTINGS[section]:
                raise ConfigError(f"{body.key_pos[key]}: unknown setting {section}.{key} "
                                  f"(expected one of {', '.join(_SETTINGS[section])})")
            found[f"{section}.{key}"] = (_plain(value), str(body.value_pos[key]))
    return found


def _plain(value: Any) -> Any:
    """PosDict/PosList/Decimal from the YAML loader as plain values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _read_env(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section not in _SETTINGS:
            continue  # not ours to judge (another tool's DEFICIENCY_* variable)
        if key not in _SETTINGS[section]:
            raise ConfigError(f"environment {name}: unknown setting {section}.{key or '?'} "
                              f"(expected one of {', '.join(_SETTINGS[section])})")
        found[f"{section}.{key}"] = (value, f"environment {name}")
    return found


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] = os.environ) -> Config:
    """Read, override and validate the configuration; raises ConfigError."""
    file = find_config_file(path, env)
    raw = _read_file(file) if file is not None else {}
    raw.update(_read_env(env))

    values: dict[str, dict[str, Any]] = {s: {} for s in _SETTINGS}
    for dotted, (value, where) in raw.items():
        section, key = dotted.split(".", 1)
        try:
            values[section][key] = _SETTINGS[section][key](value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {dotted}: {exc}") from None

    server = values["server"]
    server.setdefault("workers", cpu_count())
    if "dir" not in values["rules"]:
        # `rules/` of the working directory when there is one, else the packaged policy.
        here = Path.cwd() / "rules"
        values["rules"]["dir"] = here.resolve() if here.is_dir() else PACKAGED_RULES
    values["audit"].setdefault("url", _audit_url(AuditConfig.url))
    return Config(
        server=ServerConfig(**server),
        rules=RulesConfig(**values["rules"]),
        audit=AuditConfig(**values["audit"]),
        limits=LimitsConfig(**values["limits"]),
        auth=AuthConfig(**values["auth"]),
        console=ConsoleConfig(**values["console"]),
        source=file.resolve() if file is not None else None,
    )
