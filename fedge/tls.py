"""Certificates for a test bench or a loopback demo: one throw-away CA and a server cert it signed.

The Flower Deployment Engine speaks TLS by default (DESIGN.md section 4): the SuperLink presents a
server certificate and every SuperNode and ``flwr`` CLI checks it against a CA certificate handed
to them out of band; the MQTT broker (mosquitto with TLS) and its agents work the same way. A
production operator brings certificates from their own PKI; this module makes a throw-away CA for
tests and single-machine runs, so that TLS is exercised there too rather than switched off with
``--insecure``. It lives in the kernel because every persona's servers use it, and the kernel is
where fedge keeps its cryptography.

Both keys are P-256 (small, fast, accepted by every TLS stack Flower and mosquitto use), written
with mode 0600 before a byte lands on disk. The server certificate names each host in its subject
alternative names, because TLS clients check SANs, not the common name.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge.atomic import atomic_write_bytes
from fedge.errors import UsageError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "CertPaths",
    "generate_federation_certs",
]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"

# Certificates start a little in the past so that a peer whose clock lags still accepts them.
_BACKDATE = datetime.timedelta(minutes=5)
_MAX_DAYS = 3650
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class CertPaths:
    """Where the four files are: give ``ca_cert`` to clients, the rest stay with the SuperLink."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_directory(cls, directory: str | os.PathLike[str]) -> CertPaths:
        """The standard names inside ``directory`` (nothing is read or written)."""
        folder = Path(directory)
        return cls(
            directory=folder,
            ca_cert=folder / CA_CERT,
            ca_key=folder / CA_KEY,
            server_cert=folder / SERVER_CERT,
            server_key=folder / SERVER_KEY,
        )

    def files(self) -> tuple[Path, Path, Path, Path]:
        return (self.ca_cert, self.ca_key, self.server_cert, self.server_key)


def _general_name(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for a name; anything else is refused."""
    text = host.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if len(text) > 253 or not all(_LABEL.fullmatch(label) for label in text.split(".")):
        raise UsageError(f"hosts: {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(text)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def generate_federation_certs(
    directory: str | os.PathLike[str],
    *,
    hosts: Iterable[str] = ("localhost", "127.0.0.1"),
    days: int = 30,
    overwrite: bool = False,
    ca_name: str = "fedge federation CA",
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
) -> CertPaths:
    """Create ``ca.crt``/``ca.key`` and a ``server.pem``/``server.key`` it signed, for ``hosts``.

    Existing files are never replaced silently (a new CA would lock out every client holding the
    old ``ca.crt``): pass ``overwrite=True`` to rotate on purpose. Keys are written 0600.
    """
    names = [_general_name(host) for host in ((hosts,) if isinstance(hosts, str) else hosts)]
    if not names:
        raise UsageError("hosts: name at least one host name or IP address for the server")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_DAYS:
        raise UsageError(
            f"days: expected a whole number of days from 1 to {_MAX_DAYS}, got {days!r}"
        )
    paths = CertPaths.in_directory(directory)
    if not overwrite:
        existing = [str(path) for path in paths.files() if path.exists()]
        if existing:
            raise UsageError(
                f"{existing[0]}: already exists; pass overwrite=True to replace the certificates"
            )
    now = clock()
    not_before, not_after = now - _BACKDATE, now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    first = names[0].value
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    # Keys first: a certificate on disk without its key would look usable and is not.
    atomic_write_bytes(paths.ca_key, _key_bytes(ca_key), mode=0o600)
    atomic_write_bytes(paths.server_key, _key_bytes(server_key), mode=0o600)
    atomic_write_bytes(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return paths
