"""Unit tests of the access rules: project restrictions, the traversal ACL, the exec socket's
requests, secrets."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from lxfs_plugins.exec_socket import _parse_request

from lxfs.api import may_drive as may_exec
from lxfs.config_schema import hash_secret, verify_secret
from lxfs.errors import InvalidArgument
from lxfs.projects import Forbidden, Restrictions, validate_project_key
from lxfs.storage import grant_search


def test_unrestricted_project_allows_everything():
    r = Restrictions("default", {"restricted.containers.privilege": "unprivileged"})
    r.check_key("instance c1", "security.privileged", "true")
    r.check_config("instance c1", {"raw.lxc": "x", "security.nesting": "true"}, True)
    r.check_device("instance c1", "d", {"type": "unix-char", "path": "/dev/x"})


@pytest.mark.parametrize("key,value,allowed_by", [
    ("security.privileged", "true", ("restricted.containers.privilege", "allow")),
    ("security.nesting", "true", ("restricted.containers.nesting", "allow")),
    ("raw.lxc", "lxc.cap.drop =", ("restricted.containers.lowlevel", "allow")),
    ("raw.idmap", "both 1000 1000", ("restricted.containers.lowlevel", "allow")),
    ("security.syscalls.intercept.mknod", "true",
     ("restricted.containers.interception", "allow")),
])
def test_restricted_keys(key, value, allowed_by):
    def lowlevel(k: str) -> bool:
        return k.startswith("raw.")

    r = Restrictions("default", {"restricted": "true"}, lowlevel)
    with pytest.raises(Forbidden, match="forbidden"):
        r.check_key("instance c1", key, value)
    Restrictions("default", {"restricted": "true", allowed_by[0]: allowed_by[1]},
                 lowlevel).check_key("instance c1", key, value)
    # false values are never refused
    if value == "true":
        r.check_key("instance c1", key, "false")


def test_isolated_privilege_requires_isolated_idmap():
    r = Restrictions("default", {"restricted": "true",
                                 "restricted.containers.privilege": "isolated"})
    with pytest.raises(Forbidden, match="security.idmap.isolated"):
        r.check_config("instance c1", {}, instance=True)
    r.check_config("instance c1", {"security.idmap.isolated": "true"}, instance=True)
    r.check_config("profile p", {}, instance=False)  # profiles need not set it


def test_device_restrictions():
    r = Restrictions("default", {"restricted": "true"})
    r.check_device("i", "root", {"type": "disk", "path": "/", "pool": "default"})
    r.check_device("i", "v", {"type": "disk", "path": "/mnt", "pool": "default", "source": "v"})
    r.check_device("i", "eth0", {"type": "nic", "network": "lxdbr0"})
    for device in ({"type": "disk", "path": "/mnt", "source": "/srv"},
                   {"type": "unix-char", "path": "/dev/fuse"},
                   {"type": "nic", "nictype": "bridged", "parent": "br0"}):
        with pytest.raises(Forbidden):
            r.check_device("i", "d", device)
    paths = Restrictions("default", {"restricted": "true", "restricted.devices.disk": "allow",
                                     "restricted.devices.disk.paths": "/srv,/data/"})
    paths.check_device("i", "d", {"type": "disk", "path": "/m", "source": "/srv/a"})
    paths.check_device("i", "d", {"type": "disk", "path": "/m", "source": "/data"})
    for source in ("/srvx", "/etc", "/srv/../etc"):
        with pytest.raises(Forbidden, match="outside"):
            paths.check_device("i", "d", {"type": "disk", "path": "/m", "source": source})
    blocked = Restrictions("default", {"restricted": "true", "restricted.devices.disk": "block"})
    with pytest.raises(Forbidden):
        blocked.check_device("i", "v", {"type": "disk", "path": "/m", "pool": "p", "source": "v"})


def test_violations_name_the_offenders():
    r = Restrictions("default", {"restricted": "true"}, lambda k: k == "raw.lxc")
    found = r.violations([("instance a", {"security.privileged": "true"}, {}, True),
                          ("instance b", {}, {}, True),
                          ("profile p", {"raw.lxc": "x"}, {}, False)])
    assert len(found) == 2 and "instance a" in found[0] and "profile p" in found[1]


def test_project_keys_are_validated():
    validate_project_key("restricted", "true")
    for key, value in (("restricted.containers.privilege", "maybe"), ("restricted", "yes!"),
                       ("restricted.devices.disk.paths", "relative"), ("nope", "1")):
        with pytest.raises(InvalidArgument):
            validate_project_key(key, value)


def _acl(path: Path) -> dict[tuple[int, int], int]:
    raw = os.getxattr(path, "system.posix_acl_access")
    assert struct.unpack_from("<I", raw)[0] == 2
    return {(tag, ident): perm for tag, perm, ident in
            (struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw), 8))}


def test_grant_search_adds_one_entry_and_keeps_others(tmp_path):
    d = tmp_path / "custom"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    grant_search(d, 1000000)
    grant_search(d, 1000000)  # idempotent
    grant_search(d, 1065536)
    acl = _acl(d)
    assert acl[(0x02, 1000000)] == 1 and acl[(0x02, 1065536)] == 1  # user:ID:--x
    assert acl[(0x01, 0xFFFFFFFF)] == 7 and acl[(0x20, 0xFFFFFFFF)] == 0  # owner rwx, other -
    assert acl[(0x10, 0xFFFFFFFF)] == 1  # the mask lets search through, nothing else
    assert d.stat().st_mode & 0o777 == 0o710


def test_exec_requests_are_checked():
    assert _parse_request(b'{"args": ["c1", "--", "true"], "term": "xterm"}', [0, 1, 2]) == (
        ["c1", "--", "true"], "xterm")
    for data, fds in ((b'{"args": ["c1"]}', [0, 1]), (b"not json", [0, 1, 2]),
                      (b'{"args": []}', [0, 1, 2]), (b'{"args": ["c\\u0000"]}', [0, 1, 2]),
                      (b'{"args": [1]}', [0, 1, 2]), (b'[1]', [0, 1, 2])):
        assert isinstance(_parse_request(data, fds), str)
    assert may_exec(0, set(), 0)
    assert may_exec(1000, {100, 999}, 999)
    assert not may_exec(1000, {100}, 999)
    assert not may_exec(1000, {0}, 0)  # without an access group, root alone


def test_secrets_are_hashed_and_verified():
    stored = hash_secret("s3cret")
    assert "s3cret" not in stored and len(stored) == 192
    assert stored != hash_secret("s3cret")  # salted
    assert verify_secret(stored, "s3cret")
    assert not verify_secret(stored, "S3cret")
    assert not verify_secret("zz", "s3cret") and not verify_secret("00" * 10, "s3cret")
