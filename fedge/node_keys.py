"""Key pairs for Flower's SuperNode authentication, made on the data holder's own machine.

In the kernel because ``cryptography`` lives here (DESIGN.md section 2): the client makes the key,
and nothing else in fedge needs to know how.
"""

from __future__ import annotations

__all__ = ["generate_node_key"]


def generate_node_key() -> tuple[bytes, str]:
    """A new EC P-384 key: (private key in OpenSSH PEM, public key as an OpenSSH line).

    OpenSSH is the format ``flower-supernode --auth-supernode-private-key`` loads and
    ``flwr supernode register`` reads.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode("ascii")
