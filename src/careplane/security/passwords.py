"""Argon2id password hashing (pwdlib), with transparent rehash when parameters change, and
the password policy (OWASP ASVS 4.0 V2.1, NIST SP 800-63B).

The policy asks for length, not composition: at least 12 characters (ASVS 2.1.1), up to 128
so passphrases fit (2.1.2), any printable Unicode including spaces (2.1.4), never truncated
(2.1.3: Argon2 hashes the whole string), no rules about character classes (2.1.9). It refuses
what is long but still guessable: the username itself, a handful of characters repeated, and
the commonest long passwords.
"""

from __future__ import annotations

import unicodedata

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

_hasher = PasswordHash((Argon2Hasher(),))
# Verifying against this keeps the time of a login for an unknown user equal to a known one.
_DUMMY = _hasher.hash("careplane-timing-equaliser")


MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128
_COMMON = frozenset({
    "123456789012", "1234567890123", "12345678901234", "password1234", "passwordpassword",
    "qwertyuiopasdf", "qwertyuiop123", "qwerty123456", "iloveyou1234", "administrator",
    "letmein12345", "welcome12345", "abcdefghijkl", "abc123abc123", "000000000000",
    "changeme1234", "password123!", "p@ssw0rd1234", "1q2w3e4r5t6y", "trustno1trustno1"})


class PasswordPolicyError(ValueError):
    """The password does not meet the policy; the message says what to change."""


def password_problem(password: str, *, username: str | None = None) -> str | None:
    """What is wrong with ``password`` under the policy, or None if it is acceptable."""
    length = len(password)
    if length < MIN_PASSWORD_LENGTH:
        return (f"password must be at least {MIN_PASSWORD_LENGTH} characters long (this one "
                f"has {length}); a passphrase of a few words is easy to remember")
    if length > MAX_PASSWORD_LENGTH:
        return f"password must be at most {MAX_PASSWORD_LENGTH} characters long"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in password):
        return "password must not contain control or unassigned characters"
    folded = password.casefold()
    if username and folded == username.casefold():
        return "password must not be the username"
    if len(set(folded)) < 4:
        return "password must not be a few characters repeated"
    if folded in _COMMON:
        return "password is one of the most commonly used passwords; choose another"
    return None


def check_password_policy(password: str, *, username: str | None = None) -> None:
    """Raise :class:`PasswordPolicyError` unless ``password`` meets the policy."""
    problem = password_problem(password, username=username)
    if problem is not None:
        raise PasswordPolicyError(problem)


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
