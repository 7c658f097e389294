"""Remotes: the servers the ``lxfs`` command talks to, stored per user as ``lxc`` stores them.

``$LXFS_CONF/config.yml`` (default ``~/.config/lxfs/config.yml``) has the shape of ``lxc``'s
``config.yml``::

    default-remote: local
    remotes:
      local: {addr: "unix://", protocol: lxd, public: false}
      host2: {addr: "https://10.0.0.2:8443", protocol: lxd, auth_type: tls, public: false}
      images: {addr: "https://images.linuxcontainers.org", protocol: simplestreams, public: true}

``local`` is this host's lxfs, through its mount. A remote's server certificate, pinned when it
was added, is ``$LXFS_CONF/servercerts/NAME.crt``; the client's own certificate and key
(``client.crt``, ``client.key``) are made on first use. ``lxfs remote ...`` manages them.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from lxfs.cli.base import CLIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

LOCAL = "local"
PROTOCOLS = ("lxd", "simplestreams")
#: the remotes every configuration has; they cannot be removed or renamed (``lxc``'s too)
STATIC_REMOTES = ("local",)
DEFAULT_IMAGE_SERVERS = {
    "images": "https://images.linuxcontainers.org",
    "ubuntu": "https://cloud-images.ubuntu.com/releases",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def config_dir() -> Path:
    """``$LXFS_CONF``, or ``~/.config/lxfs``."""
    env = os.environ.get("LXFS_CONF")
    if env:
        return Path(env)
    return Path(os.path.expanduser("~")) / ".config" / "lxfs"


class Remote:
    """One server: ``addr`` (``https://HOST:PORT``, or ``unix://`` for ``local``),
    ``protocol`` (``lxd`` or ``simplestreams``), ``public`` (no client certificate needed),
    ``auth_type`` (``tls``)."""

    def __init__(self, name: str, addr: str, protocol: str = "lxd", public: bool = False,
                 auth_type: str = "tls", project: str = "") -> None:
        self.name = name
        #: the current project on this remote (``lxfs project switch``), "" for default
        self.project = project
        self.addr = addr
        self.protocol = protocol
        self.public = public
        self.auth_type = auth_type

    @property
    def is_local(self) -> bool:
        return self.name == LOCAL

    def as_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"addr": self.addr, "protocol": self.protocol,
                               "public": self.public}
        if self.protocol == "lxd" and not self.is_local:
            out["auth_type"] = self.auth_type
        if self.project and self.project != "default":
            out["project"] = self.project
        return out


class RemotesConfig:
    """The user's remotes and the default one."""

    def __init__(self, remotes: dict[str, Remote], default_remote: str = LOCAL) -> None:
        self.remotes = remotes
        self.default_remote = default_remote

    def get(self, name: str) -> Remote:
        try:
            return self.remotes[name]
        except KeyError:
            raise CLIError(f"Remote {name} doesn't exist (see `lxfs remote list`)") from None

    def save(self) -> None:
        """Write ``config.yml`` atomically (mode 0600, as ``lxc`` does)."""
        import yaml  # noqa: PLC0415

        directory = config_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        document = {
            "default-remote": self.default_remote,
            "remotes": {name: r.as_yaml() for name, r in sorted(self.remotes.items())},
            "aliases": {},
        }
        write_private(directory / "config.yml", yaml.safe_dump(document, sort_keys=False))


def write_private(path: Path, text: str | bytes) -> None:
    """Write a file of the user's configuration atomically, mode 0600."""
    from lxfs.atomic import write_atomic  # noqa: PLC0415

    write_atomic(path, text, 0o600)


def default_remotes() -> dict[str, Remote]:
    remotes = {LOCAL: Remote(LOCAL, "unix://", "lxd", False)}
    for name, addr in DEFAULT_IMAGE_SERVERS.items():
        remotes[name] = Remote(name, addr, "simplestreams", True)
    return remotes


def load_config() -> RemotesConfig:
    """The user's configuration (the defaults when there is none)."""
    path = config_dir() / "config.yml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RemotesConfig(default_remotes())
    import yaml  # noqa: PLC0415

    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CLIError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise CLIError(f"{path}: expected a mapping")
    remotes: dict[str, Remote] = {}
    for name, entry in (document.get("remotes") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("addr"), str):
            raise CLIError(f"{path}: remote {name!r} needs an addr")
        remotes[str(name)] = Remote(str(name), entry["addr"], str(entry.get("protocol") or "lxd"),
                                    bool(entry.get("public", False)),
                                    str(entry.get("auth_type") or "tls"),
                                    str(entry.get("project") or ""))
    remotes.setdefault(LOCAL, Remote(LOCAL, "unix://", "lxd", False))
    default = str(document.get("default-remote") or LOCAL)
    if default not in remotes:
        default = LOCAL
    return RemotesConfig(remotes, default)


def split_remote(ref: str, config: RemotesConfig) -> tuple[str, str]:
    """``"host2:c1"`` -> ``("host2", "c1")``; without a known ``REMOTE:`` prefix, the default
    remote. ``"host2:"`` -> ``("host2", "")``."""
    name, sep, rest = ref.partition(":")
    if sep and name in config.remotes:
        return name, rest
    if sep and _NAME.match(name) and "/" not in name:
        raise CLIError(f"Remote {name} doesn't exist (see `lxfs remote list`)")
    return config.default_remote, ref


def server_cert_path(name: str) -> Path | None:
    """The pinned certificate of remote ``name``, if one was kept."""
    path = config_dir() / "servercerts" / f"{name}.crt"
    return path if path.exists() else None


def client_cert_paths() -> tuple[Path, Path]:
    """The client's certificate and key, made on first use (EC P-384, self-signed, as
    ``lxc`` makes them), by the same code that makes the server's."""
    directory = config_dir()
    cert, key = directory / "client.crt", directory / "client.key"
    if not (cert.exists() and key.exists()):
        import socket  # noqa: PLC0415
        import subprocess  # noqa: PLC0415

        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        user = os.environ.get("USER") or str(os.getuid())
        name = f"{user}@{socket.gethostname()}"
        done = subprocess.run([sys.executable, "-m", "lxfs_plugins.rest.certs", str(cert),
                               str(key), name], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise CLIError(f"cannot make the client certificate: {done.stderr.strip()}")
    return cert, key


# -- lxfs remote ... ----------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not _NAME.match(name) or ":" in name:
        raise CLIError(f"Invalid remote name {name!r}: letters, digits, '-', '_' and '.'")
    return name


def normalize_addr(addr: str, protocol: str) -> str:
    """``HOST``, ``HOST:PORT`` or a URL -> ``https://HOST:PORT`` (port 8443 for lxd)."""
    if addr.startswith("unix:"):
        raise CLIError("unix sockets: this host's lxfs is the remote `local` (the mount)")
    if "://" not in addr:
        addr = "https://" + addr
    scheme, _, rest = addr.partition("://")
    if scheme not in ("https", "http"):
        raise CLIError(f"Invalid URL scheme {scheme!r} in {addr!r}")
    if scheme == "http" and protocol == "lxd":
        raise CLIError("lxd remotes are served over https")
    host = rest.split("/", 1)[0]
    if protocol == "lxd" and not re.search(r":\d+$", host) and not host.endswith("]:"):
        if host.startswith("[") and host.endswith("]") or ":" not in host:
            addr = f"{scheme}://{host}:8443" + rest[len(host):]
    return addr.rstrip("/")


def cmd_remote_list(args: argparse.Namespace) -> int:
    from lxfs.cli.output import emit  # noqa: PLC0415

    config = load_config()
    rows = []
    data = {}
    for name in sorted(config.remotes):
        r = config.remotes[name]
        label = f"{name} (current)" if name == config.default_remote else name
        auth = "file access" if r.is_local else ("none" if r.protocol == "simplestreams"
                                                 else r.auth_type)
        rows.append([label, "the lxfs mount" if r.is_local else r.addr, r.protocol, auth,
                     "YES" if r.public else "NO",
                     "YES" if name in STATIC_REMOTES else "NO"])
        data[name] = r.as_yaml()
    emit(args.format, ["NAME", "URL", "PROTOCOL", "AUTH TYPE", "PUBLIC", "STATIC"], rows, data)
    return 0


def cmd_remote_add(args: argparse.Namespace) -> int:
    from lxfs.cli import rest_client  # noqa: PLC0415

    config = load_config()
    name = check_name(args.name)
    if name in config.remotes:
        raise CLIError(f"Remote {name} exists as <{config.remotes[name].addr}>")
    token = rest_client.decode_token(args.url)
    protocol = args.protocol
    if token is not None:
        addrs = [normalize_addr(a, "lxd") for a in token["addresses"]]
        remote = rest_client.join_with_token(name, addrs, token)
    else:
        addr = normalize_addr(args.url, protocol)
        remote = Remote(name, addr, protocol, args.public or protocol == "simplestreams",
                        args.auth_type)
        if protocol == "simplestreams":
            rest_client.check_simplestreams(remote, args.accept_certificate)
        else:
            rest_client.add_lxd_remote(remote, accept_certificate=args.accept_certificate,
                                       password=args.password)
    config.remotes[name] = remote
    config.save()
    return 0


def _named(config: RemotesConfig, name: str, changing: bool = True) -> Remote:
    remote = config.get(name)
    if changing and name in STATIC_REMOTES:
        raise CLIError(f"Remote {name} is static and cannot be modified")
    return remote


def cmd_remote_remove(args: argparse.Namespace) -> int:
    config = load_config()
    _named(config, args.name)
    if config.default_remote == args.name:
        raise CLIError("Can't remove the default remote")
    del config.remotes[args.name]
    config.save()
    cert = server_cert_path(args.name)
    if cert is not None:
        cert.unlink()
    return 0


def cmd_remote_rename(args: argparse.Namespace) -> int:
    config = load_config()
    remote = _named(config, args.old)
    new = check_name(args.new)
    if new in config.remotes:
        raise CLIError(f"Remote {new} already exists")
    del config.remotes[args.old]
    remote.name = new
    config.remotes[new] = remote
    if config.default_remote == args.old:
        config.default_remote = new
    config.save()
    cert = server_cert_path(args.old)
    if cert is not None:
        cert.rename(cert.with_name(f"{new}.crt"))
    return 0


def cmd_remote_set_url(args: argparse.Namespace) -> int:
    config = load_config()
    remote = _named(config, args.name)
    remote.addr = normalize_addr(args.url, remote.protocol)
    config.save()
    return 0


def cmd_remote_switch(args: argparse.Namespace) -> int:
    config = load_config()
    remote = config.get(args.name)
    if remote.protocol == "simplestreams":
        raise CLIError(f"Remote {args.name} is an image server (protocol simplestreams): it "
                       "cannot be the default remote")
    config.default_remote = args.name
    config.save()
    return 0


def cmd_remote_get_default(_args: argparse.Namespace) -> int:
    print(load_config().default_remote)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``remote``."""
    remote = sub.add_parser("remote", help="Manage the list of remote servers")
    rsub = remote.add_subparsers(dest="remote_command", metavar="COMMAND")
    p = rsub.add_parser("list", aliases=["ls"], help="List the remotes")
    p.add_argument("--format", "-f", default="table",
                   choices=["table", "csv", "json", "yaml", "compact"])
    p.set_defaults(func=cmd_remote_list)
    p = rsub.add_parser("add", help="Add a remote: NAME URL (or NAME TOKEN)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("url", metavar="URL|TOKEN")
    p.add_argument("--accept-certificate", action="store_true",
                   help="trust the server's certificate without asking")
    p.add_argument("--password", default=None, help="the server's trust password")
    p.add_argument("--protocol", default="lxd", choices=PROTOCOLS)
    p.add_argument("--public", action="store_true", help="a public image server (no trust)")
    p.add_argument("--auth-type", default="tls", choices=["tls"])
    p.set_defaults(func=cmd_remote_add)
    p = rsub.add_parser("remove", aliases=["rm"], help="Remove a remote")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_remote_remove)
    p = rsub.add_parser("rename", aliases=["mv"], help="Rename a remote: OLD NEW")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW")
    p.set_defaults(func=cmd_remote_rename)
    p = rsub.add_parser("set-url", help="Set a remote's URL")
    p.add_argument("name", metavar="NAME")
    p.add_argument("url", metavar="URL")
    p.set_defaults(func=cmd_remote_set_url)
    p = rsub.add_parser("switch", help="Set the default remote")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_remote_switch)
    p = rsub.add_parser("get-default", help="Show the default remote")
    p.set_defaults(func=cmd_remote_get_default)
