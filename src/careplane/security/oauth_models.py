"""Tables of the built-in OAuth2/OIDC server.

Secrets, authorization codes and refresh tokens are stored only as SHA-256 hashes (they are
long random strings, so a plain hash is enough and keeps every lookup a single index probe).
Signing keys are stored sealed with a key derived from the settings' secret key; only their
public halves are in clear, because they are published anyway. Access tokens themselves are
JWTs; each one also has a row in ``auth_token`` (kind ``access``, id = the JWT's ``jti``), which
is how a revoked JWT is refused before it expires.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from careplane.platform.db import Base, JSONType, UTCDateTime, new_id, utcnow

__all__ = ["AuthorizationCode", "Client", "ClientAssertion", "RefreshToken", "SigningKey",
           "UserPatient"]


class Client(Base):
    """A registered application: a backend service, a SMART app, a script."""

    __tablename__ = "auth_client"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisation.id", ondelete="CASCADE"),
                                        index=True)
    name: Mapped[str] = mapped_column(String(200))
    # The account that client-credentials tokens act as (role "service"); None for apps that
    # only act on behalf of a signed-in user.
    service_user_id: Mapped[str | None] = mapped_column(
        ForeignKey("user_account.id", ondelete="SET NULL"))
    auth_method: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    redirect_uris: Mapped[list[str]] = mapped_column(JSONType, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    scope: Mapped[str] = mapped_column(Text, default="")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SigningKey(Base):
    """One key of the rotating set that signs access and ID tokens."""

    __tablename__ = "auth_signing_key"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONType)
    private_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # After this it signs nothing new; it stays in the JWKS until ``expires_at``.
    retire_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AuthorizationCode(Base):
    __tablename__ = "auth_code"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("auth_client.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organisation.id", ondelete="CASCADE"))
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text, default="")
    code_challenge: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str | None] = mapped_column(String(255))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    family_id: Mapped[str] = mapped_column(String(32), default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RefreshToken(Base):
    """One link of a rotating refresh-token family: each use retires it and issues the next.

    Presenting a retired one again means the family leaked, so the whole family (and the access
    tokens it produced) is revoked.
    """

    __tablename__ = "auth_refresh_token"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(String(32), index=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("auth_client.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organisation.id", ondelete="CASCADE"))
    scope: Mapped[str] = mapped_column(Text, default="")
    patient_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ClientAssertion(Base):
    """``jti`` values of private_key_jwt assertions already seen, so none is accepted twice."""

    __tablename__ = "auth_client_assertion"
    __table_args__ = (UniqueConstraint("client_id", "jti"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("auth_client.id", ondelete="CASCADE"))
    jti: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class UserPatient(Base):
    """Links a user (role ``patient``) to the Patient record that is theirs, per organisation."""

    __tablename__ = "auth_user_patient"
    __table_args__ = (UniqueConstraint("user_id", "org_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"),
                                         index=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organisation.id", ondelete="CASCADE"))
    patient_id: Mapped[str] = mapped_column(String(64))
