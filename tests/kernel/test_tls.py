"""Throw-away TLS certificates (fedge/tls.py): the chain, the names, a real handshake, refusals.

Moved out of the Deployment Engine tests, which use these certificates for the SuperLink.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fedge.errors import UsageError
from fedge.process import LOOPBACK
from fedge.tls import CertPaths, generate_federation_certs

# ---------------------------------------------------------------------------- certificates


def test_certificates_chain_to_the_ca_and_name_the_hosts(tmp_path: Path) -> None:
    paths = generate_federation_certs(tmp_path / "certs", hosts=("localhost", "127.0.0.1", "::1"))
    assert paths == CertPaths.in_directory(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert 30 * 86400 <= lifetime.total_seconds() <= 30 * 86400 + 600
    for key in (paths.ca_key, paths.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    for cert in (paths.ca_cert, paths.server_cert):
        assert cert.stat().st_mode & 0o077 != 0o077  # readable by others, yet not writable
        assert cert.stat().st_mode & 0o022 == 0


def test_certificates_are_accepted_by_a_real_tls_handshake(tmp_path: Path) -> None:
    """Python's own TLS stack (OpenSSL) accepts the chain for 127.0.0.1 and for localhost."""
    paths = generate_federation_certs(tmp_path, days=1)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    client_ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(2)
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                with contextlib.suppress(OSError), server_ctx.wrap_socket(conn, server_side=True):
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for name in ("127.0.0.1", "localhost"):
            with (
                socket.create_connection((LOOPBACK, port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=name) as tls,
            ):
                assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        thread.join(5)


def test_existing_certificates_are_not_overwritten(tmp_path: Path) -> None:
    first = generate_federation_certs(tmp_path)
    before = first.ca_cert.read_bytes()
    with pytest.raises(UsageError, match=r"ca\.crt: already exists"):
        generate_federation_certs(tmp_path)
    assert first.ca_cert.read_bytes() == before
    again = generate_federation_certs(tmp_path, overwrite=True)
    assert again.ca_cert.read_bytes() != before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hosts": ()}, "name at least one host"),
        ({"hosts": ("bad host!",)}, "neither an IP address nor a DNS name"),
        ({"days": 0}, "whole number of days"),
        ({"days": 1.5}, "whole number of days"),
    ],
)
def test_bad_certificate_options_are_usage_errors(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        generate_federation_certs(tmp_path, **options)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())
