"""The remotes' configuration and names, without a daemon."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lxfs.cli import _default_remote_elsewhere, _may_name_remote
from lxfs.cli.base import CLIError
from lxfs.cli.remotes import (
    Remote,
    RemotesConfig,
    load_config,
    normalize_addr,
    split_remote,
)
from lxfs.cli.rest_client import decode_token


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LXFS_CONF", str(tmp_path / "conf"))
    return tmp_path / "conf"


def test_defaults_without_a_file(conf: Path) -> None:
    config = load_config()
    assert config.default_remote == "local"
    assert set(config.remotes) == {"local", "images", "ubuntu"}
    assert config.remotes["images"].protocol == "simplestreams"
    assert not _default_remote_elsewhere()


def test_saved_as_lxc_shapes_it_and_read_back(conf: Path) -> None:
    config = load_config()
    config.remotes["host2"] = Remote("host2", "https://10.0.0.2:8443")
    config.default_remote = "host2"
    config.save()
    text = (conf / "config.yml").read_text()
    assert "default-remote: host2" in text and "addr: https://10.0.0.2:8443" in text
    assert (conf / "config.yml").stat().st_mode & 0o777 == 0o600
    again = load_config()
    assert again.default_remote == "host2"
    assert again.remotes["host2"].auth_type == "tls"
    assert _default_remote_elsewhere()  # read without YAML: the common commands' start
    assert _may_name_remote(["list"])


def test_split_remote() -> None:
    config = RemotesConfig({"local": Remote("local", "unix://"),
                            "host2": Remote("host2", "https://h:8443")})
    assert split_remote("host2:c1", config) == ("host2", "c1")
    assert split_remote("host2:", config) == ("host2", "")
    assert split_remote("c1", config) == ("local", "c1")
    assert split_remote("local:c1/snap0", config) == ("local", "c1/snap0")
    with pytest.raises(CLIError, match="Remote nowhere doesn't exist"):
        split_remote("nowhere:c1", config)


def test_may_name_remote_before_the_command_only(conf: Path) -> None:
    assert _may_name_remote(["list", "host2:"])
    assert not _may_name_remote(["exec", "c1", "--", "echo", "a:b"])
    assert not _may_name_remote(["list", "--format=json"])


@pytest.mark.parametrize(("given", "protocol", "expected"), [
    ("10.0.0.2", "lxd", "https://10.0.0.2:8443"),
    ("10.0.0.2:9443", "lxd", "https://10.0.0.2:9443"),
    ("https://host.example", "lxd", "https://host.example:8443"),
    ("[fd00::2]", "lxd", "https://[fd00::2]:8443"),
    ("https://mirror.example/streams/", "simplestreams", "https://mirror.example/streams"),
    ("http://127.0.0.1:8000", "simplestreams", "http://127.0.0.1:8000"),
])
def test_normalize_addr(given: str, protocol: str, expected: str) -> None:
    assert normalize_addr(given, protocol) == expected


def test_normalize_addr_refuses() -> None:
    with pytest.raises(CLIError, match="https"):
        normalize_addr("http://10.0.0.2", "lxd")
    with pytest.raises(CLIError, match="scheme"):
        normalize_addr("ftp://x", "lxd")


def test_decode_token() -> None:
    token = {"client_name": "laptop", "fingerprint": "ab" * 32,
             "addresses": ["10.0.0.2:8443"], "secret": "s" * 64,
             "expires_at": "0001-01-01T00:00:00Z"}
    text = base64.b64encode(json.dumps(token).encode()).decode()
    decoded = decode_token(text)
    assert decoded is not None and decoded["addresses"] == ["10.0.0.2:8443"]
    assert decoded["text"] == text  # sent whole as the password, as lxc does
    assert decode_token("https://10.0.0.2:8443") is None
    assert decode_token("host2") is None
    assert decode_token(base64.b64encode(b'{"a": 1}').decode()) is None
