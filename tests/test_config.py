"""Config: one typed object; unknown keys and bad values are named with what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from gossipd import config
from gossipd.main import main

GOOD = """
[swarm]
open = true
[node]
state_dir = "state"
[network]
listen = ["/ip4/127.0.0.1/tcp/0"]
bootstrap = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc"]
[averaging]
interval_s = 1
[train]
partition = "dirichlet:0.1"
num_shards = 4
shard_index = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gossipd.toml"
    path.write_text(text)
    return path


def test_good_config_is_typed_and_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.node.state_dir == tmp_path / "state"
    assert cfg.node.socket_path == tmp_path / "state" / "control.sock"
    assert cfg.averaging.interval_s == 1.0 and isinstance(cfg.averaging.interval_s, float)
    assert cfg.network.bootstrap == ("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc",)
    assert str(cfg.train.parsed_partition) == "dirichlet:0.1"


def test_swarm_is_closed_by_default(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"'swarm'.*closed by default"):
        config.load(write(tmp_path, ""))
    open_cfg = config.load(write(tmp_path, "[swarm]\nopen = true\n"))
    assert open_cfg == config.Config(swarm=config.SwarmConfig(open=True))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[node]\nstat_dir = 'x'\n", "node.stat_dir"),
        ("[swarm]\nmembers = ['not a peer id']\n", "swarm.members"),
        ("[nodes]\n", "nodes"),
        ("[averaging]\ninterval_s = 'fast'\n", "averaging.interval_s"),
        ("[averaging]\nenabled = 1\n", "averaging.enabled"),
        ("[averaging]\nweight = 2.0\n", "averaging.weight"),
        ("[train]\npartition = 'dirichlet'\n", "train.partition"),
        ("[train]\ntask = 'imagenet'\n", "train.task"),
        ("[train]\nnum_shards = 2\nshard_index = 2\n", "train.shard_index"),
        ("[network]\nbootstrap = ['/ip4/1.2.3.4/tcp/1']\n", "network.bootstrap"),
        ("[network]\nlisten = []\n", "network.listen"),
        ("[node]\nlog_level = 'loud'\n", "node.log_level"),
        ("node = 3\n", "node"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(config.ConfigError, match=f"'{named}'"):
        config.load(write(tmp_path, text))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[node\n"))
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")


def test_daemon_exits_2_on_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[swarm]\nopen = true\n[averaging]\ninterval_s = -1\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "averaging.interval_s" in err and "expected" in err


def test_check_flag_validates_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(write(tmp_path, GOOD)), "--check"]) == 0
    assert "is valid" in capsys.readouterr().out


def test_every_builtin_task_and_plugins_are_accepted() -> None:
    from gossipd.config import ConfigError, from_mapping

    for task, partition in (("digits-mlp", "dirichlet:0.1"), ("wine-mlp", "iid"),
                            ("charlm", "topic"), ("my_pkg.tasks:make", "by-site")):
        cfg = from_mapping({"swarm": {"open": True},
                            "train": {"task": task, "partition": partition}}, Path("."))
        assert cfg.train.task == task
    with pytest.raises(ConfigError, match="task charlm expects"):
        from_mapping({"swarm": {"open": True},
                      "train": {"task": "charlm", "partition": "dirichlet:0.1"}}, Path("."))
