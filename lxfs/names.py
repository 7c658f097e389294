"""One grammar for the names users give (instances, snapshots, profiles, aliases, pools,
volumes, devices, projects), LXD's rules made strict.

Every name is 1 to N characters of printable text: no control characters, no Unicode format
characters (bidirectional overrides, zero-width joiners...), no white space, no ``/``, and it
does not start with a dot. The last rule keeps a namespace for lxfs's own staging names
(``.NAME.tmp``...), which no user name can then collide with. Kinds add their own rules:
instance names are host names (LXD: letters, digits and ``-``, starting with a letter), pool
and volume names are file-system friendly, alias names cannot hold ``:`` (it separates a
remote from an alias in the CLI).
"""

from __future__ import annotations

import re
import unicodedata

from lxfs.errors import InvalidArgument

_INSTANCE = re.compile(r"[a-zA-Z][a-zA-Z0-9-]{0,62}")
_POOL = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
#: kind → (maximum length, extra rule as a regex or None, what the rule says)
_KINDS: dict[str, tuple[int, re.Pattern[str] | None, str]] = {
    "instance": (63, _INSTANCE, "1-63 letters, digits and '-', starting with a letter and "
                 "not ending with '-'"),
    "snapshot": (63, None, "1-63 characters"),
    "profile": (63, None, "1-63 characters"),
    "alias": (255, None, "1-255 characters, no ':'"),
    "pool": (63, _POOL, "1-63 letters, digits, '-', '_' and '.', starting with a letter or "
             "digit"),
    "volume": (63, _POOL, "1-63 letters, digits, '-', '_' and '.', starting with a letter "
               "or digit"),
    "device": (64, None, "1-64 characters"),
    "project": (63, _POOL, "1-63 letters, digits, '-', '_' and '.', starting with a letter "
                "or digit"),
}


def forbidden_character(text: str) -> str | None:
    """The first character no name (and no single-line value) may hold, else None: control
    and format characters (bidirectional overrides among them), line and paragraph
    separators."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            return char
    return None


def check_name(kind: str, name: str) -> None:
    """Raise ``InvalidArgument`` unless ``name`` is a valid name of ``kind``."""
    limit, rule, says = _KINDS[kind]
    what = f"invalid {kind} name {name!r}"
    bad = forbidden_character(name)
    if bad is not None:
        raise InvalidArgument(f"{what}: it holds the control or format character "
                              f"U+{ord(bad):04X}")
    if not name or len(name) > limit:
        raise InvalidArgument(f"{what}: use {says}")
    if name.startswith("."):
        raise InvalidArgument(f"{what}: names cannot start with '.'")
    if "/" in name or any(c.isspace() for c in name):
        raise InvalidArgument(f"{what}: no '/' and no white space")
    if kind == "alias" and ":" in name:
        raise InvalidArgument(f"{what}: no ':' (it separates a remote from an alias)")
    if rule is not None and (not rule.fullmatch(name) or name.endswith(("-", "."))):
        raise InvalidArgument(f"{what}: use {says}")


def check_line(what: str, value: str) -> None:
    """A value that ends up on one line of a configuration file (LXC's, dnsmasq's): no
    newline or other control character, so that nothing can be injected after it."""
    bad = forbidden_character(value.replace("\t", " "))
    if bad is not None:
        raise InvalidArgument(f"{what}: the value holds the control character U+{ord(bad):04X} "
                              "(a single line of text is expected)")


def escape_controls(text: str) -> str:
    """``text`` on one line: control and format characters (newlines, escape sequences,
    bidirectional overrides) written as Python escapes (``\\n``, ``\\x1b``, ``\\u202e``),
    for logs and ``error`` files."""
    if forbidden_character(text) is None:
        return text
    return "".join(repr(c)[1:-1] if forbidden_character(c) is not None else c for c in text)
