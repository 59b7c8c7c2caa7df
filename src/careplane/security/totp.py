"""Time-based one-time passwords (RFC 6238) as a second factor at sign-in.

Six digits, HMAC-SHA1, 30-second steps: what every authenticator app speaks. The shared secret
is sealed with the settings' secret key (a database copy does not yield it), each accepted
step is remembered so a code cannot be used twice, and one step of clock drift either way is
tolerated. Enrolment takes effect only once the user proves their app works (``confirm``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from datetime import datetime
from urllib.parse import quote, urlencode

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, Session, mapped_column

from careplane.platform.db import Base, UTCDateTime, utcnow
from careplane.security.models import User
from careplane.security.sealing import seal, unseal

__all__ = ["TotpEnrolment", "TotpError", "begin_enrolment", "code_at", "confirm_enrolment",
           "disable", "is_enrolled", "verify_code"]

STEP = 30
DIGITS = 6
_PURPOSE = "totp secret"


class TotpError(ValueError):
    pass


class TotpEnrolment(Base):
    __tablename__ = "auth_totp"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), primary_key=True)
    secret_sealed: Mapped[str] = mapped_column(Text)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_step: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    issuer: Mapped[str] = mapped_column(String(100), default="careplane")


def code_at(secret: bytes, step: int) -> str:
    """The HOTP value (RFC 4226) for counter ``step``."""
    mac = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def _secret(row: TotpEnrolment, secret_key: str) -> bytes:
    return unseal(secret_key, _PURPOSE, row.secret_sealed)


def _match(secret: bytes, code: str, now: float, last_step: int) -> int | None:
    if len(code) != DIGITS or not code.isdigit():
        return None
    step = int(now // STEP)
    for candidate in (step, step - 1, step + 1):
        if candidate > last_step and hmac.compare_digest(code_at(secret, candidate), code):
            return candidate
    return None


def begin_enrolment(session: Session, user: User, secret_key: str, *,
                    issuer: str = "careplane") -> tuple[str, str]:
    """Start (or restart) enrolment: returns the base32 secret and the otpauth:// URI."""
    row = session.get(TotpEnrolment, user.id)
    if row is not None and row.confirmed_at is not None:
        raise TotpError("a second factor is already set up; disable it first")
    raw = secrets.token_bytes(20)
    if row is None:
        row = TotpEnrolment(user_id=user.id, secret_sealed="", last_step=0)
        session.add(row)
    row.secret_sealed = seal(secret_key, _PURPOSE, raw)
    row.issuer = issuer
    session.flush()
    b32 = base64.b32encode(raw).decode().rstrip("=")
    label = quote(f"{issuer}:{user.username}")
    uri = f"otpauth://totp/{label}?" + urlencode({
        "secret": b32, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS,
        "period": STEP})
    return b32, uri


def confirm_enrolment(session: Session, user: User, code: str, secret_key: str, *,
                      now: float | None = None) -> None:
    row = session.get(TotpEnrolment, user.id)
    if row is None:
        raise TotpError("no second factor is being set up")
    step = _match(_secret(row, secret_key), code, time.time() if now is None else now,
                  row.last_step)
    if step is None:
        raise TotpError("the code is not valid; check the time on your device")
    row.last_step = step
    row.confirmed_at = utcnow()


def is_enrolled(session: Session, user_id: str) -> bool:
    row = session.get(TotpEnrolment, user_id)
    return row is not None and row.confirmed_at is not None


def verify_code(session: Session, user_id: str, code: str | None, secret_key: str | None, *,
                now: float | None = None) -> bool:
    """Check (and consume) a code for an enrolled user; never accepts the same step twice."""
    row = session.get(TotpEnrolment, user_id)
    if row is None or row.confirmed_at is None:
        return True
    if not code or secret_key is None:
        return False
    step = _match(_secret(row, secret_key), code, time.time() if now is None else now,
                  row.last_step)
    if step is None:
        return False
    row.last_step = step
    return True


def disable(session: Session, user: User, code: str, secret_key: str) -> None:
    if not is_enrolled(session, user.id):
        raise TotpError("no second factor is set up")
    if not verify_code(session, user.id, code, secret_key):
        raise TotpError("the code is not valid")
    row = session.get(TotpEnrolment, user.id)
    session.delete(row)
