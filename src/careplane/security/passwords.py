"""Argon2id password hashing (pwdlib), with transparent rehash when parameters change."""

from __future__ import annotations

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = PasswordHash((Argon2Hasher(),))
# Verifying against this keeps the time of a login for an unknown user equal to a known one.
_DUMMY = _hasher.hash("careplane-timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, stored: str | None) -> tuple[bool, str | None]:
    """Returns (valid, new_hash); new_hash is set when the stored hash should be upgraded."""
    if not stored:
        _hasher.verify(password, _DUMMY)
        return False, None
    try:
        return _hasher.verify_and_update(password, stored)
    except Exception:  # an unparsable stored hash is a failed login, not a crash
        return False, None
