"""One typed configuration object, read from TOML and validated strictly.

Rules:
- Every key is known. An unknown key or a value of the wrong type/range raises ConfigError naming
  the dotted key and what was expected; `gossipd` turns that into exit status 2.
- Defaults are what a single node on a laptop should use; the testnet overrides only what it must.
- Paths are resolved relative to the config file's directory, so a unit file can point at one file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gossipd.data import Partition
from gossipd.tasks_builtin import BUILTIN


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class NodeConfig:
    state_dir: Path = Path("/var/lib/gossipd")
    control_socket: Path | None = None  # default: <state_dir>/control.sock
    log_level: str = "info"
    metrics_listen: str = ""  # "127.0.0.1:9464" serves GET /metrics there; "" = off
    dashboard_listen: str = ""  # "127.0.0.1:8470" serves the dashboard there; "" = off
    checkpoint_interval_s: float = 60.0  # save the whole training state this often; 0 = off
    checkpoint_keep: int = 5  # newest checkpoints kept in <state_dir>/checkpoints

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.state_dir / "control.sock"


def listen_address(value: str) -> tuple[str, int] | None:
    """node.metrics_listen / node.dashboard_listen -> (host, port), None when off."""
    return _host_port(value) if value else None


@dataclass(frozen=True)
class NetworkConfig:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    dial_timeout_s: float = 5.0
    discovery_interval_s: float = 2.0
    max_peers: int = 64
    max_inbound_exchanges: int = 8  # at once, all peers together (one per peer)
    peer_streams_per_s: float = 5.0  # inbound streams a peer may open per second (burst 4x)


@dataclass(frozen=True)
class AveragingConfig:
    enabled: bool = True
    interval_s: float = 0.5
    timeout_s: float = 10.0
    weight: float = 0.5
    replay_window_s: float = 300.0
    # "gossip": mix with a random peer every interval; "diloco": inner_steps local steps, then
    # an exchange and an outer Nesterov step on the averaged pseudo-gradient.
    algorithm: str = "gossip"
    inner_steps: int = 20  # diloco: local steps between outer steps (bench_comm: H=50 lost 1-2 pts)
    outer_lr: float = 0.5  # diloco: outer learning rate (bench_comm: 0.7 lost 0.3-0.7 pts)
    outer_momentum: float = 0.9  # diloco: outer Nesterov momentum
    # Peers behind us by s steps count with weight * 2 ** (-s / staleness_halflife); 0 = off.
    staleness_halflife: int = 0
    compression: str = "none"  # "none" (float32), "bf16", "int8" (blockwise, error feedback)
    join: str = "pull"  # a fresh node first takes a peer's model ("pull") or mixes it ("mix")
    # "clip": self-centred clipping, norm checks and peer reputation (gossipd/robust.py);
    # "none": plain averaging (trusting every member)
    robust: str = "clip"
    # Testbeds only: this node lies in its exchanges ("signflip", "scaled", "noise", "alie",
    # "stale"; gossipd/attacks.py), to measure a swarm's defences. "none" on real nodes.
    attack: str = "none"


@dataclass(frozen=True)
class TrainConfig:
    task: str = "digits-mlp"  # a built-in task name or "package.module:factory"
    data_path: Path | None = None  # the task's local data (plugins); never sent anywhere
    options: dict[str, Any] = field(default_factory=dict)  # [train.options], for the task
    compute_dtype: str = "float32"  # "bfloat16": compute in bf16, keep float32 master params
    partition: str = "iid"
    num_shards: int = 1
    shard_index: int = 0
    seed: int = 0
    steps_per_second: float = 20.0
    eval_interval_s: float = 2.0
    hidden: int = 64
    lr: float | None = None  # None: the trainer's tuned default
    lr_min: float | None = None
    decay_steps: int | None = None
    batch_size: int | None = None
    momentum: float | None = None
    l2: float | None = None

    @property
    def parsed_partition(self) -> Partition:
        return Partition.parse(self.partition)


@dataclass(frozen=True)
class SwarmConfig:
    """Membership; closed by default (see gossipd/membership.py)."""

    open: bool = False
    members: tuple[str, ...] = ()
    members_file: Path | None = None
    secret_file: Path | None = None


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_SECTIONS: dict[str, type] = {
    "node": NodeConfig,
    "swarm": SwarmConfig,
    "network": NetworkConfig,
    "averaging": AveragingConfig,
    "train": TrainConfig,
}

def _host_port(text: str) -> tuple[str, int] | None:
    """'127.0.0.1:9464' / '[::1]:9464' -> (host, port), or None if it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return None
    return host, int(port)


def _loopback(hp: tuple[str, int] | None) -> bool:
    # Metrics tell a lot about a node; scraping from elsewhere goes through a proxy the
    # operator controls, never a listener gossipd opens to the network itself.
    return hp is not None and (hp[0] in ("localhost", "::1") or hp[0].startswith("127."))


TASKS = tuple(BUILTIN)  # the built-in task names
ALGORITHMS = ("gossip", "diloco")
COMPRESSIONS = ("none", "bf16", "int8")
# "nan" is not among them: a node's own codec refuses to send a non-finite vector and every
# receiver's decoder rejects one (protocol/tensors.py), so it cannot reach a peer's merge.
ATTACKS = ("none", "signflip", "scaled", "noise", "alie", "stale")


def _is_factory_ref(text: str) -> bool:
    """'package.module:factory' (dotted module path, one attribute name)."""
    module, sep, attr = text.partition(":")
    return bool(sep) and attr.isidentifier() and all(p.isidentifier() for p in module.split("."))


def _plain_option(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain_option(v) and not isinstance(v, list) for v in value)
    return isinstance(value, str | int | float | bool)


def _parses(text: str) -> bool:
    try:
        Partition.parse(text)
    except ValueError:
        return False
    return True


def _partition_ok(text: str) -> bool:
    # "topic" is the char-level LM's natural split; a plugin task interprets the string itself
    # (its factory rejects what it does not know), so only its shape is checked here.
    return _parses(text) or (bool(text) and text.replace(":", "").replace(".", "").replace(
        "_", "").replace("-", "").isalnum())


# Partitions each built-in task understands (plugins: whatever their factory accepts).
_TASK_PARTITIONS: dict[str, tuple[Callable[[str], bool], str]] = {
    "digits-mlp": (_parses, "\"iid\" or \"dirichlet:ALPHA\""),
    "wine-mlp": (_parses, "\"iid\" or \"dirichlet:ALPHA\""),
    "charlm": (lambda v: v in ("topic", "iid"), "\"topic\" or \"iid\""),
}


# Extra per-key checks beyond the type: (predicate, what was expected).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "node.log_level": (
        lambda v: v in ("debug", "info", "warning", "error"),
        "one of debug, info, warning, error",
    ),
    "node.metrics_listen": (lambda v: v == "" or _loopback(_host_port(v)),
                            "\"\" (off) or a loopback HOST:PORT like \"127.0.0.1:9464\""),
    "node.dashboard_listen": (lambda v: v == "" or _loopback(_host_port(v)),
                              "\"\" (off) or a loopback HOST:PORT like \"127.0.0.1:8470\""),
    "swarm.members": (lambda v: all(p.isalnum() and 20 <= len(p) <= 128 for p in v),
                      "a list of peer IDs like \"12D3KooW...\""),
    "network.dial_timeout_s": (lambda v: 0 < v <= 120, "a number of seconds in (0, 120]"),
    "network.discovery_interval_s": (lambda v: 0 < v <= 3600, "seconds in (0, 3600]"),
    "network.max_peers": (lambda v: 1 <= v <= 10_000, "an integer in [1, 10000]"),
    "network.max_inbound_exchanges": (lambda v: 1 <= v <= 1024, "an integer in [1, 1024]"),
    "network.peer_streams_per_s": (lambda v: 0.1 <= v <= 10_000, "a number in [0.1, 10000]"),
    "network.listen": (lambda v: len(v) >= 1 and all(s.startswith("/") for s in v),
                       "a non-empty list of multiaddrs like \"/ip4/127.0.0.1/tcp/4001\""),
    "network.bootstrap": (lambda v: all("/p2p/" in s for s in v),
                          "multiaddrs that end in /p2p/<peer id>"),
    "averaging.interval_s": (lambda v: 0.01 <= v <= 86400, "seconds in [0.01, 86400]"),
    "averaging.timeout_s": (lambda v: 0.1 <= v <= 600, "seconds in [0.1, 600]"),
    "averaging.weight": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "averaging.replay_window_s": (lambda v: 1 <= v <= 86400, "seconds in [1, 86400]"),
    "node.checkpoint_interval_s": (lambda v: v == 0 or 1 <= v <= 86400,
                                   "0 (off) or seconds in [1, 86400]"),
    "node.checkpoint_keep": (lambda v: 1 <= v <= 1000, "an integer in [1, 1000]"),
    "averaging.algorithm": (lambda v: v in ALGORITHMS, "one of " + ", ".join(ALGORITHMS)),
    "averaging.inner_steps": (lambda v: 1 <= v <= 1_000_000, "an integer in [1, 1000000]"),
    "averaging.outer_lr": (lambda v: 0 < v <= 10, "a number in (0, 10]"),
    "averaging.outer_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "averaging.staleness_halflife": (lambda v: 0 <= v <= 10_000_000, "0 (off) or steps >= 1"),
    "averaging.compression": (lambda v: v in COMPRESSIONS, "one of " + ", ".join(COMPRESSIONS)),
    "averaging.robust": (lambda v: v in ("clip", "none"), "\"clip\" or \"none\""),
    "averaging.attack": (lambda v: v in ATTACKS, "one of " + ", ".join(ATTACKS)),
    "averaging.join": (lambda v: v in ("pull", "mix"), "\"pull\" or \"mix\""),
    "train.task": (lambda v: v in TASKS or _is_factory_ref(v),
                   "one of " + ", ".join(TASKS) + " or a plugin \"package.module:factory\""),
    "train.compute_dtype": (lambda v: v in ("float32", "bfloat16"), "\"float32\" or \"bfloat16\""),
    "train.options": (lambda v: all(_plain_option(x) for x in v.values()),
                      "a table of strings, numbers, booleans or lists of them"),
    "train.partition": (_partition_ok, "\"iid\", \"dirichlet:ALPHA\" or \"topic\""),
    "train.num_shards": (lambda v: 1 <= v <= 100_000, "an integer >= 1"),
    "train.shard_index": (lambda v: v >= 0, "an integer >= 0 and < train.num_shards"),
    "train.steps_per_second": (lambda v: 0 < v <= 100_000, "a positive number"),
    "train.eval_interval_s": (lambda v: 0 < v <= 86400, "a positive number of seconds"),
    "train.hidden": (lambda v: 1 <= v <= 4096, "an integer in [1, 4096]"),
    "train.lr": (lambda v: v is None or v > 0, "a positive number"),
    "train.lr_min": (lambda v: v is None or v >= 0, "a number >= 0"),
    "train.decay_steps": (lambda v: v is None or v >= 1, "an integer >= 1"),
    "train.batch_size": (lambda v: v is None or 1 <= v <= 65536, "an integer in [1, 65536]"),
    "train.momentum": (lambda v: v is None or 0 <= v < 1, "a number in [0, 1)"),
    "train.l2": (lambda v: v is None or v >= 0, "a number >= 0"),
}


def _type_name(annotation: str) -> str:
    return {
        "Path": "a path string",
        "Path | None": "a path string",
        "str": "a string",
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "float | None": "a number",
        "int | None": "an integer",
        "tuple[str, ...]": "a list of strings",
        "dict[str, Any]": "a table",
    }.get(annotation, annotation)


def _coerce(key: str, annotation: str, value: Any, base: Path) -> Any:
    """Convert one TOML value to the field's type, or raise ConfigError naming the key."""
    bad = ConfigError(f"config key '{key}': expected {_type_name(annotation)}, got {value!r}")
    if annotation in ("Path", "Path | None"):
        if not isinstance(value, str) or not value:
            raise bad
        path = Path(value)
        return path if path.is_absolute() else (base / path)
    if annotation == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if annotation == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if annotation in ("int", "int | None"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if annotation in ("float", "float | None"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if annotation == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if annotation == "dict[str, Any]":
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise bad  # pragma: no cover - every field annotation is listed above


def from_mapping(data: Mapping[str, Any], base: Path) -> Config:
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            raise ConfigError(
                f"config: unknown section '{name}'; known sections: {', '.join(_SECTIONS)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"config: '{name}' must be a table ([{name}])")
        cls = _SECTIONS[name]
        known = {f.name: str(f.type) for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in value.items():
            dotted = f"{name}.{key}"
            if key not in known:
                raise ConfigError(
                    f"config: unknown key '{dotted}'; known keys in [{name}]: {', '.join(known)}"
                )
            coerced = _coerce(dotted, known[key], raw, base)
            check = _CHECKS.get(dotted)
            if check is not None and not check[0](coerced):
                raise ConfigError(f"config key '{dotted}': expected {check[1]}, got {raw!r}")
            kwargs[key] = coerced
        sections[name] = cls(**kwargs)
    config = Config(**sections)
    if config.train.shard_index >= config.train.num_shards:
        raise ConfigError(
            f"config key 'train.shard_index': expected an integer < train.num_shards "
            f"({config.train.num_shards}), got {config.train.shard_index}"
        )
    t = config.train
    if t.task in _TASK_PARTITIONS and not _TASK_PARTITIONS[t.task][0](t.partition):
        raise ConfigError(f"config key 'train.partition': task {t.task} expects "
                          f"{_TASK_PARTITIONS[t.task][1]}, got {t.partition!r}")
    sw = config.swarm
    if not sw.open and not sw.members and sw.members_file is None and sw.secret_file is None:
        raise ConfigError(
            "config section 'swarm': a swarm is closed by default; expected swarm.members "
            "(peer IDs), swarm.members_file or swarm.secret_file, or swarm.open = true for an "
            "open test swarm"
        )
    return config


# Keys a running node applies on reload (SIGHUP, `gossipctl config reload`); every other key
# needs a restart, and a reload that changes one says so instead of half-applying it.
RELOADABLE = frozenset({
    "node.log_level",
    "swarm.members", "swarm.members_file",
    "network.bootstrap", "network.dial_timeout_s", "network.discovery_interval_s",
    "averaging.enabled", "averaging.interval_s", "averaging.timeout_s", "averaging.weight",
    "train.eval_interval_s",
})


def flatten(config: Config) -> dict[str, Any]:
    """Every key as 'section.key' -> value (paths as strings), in file order."""
    out: dict[str, Any] = {}
    for section in fields(config):
        part = getattr(config, section.name)
        for f in fields(part):
            value = getattr(part, f.name)
            out[f"{section.name}.{f.name}"] = (
                str(value) if isinstance(value, Path) else list(value)
                if isinstance(value, tuple) else dict(value) if isinstance(value, dict)
                else value
            )
    return out


def changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """(changed keys a running node can apply, changed keys that need a restart)."""
    a, b = flatten(old), flatten(new)
    changed = [k for k in a if a[k] != b[k]]
    return ([k for k in changed if k in RELOADABLE], [k for k in changed if k not in RELOADABLE])


def load(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from exc
    return from_mapping(data, path.resolve().parent)
