"""Certificates of the HTTPS listener and its clients: fingerprints and PEM/DER (plain
base64, no import cost), and what needs ``cryptography`` (parsing a client's certificate,
making the server's) imported only when it runs: the daemon's memory stays as it was for
hosts that never enable HTTPS. ``python -m lxfs_plugins.rest.certs CERT KEY NAME`` makes the
server certificate in a process of its own (the daemon does so at its first start)."""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from pathlib import Path

from lxfs.api import write_atomic

#: a server certificate lives this long (LXD: 10 years)
CERT_DAYS = 3650
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


def fingerprint(der: bytes) -> str:
    """A certificate's fingerprint as LXD writes it: sha256 of its DER, in hex."""
    return hashlib.sha256(der).hexdigest()


def pem_to_der(pem: str | bytes) -> bytes:
    """The DER of the first certificate in a PEM text (ValueError if there is none)."""
    data = pem.encode() if isinstance(pem, str) else pem
    match = _PEM.search(data)
    if match is None:
        raise ValueError("no PEM certificate")
    return base64.b64decode(b"".join(match.group(1).split()), validate=True)


def der_to_pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def certificate_der(text: str | bytes) -> bytes:
    """A client's certificate (PEM, or base64 DER as ``POST /1.0/certificates`` sends it),
    checked to be an X.509 certificate; its DER. ValueError if it is not one."""
    from cryptography import x509  # noqa: PLC0415 - only when a certificate is added

    data = text.encode() if isinstance(text, str) else text
    try:
        der = pem_to_der(data)
    except ValueError:
        try:
            der = base64.b64decode(b"".join(data.split()), validate=True)
        except ValueError:
            raise ValueError("not a certificate") from None
    x509.load_der_x509_certificate(der)  # ValueError when it is not one
    return der


def certificate_validity(der: bytes) -> tuple[float, float]:
    """A certificate's notBefore and notAfter, in seconds since the epoch."""
    from cryptography import x509  # noqa: PLC0415

    cert = x509.load_der_x509_certificate(der)
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def common_name(der: bytes) -> str:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def make_certificate(cert_path: Path, key_path: Path, common_name: str) -> None:
    """A self-signed EC P-384 certificate and its key (mode 0600), written atomically, as
    LXD makes ``server.crt``/``server.key`` at its first start."""
    import datetime  # noqa: PLC0415
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lxfs"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(socket.gethostname()),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                         x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    write_atomic(key_path, key_pem, 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


if __name__ == "__main__":
    make_certificate(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
