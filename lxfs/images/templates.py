"""Image templates: the pongo2 subset LXD images use, and rendering them into a rootfs.

:func:`render_templates` applies the templates of an unpacked image whose ``when`` list names
the trigger (create, copy, start); files are written inside the rootfs as if it were "/"
(:func:`_open_dir_in_root`), so a container's symlinks never lead to host files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Required, TypedDict

from lxfs.images.format import ImageError, _parse_metadata, _read_no_symlinks

log = logging.getLogger(__name__)


class TemplateContext(TypedDict, total=False):
    """The instance facts :func:`render_templates` exposes to templates.

    Only ``name`` is required. ``config`` is the instance's expanded configuration
    (``user.*``, ``limits.*``...), ``devices`` its expanded devices (name -> key -> value).
    """

    name: Required[str]
    architecture: str
    privileged: bool
    ephemeral: bool
    config: Mapping[str, str]
    devices: Mapping[str, Mapping[str, str]]


class _TemplateSyntaxError(Exception):
    pass


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<num>\d+(?:\.\d+)?)
      | (?P<op>==|!=|<>|<=|>=|&&|\|\||[<>!().,:|\[\]])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m or m.end() == pos:
            raise _TemplateSyntaxError(f"cannot parse {expr[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


_UNDEFINED = None


def _to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value != ""
    return bool(value)


def _unescape(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _string_format(fmt: str, value: Any) -> str:
    """``|stringformat``: one printf conversion, with a width/precision of at most 4 digits
    (a template must not make the daemon build gigabyte strings)."""
    if re.search(r"\d{5}", fmt):
        raise _TemplateSyntaxError(f"stringformat {fmt!r}: width too large")
    try:
        return fmt % (value,)
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise _TemplateSyntaxError(f"stringformat {fmt!r}: {e}") from None


_FILTERS: dict[str, Callable[..., Any]] = {
    "default": lambda v, d="": v if _truthy(v) else d,
    "lower": lambda v: _to_text(v).lower(),
    "upper": lambda v: _to_text(v).upper(),
    "capfirst": lambda v: _to_text(v)[:1].upper() + _to_text(v)[1:],
    "title": lambda v: _to_text(v).title(),
    "trim": lambda v: _to_text(v).strip(),
    "length": lambda v: len(v) if v is not None else 0,
    "safe": lambda v: v,
    "escape": lambda v: v,
    "stringformat": lambda v, fmt="%s": _string_format(_to_text(fmt), v),
}


class _Expr:
    """Recursive-descent evaluator for the pongo2 expression subset (see render_templates)."""

    def __init__(self, tokens: list[tuple[str, str]], ctx: Mapping[str, Any]) -> None:
        self.tokens, self.pos, self.ctx = tokens, 0, ctx

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise _TemplateSyntaxError(f"expected {value or 'more'}, got {tok}")
        self.pos += 1
        return tok

    def accept(self, *values: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok[0] in ("op", "name") and tok[1] in values:
            self.pos += 1
            return tok[1]
        return None

    def evaluate(self) -> Any:
        value = self.or_expr()
        if self.peek() is not None:
            raise _TemplateSyntaxError(f"unexpected {self.peek()}")
        return value

    def or_expr(self) -> Any:
        value = self.and_expr()
        while self.accept("or", "||"):
            right = self.and_expr()
            value = value if _truthy(value) else right
        return value

    def and_expr(self) -> Any:
        value = self.not_expr()
        while self.accept("and", "&&"):
            right = self.not_expr()
            value = right if _truthy(value) else value
        return value

    def not_expr(self) -> Any:
        if self.accept("not", "!"):
            return not _truthy(self.not_expr())
        return self.comparison()

    def comparison(self) -> Any:
        left = self.filtered()
        op = self.accept("==", "!=", "<>", "<", ">", "<=", ">=", "in")
        if op is None:
            return left
        right = self.filtered()
        if op == "in":
            return right is not None and left in right
        if op in ("==", "!=", "<>"):
            equal = (
                _to_text(left) == _to_text(right)
                if type(left) is not type(right)
                else (left == right)
            )
            return equal if op == "==" else not equal
        try:
            a, b = float(left), float(right)
        except (TypeError, ValueError):
            a, b = _to_text(left), _to_text(right)  # type: ignore[assignment]
        return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]

    def filtered(self) -> Any:
        value = self.atom()
        while self.accept("|"):
            _, fname = self.take()
            if fname not in _FILTERS:
                raise _TemplateSyntaxError(f"unsupported filter {fname!r}")
            args = [self.atom()] if self.accept(":") else []
            value = _FILTERS[fname](value, *args)
        return value

    def atom(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return _unescape(text)
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "op" and text == "(":
            value = self.or_expr()
            self.take(")")
            return value
        if kind != "name":
            raise _TemplateSyntaxError(f"unexpected {text!r}")
        if text in ("true", "True"):
            return True
        if text in ("false", "False"):
            return False
        if text in ("nil", "none", "None"):
            return None
        if self.accept("("):
            args: list[Any] = []
            if not self.accept(")"):
                args.append(self.or_expr())
                while self.accept(","):
                    args.append(self.or_expr())
                self.take(")")
            func = self.ctx.get(text)
            if not callable(func):
                raise _TemplateSyntaxError(f"unsupported function {text!r}")
            return func(*args)
        value = self.ctx.get(text, _UNDEFINED)
        while True:
            if self.accept("."):
                _, key = self.take()
                value = _lookup(value, key)
            elif self.accept("["):
                key = self.or_expr()
                self.take("]")
                value = _lookup(value, key)
            else:
                return value


def _lookup(value: Any, key: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(key if isinstance(key, str) else _to_text(key))
    if isinstance(value, (list, tuple, str)) and isinstance(key, int):
        return value[key] if -len(value) <= key < len(value) else None
    return None


def _eval(expr: str, ctx: Mapping[str, Any]) -> Any:
    try:
        return _Expr(_tokenize(expr), ctx).evaluate()
    except RecursionError:
        raise _TemplateSyntaxError("expression nested too deeply") from None


_TAG_RE = re.compile(r"\{\{(?P<var>.*?)\}\}|\{%(?P<tag>.*?)%\}|\{#.*?#\}", re.DOTALL)


def _lex_template(text: str) -> list[tuple[str, str, str]]:
    """Split a template into ("text", s, raw), ("var", expr, raw) and ("tag", body, raw)."""
    parts: list[tuple[str, str, str]] = []
    pos = 0
    trim_next = False
    for m in _TAG_RE.finditer(text):
        chunk = text[pos : m.start()]
        raw = m.group(0)
        inner = m.group("var") if m.group("var") is not None else m.group("tag")
        if inner is not None and inner.startswith("-"):
            chunk = chunk.rstrip()
        if trim_next:
            chunk = chunk.lstrip()
        parts.append(("text", chunk, chunk))
        trim_next = inner is not None and inner.endswith("-")
        if inner is not None:
            inner = inner.strip("-").strip()
            parts.append(("var" if m.group("var") is not None else "tag", inner, raw))
        pos = m.end()
    tail = text[pos:]
    parts.append(("text", tail.lstrip() if trim_next else tail, tail))
    return parts


def _render_parts(parts: list[tuple[str, str, str]], ctx: Mapping[str, Any], where: str) -> str:
    """Render lexed parts; if/elif/else/endif are evaluated, unknown syntax is kept verbatim."""
    out: list[str] = []
    # Each frame: [any branch taken so far, this branch active, parent active, verbatim if-block]
    stack: list[list[bool]] = []

    def active() -> bool:
        return not stack or stack[-1][1]

    for kind, body, raw in parts:
        if kind == "text":
            if active():
                out.append(body)
            continue
        if kind == "var":
            if not active():
                continue
            try:
                out.append(_to_text(_eval(body, ctx)))
            except _TemplateSyntaxError as e:
                log.warning("template %s: %s; kept verbatim: %s", where, e, raw)
                out.append(raw)
            continue
        word, _, rest = body.partition(" ")
        if word == "if":
            parent = active()
            try:
                cond = parent and _truthy(_eval(rest, ctx))
                stack.append([cond, cond, parent, False])
            except _TemplateSyntaxError as e:
                log.warning("template %s: %s; kept verbatim: %s", where, e, raw)
                stack.append([True, parent, parent, True])
                if parent:
                    out.append(raw)
        elif word in ("elif", "else") and stack:
            frame = stack[-1]
            if frame[3]:
                if frame[2]:
                    out.append(raw)
                continue
            if frame[0] or not frame[2]:
                frame[1] = False
            elif word == "else":
                frame[0] = frame[1] = True
            else:
                try:
                    cond = _truthy(_eval(rest, ctx))
                except _TemplateSyntaxError as e:
                    raise ImageError(f"template {where}: {e} in {raw}") from None
                frame[0] = frame[1] = cond
        elif word == "endif" and stack:
            frame = stack.pop()
            if frame[3] and frame[2]:
                out.append(raw)
        else:
            if word not in ("autoescape", "endautoescape"):
                log.warning("template %s: unsupported tag kept verbatim: %s", where, raw)
                if active():
                    out.append(raw)
    if stack:
        raise ImageError(f"template {where}: {{% if %}} without {{% endif %}}")
    return "".join(out)


def render_template_text(text: str, ctx: Mapping[str, Any], where: str = "<string>") -> str:
    """Render one template string with a ready pongo2-style context (see render_templates)."""
    return _render_parts(_lex_template(text), ctx, where)


def _template_context(
    context: TemplateContext, trigger: str, path: str, properties: Mapping[str, str]
) -> dict[str, Any]:
    config = dict(context.get("config") or {})
    instance = {
        "name": context["name"],
        "architecture": context.get("architecture", ""),
        "privileged": bool(context.get("privileged", False)),
        "ephemeral": bool(context.get("ephemeral", False)),
    }

    def config_get(key: Any, default: Any = None) -> Any:
        value = config.get(_to_text(key))
        return default if value is None else value.rstrip("\r\n")

    return {
        "trigger": trigger,
        "path": path,
        "container": instance,
        "instance": instance,
        "config": config,
        "devices": {k: dict(v) for k, v in (context.get("devices") or {}).items()},
        "properties": dict(properties),
        "config_get": config_get,
    }


def _open_dir_in_root(root: Path, parts: list[str], uid: int, gid: int) -> int:
    """Open the directory ``parts`` inside ``root`` as if ``root`` were "/" (chroot semantics).

    Symlinks are resolved against ``root`` (an absolute link restarts there, ``..`` stops at
    it), so a container's symlinks can never lead outside its rootfs. Missing directories are
    created (0755, owned uid:gid). Returns an fd the caller closes.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    stack = [os.open(root, flags)]
    pending = list(parts)
    hops = 0
    try:
        while pending:
            comp = pending.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            cur = stack[-1]
            try:
                link = os.readlink(comp, dir_fd=cur)
            except FileNotFoundError:
                os.mkdir(comp, 0o755, dir_fd=cur)
                os.chown(comp, uid, gid, dir_fd=cur, follow_symlinks=False)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: exists and is not a symlink
                    raise
            else:
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, "too many symlinks", comp)
                if link.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending = link.split("/") + pending
                continue
            stack.append(os.open(comp, flags, dir_fd=cur))
        fd = stack.pop()
        return fd
    finally:
        for fd in stack:
            os.close(fd)


def _write_in_root(
    root: Path, target: str, content: bytes, create_only: bool, uid: int, gid: int
) -> bool:
    """Write ``content`` to ``target`` (a path inside the rootfs) by write-then-rename.

    Returns False when nothing was written (create_only and the file exists, or the target is
    a directory or a special file).
    """
    parts = [p for p in target.split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "..":
        raise ImageError(f"template target {target!r} is not a file path")
    dfd = _open_dir_in_root(root, parts[:-1], uid, gid)
    name = parts[-1]
    try:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if create_only:
                return False
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                log.warning("template target %s is not a regular file; left alone", target)
                return False
        mode, owner = 0o644, (uid, gid)
        if st is not None and stat.S_ISREG(st.st_mode):
            mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
        tmp = f".{name}.lxfs-{secrets.token_hex(4)}"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                os.fchown(f.fileno(), *owner)
                os.fchmod(f.fileno(), mode)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        return True
    finally:
        os.close(dfd)


def render_templates(volume_dir: Path | str, trigger: str, context: TemplateContext) -> None:
    """Apply the image templates of ``volume_dir`` whose ``when`` list contains ``trigger``.

    ``volume_dir`` holds ``metadata.yaml``, ``templates/`` and ``rootfs/`` (as written by
    :func:`unpack_image`). ``trigger`` is "create", "copy" or "start". ``context`` is a
    :class:`TemplateContext`, e.g. ``{"name": "c1", "config": {"user.foo": "bar"}}``.

    Each matching ``templates/NAME.tpl`` is rendered into ``rootfs/PATH`` through a temporary
    file and a rename. An existing file keeps its mode and owner; a new one gets 0644 and the
    owner of ``rootfs/`` itself (so shifted unprivileged rootfs stay consistent), and so do
    missing parent directories (0755). ``create_only`` templates never replace an existing
    path. Paths are resolved inside the rootfs as in a chroot: symlinks cannot lead out of it.

    Template language: the pongo2 subset LXD images use.

    - ``{{ expr }}`` prints a value; undefined values print as "".
    - Values: ``container.name``/``instance.name`` (also ``.architecture``, ``.privileged``,
      ``.ephemeral``), ``properties.KEY`` (the template's properties), ``config.KEY`` or
      ``config["key.with.dots"]``, ``devices.NAME.KEY``, ``trigger``, ``path``,
      ``config_get("key", "default")`` (the instance config value, trailing newlines removed,
      or the default), string/number literals, true/false/none.
    - Operators: ``==``, ``!=``, ``<``, ``>``, ``<=``, ``>=``, ``in``, ``and``/``&&``,
      ``or``/``||``, ``not``/``!``, parentheses; filters ``|default:"x"``, ``|lower``,
      ``|upper``, ``|capfirst``, ``|title``, ``|trim``, ``|length``, ``|safe``, ``|escape``
      (no HTML escaping at all: LXD renders with autoescape off).
    - Tags: ``{% if %}``/``{% elif %}``/``{% else %}``/``{% endif %}`` (nestable),
      ``{% autoescape %}`` (ignored), ``{# comments #}``, and ``{%-``/``-%}`` trimming.
    - Anything else (``{% for %}``, ``{% set %}``, an expression that cannot be parsed) is
      copied to the output verbatim and logged; an ``{% if %}`` whose condition cannot be
      parsed is kept with both branches. An unparseable ``{% elif %}`` condition or a missing
      ``{% endif %}`` raises :class:`ImageError`.
    """
    volume_dir = Path(volume_dir)
    md = _parse_metadata(_read_no_symlinks(volume_dir, ["metadata.yaml"]))
    rootfs = volume_dir / "rootfs"
    root_st = os.stat(rootfs, follow_symlinks=False)
    if not stat.S_ISDIR(root_st.st_mode):
        raise ImageError(f"{rootfs} is not a directory")
    for target in sorted(md["templates"]):
        spec = md["templates"][target]
        if trigger not in spec["when"]:
            continue
        try:
            data = _read_no_symlinks(volume_dir, ["templates", *spec["template"].split("/")])
        except FileNotFoundError:
            raise ImageError(f"template {spec['template']} for {target} is missing") from None
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                raise
            raise ImageError(
                f"template {spec['template']} for {target} is not a regular file"
            ) from None
        text = data.decode("utf-8", errors="surrogateescape")
        ctx = _template_context(context, trigger, target, spec["properties"])
        rendered = render_template_text(text, ctx, spec["template"])
        _write_in_root(
            rootfs,
            target,
            rendered.encode("utf-8", errors="surrogateescape"),
            spec["create_only"],
            root_st.st_uid,
            root_st.st_gid,
        )
