"""Sealing small secrets (signing keys) with a key derived from the settings' secret key.

AES-256-GCM with a fresh 96-bit nonce per seal; the key comes from HKDF-SHA256 over the secret
key with a purpose label, so the same secret never serves two purposes directly. A database
copy without the secret key therefore yields no usable private key.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SealError", "derive_key", "seal", "unseal"]

_VERSION = b"\x01"


class SealError(ValueError):
    """The sealed value is damaged or was sealed with another secret key."""


def derive_key(secret: str, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"careplane-sealing-v1",
                info=purpose.encode()).derive(secret.encode())


def seal(secret: str, purpose: str, plaintext: bytes) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(derive_key(secret, purpose)).encrypt(nonce, plaintext, purpose.encode())
    return base64.urlsafe_b64encode(_VERSION + nonce + sealed).decode()


def unseal(secret: str, purpose: str, token: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(token.encode())
    except ValueError as exc:
        raise SealError("not a sealed value") from exc
    if len(raw) < 1 + 12 + 16 or raw[:1] != _VERSION:
        raise SealError("not a sealed value")
    try:
        return AESGCM(derive_key(secret, purpose)).decrypt(raw[1:13], raw[13:], purpose.encode())
    except InvalidTag as exc:
        raise SealError("sealed with another secret key, or damaged") from exc
