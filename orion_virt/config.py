"""Typed configuration, built once at an entry point and passed down.

Server: flags > ``/etc/orion/server.conf`` (or ``--config``) > defaults.
Client: environment > ``~/.orion/client.conf`` > ``/etc/orion/client.conf`` > defaults; for
``controller_addr`` and ``server_addr``, the host agent's fw_cfg entry in a VM
(``hostagent_addrs``) comes between the files and the defaults.

The files use the seeds' INI layout (``[server]``, ``[server-log]``, ``[server-shm]``,
``[controller]``, ``[client]``, ``[client-shm]``, ...); ``;`` starts a comment, values may be
quoted (``enable_shm = "true"``). An unknown section or key, or a value of the wrong type, is a
``ConfigError`` naming file, section and key: a typo must never be silently ignored.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import compat
from .errors import ConfigError

DEFAULT_SERVER_CONF = Path("/etc/orion/server.conf")
DEFAULT_CLIENT_CONF = Path("/etc/orion/client.conf")
LOG_LEVELS = ("ERROR", "WARNING", "INFO", "DEBUG")


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_size_mib(text: str) -> int:
    """A size in MiB: ``128``, ``128M``, ``128MiB``, ``1G``. Returns bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = 1 << 20
    if t.endswith("G"):
        mult, t = 1 << 30, t[:-1]
    elif t.endswith("M"):
        t = t[:-1]
    n = int(t)
    if n <= 0:
        raise ValueError("size must be positive")
    return n * mult


def parse_level(text: str) -> str:
    t = text.strip().upper()
    if t == "WARN":
        t = "WARNING"
    if t not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return t


def parse_addr(text: str) -> str:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT")
    return f"{host}:{port}"


def _optional_addr(text: str) -> str:
    """``HOST:PORT``, or empty (the feature is off)."""
    return parse_addr(text) if text.strip() else ""


def parse_port(text: str) -> int:
    n = int(text)
    if not 0 < n < 65536:
        raise ValueError("port out of range 1..65535")
    return n


def parse_mib(text: str) -> int:
    """A size in MiB as ORION_GMEM takes it: ``4096``, ``4096M``, ``4096MiB``, ``4G``, ``4GiB``."""
    m = re.fullmatch(r"\s*(\d+)\s*(G|GB|GIB|M|MB|MIB)?\s*", text.upper())
    if not m or int(m.group(1)) < 1:
        raise ValueError("expected a size in MiB such as 4096, 4096M or 4G")
    return int(m.group(1)) * (1024 if (m.group(2) or "M").startswith("G") else 1)


def parse_positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ValueError("expected a whole number >= 1") from None
    if n < 1:
        raise ValueError("expected a whole number >= 1")
    return n


def parse_seconds(text: str) -> float:
    n = float(text)
    if not 0 <= n < 1e9:
        raise ValueError("expected seconds >= 0")
    return n


def parse_positive_seconds(text: str) -> float:
    n = parse_seconds(text)
    if n <= 0:
        raise ValueError("expected seconds > 0")
    return n


def _str(text: str) -> str:
    return text.strip()


@dataclass(frozen=True)
class Key:
    """One config key: where it lives in the file and how its text becomes a value."""

    attr: str
    sections: tuple[str, ...]
    name: str
    parse: Callable[[str], Any]
    env: tuple[str, ...] = ()


def _unquote(value: str) -> str:
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        return v[1:-1]
    return v


def read_ini(path: Path, keys: list[Key]) -> dict[str, Any]:
    """Parse ``path`` against ``keys``; return ``{attr: value}`` for the keys present.

    Raises ConfigError for unreadable files, syntax errors, unknown sections/keys and bad values.
    """
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), comment_prefixes=(";", "#"), interpolation=None,
        strict=True,
    )
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        parser.read_string("\n".join(line.strip() for line in text.splitlines()), source=str(path))
    except configparser.Error as e:
        raise ConfigError(f"{path}: {e.message if hasattr(e, 'message') else e}") from None
    known_sections = {s for k in keys for s in k.sections}
    by_section = {(s, k.name): k for k in keys for s in k.sections}
    out: dict[str, Any] = {}
    for section in parser.sections():
        if section not in known_sections:
            raise ConfigError(
                f"{path}: unknown section [{section}] (known: {', '.join(sorted(known_sections))})"
            )
        for name, raw in parser.items(section):
            key = by_section.get((section, name))
            if key is None:
                known = sorted(k.name for k in keys if section in k.sections)
                raise ConfigError(
                    f"{path}: [{section}] unknown key {name!r} (known here: {', '.join(known)})"
                )
            try:
                out[key.attr] = key.parse(_unquote(raw))
            except ValueError as e:
                raise ConfigError(f"{path}: [{section}] {name} = {raw!r}: {e}") from None
    return out


def read_env(env: Mapping[str, str], keys: list[Key]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        for var in key.env:
            if var in env and env[var].strip() != "":
                try:
                    out[key.attr] = key.parse(env[var])
                except ValueError as e:
                    raise ConfigError(f"environment variable {var}={env[var]!r}: {e}") from None
                break
    return out


@dataclass(frozen=True)
class LogConfig:
    log_with_time: bool = True
    log_to_screen: bool = True
    log_to_file: bool = True
    log_level: str = "INFO"
    file_log_level: str = "INFO"


@dataclass(frozen=True)
class ServerConfig:
    """oriond's settings. ``source`` names the file they came from (or ``defaults``)."""

    listen_port: int = 9960
    bind_addr: str = "127.0.0.1"
    bind_net: str = ""
    enable_shm: bool = True
    enable_kvm: bool = False
    hook_strict: bool = False
    enable_rdma: bool = False
    vgpu_count: int = 4
    backend: str = "auto"
    shm_path_base: str = "/dev/shm"
    shm_user_name: str = ""
    shm_group_name: str = ""
    shm_buffer_size: int = 128 << 20
    controller_addr: str = ""
    token_key_file: str = "/etc/orion/token.key"
    api_key_file: str = "/etc/orion/controller.key"
    """the controller's API key: registration and heartbeats are signed with it"""
    token_state_dir: str = "/run/orion/tokens"
    """tokens already used and allocations revoked, shared by oriond and its session workers"""
    log_dir: str = "/var/log/orion"
    log: LogConfig = field(default_factory=LogConfig)
    enable_computation_throttle: bool = True
    max_pending_connections: int = 64
    """TCP connections accepted that have not sent their HELLO yet (they cost no worker)"""
    max_sessions: int = 256
    """sessions served at once, over TCP and shared memory together"""
    max_sessions_per_client: int = 32
    """TCP sessions (and connections waiting for their HELLO) from one client address"""
    hello_timeout: float = 10.0
    """seconds a new connection (or a claimed channel) may take to send its HELLO"""
    idle_timeout: float = 0.0
    """seconds a session may go without a call before it is closed; 0: never"""
    direct_accounting: bool = True
    """direct mode: grants are accounted across sessions against the node's GPUs"""
    metrics_addr: str = ""
    """``HOST:PORT`` oriond serves its Prometheus figures on (``/metrics``); empty: none"""
    source: str = "defaults"
    ignored: tuple[tuple[str, str], ...] = ()
    """(``[section] key``, why) for each key of the file that is accepted but has no effect"""

    @property
    def server_log_path(self) -> Path:
        return Path(self.log_dir) / "server.log"

    @property
    def session_log_dir(self) -> Path:
        return Path(self.log_dir) / "session"


def _backend(text: str) -> str:
    t = text.strip().lower()
    if t not in ("auto", "sim", "cuda"):
        raise ValueError("expected auto, sim or cuda")
    return t


def _percent(text: str) -> int:
    n = int(text)
    if not 0 <= n <= 100:
        raise ValueError("expected 0..100")
    return n


_LOG_SECTIONS_SERVER = ("server-log", "log")
_LOG_KEYS = [
    ("log_with_time", parse_bool), ("log_to_screen", parse_bool), ("log_to_file", parse_bool),
    ("log_level", parse_level), ("file_log_level", parse_level),
]

SERVER_KEYS: list[Key] = [
    Key("listen_port", ("server",), "listen_port", parse_port),
    Key("bind_addr", ("server",), "bind_addr", _str),
    Key("bind_net", ("server",), "bind_net", _str),
    Key("enable_shm", ("server",), "enable_shm", parse_bool),
    Key("enable_kvm", ("server",), "enable_kvm", parse_bool),
    Key("enable_rdma", ("server",), "enable_rdma", parse_bool),
    Key("hook_strict", ("server-kvm",), "hook_strict", parse_bool),
    Key("vgpu_count", ("server",), "vgpu_count", parse_positive),
    Key("metrics_addr", ("server",), "metrics_addr", _optional_addr),
    Key("backend", ("server",), "backend", _backend),
    Key("ibverbs_device", ("server",), "ibverbs_device", _str),
    Key("log_dir", _LOG_SECTIONS_SERVER, "log_dir", _str),
    *[Key("log." + n, _LOG_SECTIONS_SERVER, n, p) for n, p in _LOG_KEYS],
    Key("shm_path_base", ("server-shm",), "shm_path_base", _str),
    Key("shm_user_name", ("server-shm",), "shm_user_name", _str),
    Key("shm_group_name", ("server-shm",), "shm_group_name", _str),
    Key("shm_buffer_size", ("server-shm",), "shm_buffer_size", parse_size_mib),
    Key("controller_addr", ("controller",), "controller_addr", parse_addr),
    Key("token_key_file", ("controller",), "token_key_file", _str),
    Key("api_key_file", ("controller",), "api_key_file", _str),
    Key("token_state_dir", ("controller",), "token_state_dir", _str),
    Key("comm_id", ("server-nccl",), "comm_id", _str),
    Key("throttle_level", ("throttle",), "throttle_level", _percent),
    Key("enable_computation_throttle", ("throttle",), "enable_computation_throttle", parse_bool),
    Key("computation_throttle_mode2", ("throttle",), "computation_throttle_mode2", parse_bool),
    Key("max_pending_connections", ("server-limits",), "max_pending_connections", parse_positive),
    Key("max_sessions", ("server-limits",), "max_sessions", parse_positive),
    Key("max_sessions_per_client", ("server-limits",), "max_sessions_per_client", parse_positive),
    Key("hello_timeout", ("server-limits",), "hello_timeout", parse_positive_seconds),
    Key("idle_timeout", ("server-limits",), "idle_timeout", parse_seconds),
    Key("direct_accounting", ("server-limits",), "direct_accounting", parse_bool),
]


# Keys of the seeds' server.conf that this server accepts (so their files load) but that have no
# effect, with the reason logged once when oriond starts; a key maps to (is it in effect with this
# value?, why it is ignored).
IGNORED_SERVER_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "enable_rdma": (bool, "not supported, using TCP/shm (this Orion Server has no RDMA transport)"),
    "ibverbs_device": (lambda v: True, "not supported: there is no RDMA transport (TCP/shm are used)"),
    "comm_id": (lambda v: True, "not supported: NCCL is not remoted (as in the original, see its limits)"),
    "throttle_level": (lambda v: True, "not supported: each vGPU's compute share (ORION_RATIO) is enforced "
                       "by measured device time; [throttle] enable_computation_throttle turns that off"),
    "computation_throttle_mode2": (lambda v: True, "not needed: there is a single throttle mode"),
}


def _ignored(values: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for key in SERVER_KEYS:
        rule = IGNORED_SERVER_KEYS.get(key.attr)
        if rule is not None and key.attr in values and rule[0](values[key.attr]):
            out.append((f"[{key.sections[0]}] {key.name}", rule[1]))
    return tuple(out)


_warned: set[tuple[str, str]] = set()


def warn_ignored_keys(cfg: ServerConfig, log: Any) -> None:
    """Log each accepted-but-ignored key of ``cfg``'s file, with the reason, once per process
    (``log``: a logging.Logger). Called by the entry point that loaded the config (oriond)."""
    for key, why in cfg.ignored:
        if (cfg.source, key) in _warned:
            continue
        _warned.add((cfg.source, key))
        log.warning("%s: %s is ignored: %s", cfg.source, key, why)


def _build(cls: type, values: dict[str, Any], source: str) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    log_values = {k[4:]: v for k, v in values.items() if k.startswith("log.")}
    kwargs = {k: v for k, v in values.items() if k in fields}
    if "log" in fields:
        kwargs["log"] = LogConfig(**log_values)
    return cls(**kwargs, source=source)


def load_server_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ServerConfig:
    """Defaults, then ``path`` (default /etc/orion/server.conf if it exists), then flag overrides.

    An explicitly given path that does not exist is an error; the default path may be absent.
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None or DEFAULT_SERVER_CONF.exists():
        p = path or DEFAULT_SERVER_CONF
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        values.update(read_ini(p, SERVER_KEYS))
        source = str(p)
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    if values.get("bind_addr") and values.get("bind_net"):
        raise ConfigError(f"{source}: [server] bind_addr and bind_net are exclusive: set only one")
    cfg = _build(ServerConfig, values, source)
    return dataclasses.replace(cfg, ignored=_ignored(values))


@dataclass(frozen=True)
class ClientConfig:
    """The client runtime's settings; ``sources`` maps each set attribute to where it came from."""

    vgpu: int | None = None
    gmem_mib: int | None = None
    ratio: int | None = None
    cross_node: bool = False
    group_id: str = ""
    controller_addr: str = ""
    client_key_file: str = "/etc/orion/client.key"
    """the controller's client key: allocations are signed with it (absent: unsigned)"""
    server_addr: str = ""
    enable_net: bool = False
    shm_path_base: str = "/dev/shm"
    shm_device: str = ""
    log_dir: str = ""
    log: LogConfig = field(default_factory=LogConfig)
    """[client-log]: the client's screen lines (stderr) and its log file (the native client's orion_log.c)"""
    connect_timeout: float = 5.0
    source: str = "defaults"
    sources: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    """why the host agent's addresses could not be read (the runtime logs them as warnings)"""

    def origin(self, attr: str) -> str:
        return dict(self.sources).get(attr, "default")


_LOG_SECTIONS_CLIENT = ("client-log", "log")

CLIENT_KEYS: list[Key] = [
    Key("vgpu", (), "ORION_VGPU", parse_positive, env=("ORION_VGPU",)),
    Key("gmem_mib", (), "ORION_GMEM", parse_mib, env=("ORION_GMEM",)),
    Key("ratio", (), "ORION_RATIO", lambda t: max(1, _percent(t)), env=("ORION_RATIO",)),
    Key("cross_node", (), "ORION_CROSS_NODE", parse_bool, env=("ORION_CROSS_NODE",)),
    Key("group_id", (), "ORION_GROUP_ID", _str, env=("ORION_GROUP_ID",)),
    Key("controller_addr", ("controller",), "controller_addr", parse_addr,
        env=compat.ENV_CONTROLLER_NAMES),  # the seeds' misspelt name too (see compat)
    Key("client_key_file", ("controller",), "client_key_file", _str, env=("ORION_CLIENT_KEY_FILE",)),
    Key("server_addr", ("client",), "server_addr", parse_addr, env=("ORION_SERVER",)),
    Key("enable_net", ("client",), "enable_net", parse_bool, env=("ORION_ENABLE_NET",)),
    Key("connect_timeout", ("client",), "connect_timeout", float, env=("ORION_CONNECT_TIMEOUT",)),
    Key("shm_path_base", ("client-shm",), "shm_path_base", _str, env=("ORION_SHM_PATH_BASE",)),
    Key("shm_device", ("client-shm",), "shm_device", _str, env=("ORION_SHM_DEVICE",)),
    Key("log_dir", _LOG_SECTIONS_CLIENT, "log_dir", _str, env=("ORION_LOG_DIR",)),
    *[Key("log." + n, _LOG_SECTIONS_CLIENT, n, p) for n, p in _LOG_KEYS],
]


def client_config_paths(env: Mapping[str, str]) -> list[Path]:
    """Lowest priority first: /etc/orion/client.conf, then ~/.orion/client.conf."""
    etc = Path(env.get("ORION_CLIENT_CONF_ETC", str(DEFAULT_CLIENT_CONF)))
    home = env.get("HOME", "")
    paths = [etc]
    if home:
        paths.append(Path(home) / ".orion" / "client.conf")
    return paths


def load_client_config(env: Mapping[str, str] | None = None) -> ClientConfig:
    """Environment > ~/.orion/client.conf > /etc/orion/client.conf > (controller_addr and
    server_addr only) the host agent's fw_cfg entry > defaults. Raises ConfigError for a bad
    file or variable, and for a malformed fw_cfg address that nothing above overrides."""
    from .hostagent_addrs import ORIGIN, read_fwcfg

    env = os.environ if env is None else env
    agent = read_fwcfg(env, parse_addr)
    values: dict[str, Any] = dict(agent.values)
    origins: dict[str, str] = {k: ORIGIN for k in agent.values}
    source = "defaults"
    for p in client_config_paths(env):
        if p.is_file():
            got = read_ini(p, CLIENT_KEYS)
            values.update(got)
            origins.update({k: str(p) for k in got})
            source = str(p)
    got = read_env(env, CLIENT_KEYS)
    values.update(got)
    for k in got:
        var = next(v for key in CLIENT_KEYS if key.attr == k for v in key.env if v in env)
        origins[k] = f"environment {var}"
    for attr, why in agent.problems.items():
        if attr not in origins:
            raise ConfigError(f"{why} (set {attr} in client.conf or the environment to override it)")
    if not values.get("log_dir"):
        values["log_dir"] = str(Path(env.get("HOME", "/tmp")) / ".orion" / "log")
    cfg = _build(ClientConfig, values, source)
    return dataclasses.replace(cfg, sources=tuple(sorted(origins.items())),
                               notes=(agent.note,) if agent.note else ())
