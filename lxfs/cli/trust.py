"""``lxfs config trust ...``: the clients a server trusts (its HTTPS trust store) and join
tokens, on this host (through its REST socket) or on a remote (``lxfs config trust list
host2:``), as ``lxc config trust`` manages them."""

from __future__ import annotations

import base64
import json
from typing import Any

from lxfs.cli.base import CLIError
from lxfs.cli.remotes import load_config, split_remote


def _server(ref: str | None) -> tuple[Any, str]:
    """The server a trust command acts on (``REMOTE:``, or the default remote) and the rest
    of the argument."""
    from lxfs.cli.rest_client import Server  # noqa: PLC0415

    config = load_config()
    remote, rest = split_remote(ref or "", config)
    remote_obj = config.get(remote)
    if remote_obj.protocol != "lxd":
        raise CLIError(f"Remote {remote} is an image server: it has no trust store")
    return Server(remote_obj), rest


def cmd_list(args: Any) -> int:
    from lxfs.cli.output import emit  # noqa: PLC0415

    server, _ = _server(args.remote)
    certs = server.get("/1.0/certificates?recursion=1")
    rows = [[c.get("type", ""), c.get("name", ""), c["fingerprint"][:12],
             "YES" if c.get("restricted") else "NO", ",".join(c.get("projects") or [])]
            for c in sorted(certs, key=lambda c: (c.get("name", ""), c["fingerprint"]))]
    emit(args.format, ["TYPE", "NAME", "FINGERPRINT", "RESTRICTED", "PROJECTS"], rows, certs)
    return 0


def token_string(metadata: dict[str, Any]) -> str:
    """A join token as ``lxc`` prints it: base64 of its JSON."""
    token = {"client_name": metadata.get("request", {}).get("name", ""),
             "fingerprint": metadata["fingerprint"], "addresses": metadata["addresses"],
             "secret": metadata["secret"], "expires_at": metadata.get("expiresAt") or
             "0001-01-01T00:00:00Z"}
    return base64.b64encode(json.dumps(token, separators=(",", ":")).encode()).decode()


def cmd_add(args: Any) -> int:
    """``add [REMOTE:] [CERT] [--name N] [--restricted] [--projects P]``: trust a certificate
    file, or without one print a join token for ``lxfs remote add NAME TOKEN``."""
    remote_ref, cert = args.remote, args.cert
    if remote_ref and not remote_ref.endswith(":") and cert is None:
        remote_ref, cert = None, remote_ref  # `add FILE`
    server, _ = _server(remote_ref)
    body: dict[str, Any] = {"type": "client", "restricted": bool(args.restricted),
                            "projects": [p for p in (args.projects or "").split(",") if p]}
    if args.name:
        body["name"] = args.name
    if cert is None:
        if not args.name:
            raise CLIError("a join token needs a client name: --name NAME")
        document = server.request("POST", "/1.0/certificates", {**body, "token": True})
        metadata = (document.get("metadata") or {}).get("metadata") or {}
        print(f"Client {args.name} certificate add token:")
        print(token_string(metadata))
        return 0
    try:
        with open(cert, encoding="ascii") as f:
            body["certificate"] = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read the certificate {cert}: {exc}") from None
    server.request("POST", "/1.0/certificates", body)
    return 0


def cmd_remove(args: Any) -> int:
    server, fp = _server(args.fingerprint)
    server.request("DELETE", f"/1.0/certificates/{fp}")
    return 0


def _tokens(server: Any) -> list[dict[str, Any]]:
    ops = server.get("/1.0/operations?recursion=1") or {}
    return [op for op in ops.get("running") or [] if op.get("class") == "token"
            and (op.get("metadata") or {}).get("request")]


def cmd_list_tokens(args: Any) -> int:
    from lxfs.cli.output import emit  # noqa: PLC0415

    server, _ = _server(args.remote)
    tokens = _tokens(server)
    rows = [[t["metadata"]["request"].get("name", ""), token_string(t["metadata"]),
             t["metadata"].get("expiresAt", "")] for t in tokens]
    emit(args.format, ["NAME", "TOKEN", "EXPIRES AT"], rows, tokens)
    return 0


def cmd_revoke_token(args: Any) -> int:
    server, name = _server(args.name)
    for token in _tokens(server):
        if token["metadata"]["request"].get("name") == name:
            server.request("DELETE", f"/1.0/operations/{token['id']}")
            return 0
    raise CLIError(f"No pending token for the client {name!r}")


def register_trust(csub: Any) -> None:
    """``config trust ...`` (called by ``lxfs.cli.config.register``)."""
    trust = csub.add_parser("trust", help="Manage the clients a server trusts")
    tsub = trust.add_subparsers(dest="trust_command", metavar="COMMAND")
    tsub.required = True
    formats = ["table", "csv", "json", "yaml", "compact"]
    p = tsub.add_parser("list", aliases=["ls"], help="List trusted clients: [REMOTE:]")
    p.add_argument("remote", metavar="REMOTE:", nargs="?")
    p.add_argument("--format", "-f", default="table", choices=formats)
    p.set_defaults(func=cmd_list)
    p = tsub.add_parser("add", help="Trust a client certificate, or make a join token")
    p.add_argument("remote", metavar="[REMOTE:]", nargs="?")
    p.add_argument("cert", metavar="[CERT]", nargs="?")
    p.add_argument("--name", help="the client's name (needed for a token)")
    p.add_argument("--restricted", action="store_true", help="limited to --projects")
    p.add_argument("--projects", help="projects a restricted client may use (comma-separated)")
    p.set_defaults(func=cmd_add)
    p = tsub.add_parser("remove", aliases=["rm"], help="Stop trusting a client: "
                        "[REMOTE:]FINGERPRINT")
    p.add_argument("fingerprint", metavar="[REMOTE:]FINGERPRINT")
    p.set_defaults(func=cmd_remove)
    p = tsub.add_parser("list-tokens", help="List pending join tokens: [REMOTE:]")
    p.add_argument("remote", metavar="REMOTE:", nargs="?")
    p.add_argument("--format", "-f", default="table", choices=formats)
    p.set_defaults(func=cmd_list_tokens)
    p = tsub.add_parser("revoke-token", help="Revoke a pending join token: [REMOTE:]NAME")
    p.add_argument("name", metavar="[REMOTE:]NAME")
    p.set_defaults(func=cmd_revoke_token)
