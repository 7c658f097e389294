"""The one grammar of names (lxfs.names)."""

from __future__ import annotations

import pytest

from lxfs.errors import InvalidArgument
from lxfs.names import check_line, check_name

BAD_EVERYWHERE = ["", ".hidden", "a/b", "a b", "tab\tx", "new\nline", "nul\0", "bidi\u202e",
                  "zw\u200dj", "bell\x07", "x" * 300]


@pytest.mark.parametrize("kind", ["instance", "snapshot", "profile", "alias", "pool",
                                  "volume", "device", "project"])
@pytest.mark.parametrize("name", BAD_EVERYWHERE)
def test_refused_for_every_kind(kind, name):
    with pytest.raises(InvalidArgument, match=f"invalid {kind} name"):
        check_name(kind, name)


@pytest.mark.parametrize("kind,name", [
    ("instance", "c1"), ("instance", "web-01"), ("snapshot", "snap0"), ("snapshot", "é-ok"),
    ("profile", "my_profile.v2"), ("alias", "debian/12".replace("/", "-")),
    ("pool", "default"), ("pool", "fast.ssd"), ("volume", "v1"), ("device", "eth0"),
    ("project", "client-website"),
])
def test_accepted(kind, name):
    check_name(kind, name)


@pytest.mark.parametrize("kind,name", [
    ("instance", "1abc"), ("instance", "a_b"), ("instance", "end-"), ("instance", "x" * 64),
    ("alias", "remote:name"), ("pool", "-x"), ("pool", "x."), ("volume", "a:b"),
])
def test_kind_rules(kind, name):
    with pytest.raises(InvalidArgument):
        check_name(kind, name)


def test_line_values():
    check_line("environment.X", "a value\twith a tab")
    for value in ("two\nlines", "cr\r", "esc\x1b[31m", "\u2028"):
        with pytest.raises(InvalidArgument, match="control character"):
            check_line("environment.X", value)
