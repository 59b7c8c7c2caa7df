"""API authentication: exchange a username and password for a bearer token, see who you are.

The built-in OAuth2/OIDC server (client credentials, authorization code + PKCE) issues into the
same token table and supersedes the password exchange for applications.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from careplane.deps import PlatformDep
from careplane.security._principal import Principal
from careplane.security.deps import current_principal
from careplane.security.identity import (
    IdentityError,
    WrongPassword,
    change_password,
    check_login,
    issue_token,
    revoke_token,
)
from careplane.security.models import User
from careplane.security.totp import TotpError, begin_enrolment, confirm_enrolment, disable

router = APIRouter(prefix="/api/auth", tags=["auth"])


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=1000)
    organisation: str | None = Field(default=None, description="org id; default: the first")
    totp: str | None = Field(default=None, pattern=r"^\d{6}$",
                             description="the one-time code, for accounts with a second factor")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret
    expires_at: datetime


class Me(BaseModel):
    user_id: str
    username: str
    display_name: str
    org_id: str
    roles: list[str]


@router.post("/token", response_model=TokenResponse)
def token(body: TokenRequest, platform: PlatformDep) -> TokenResponse:
    with platform.session() as session:
        result = check_login(session, body.username, body.password, totp=body.totp,
                             secret_key=platform.settings.secret_key)
        user = result.user
        if user is None:
            session.commit()  # keep the failure count even though we refuse
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                "a one-time code (totp) is required for this account"
                                if result.needs_code else
                                "wrong username, password or one-time code")
        if body.organisation and body.organisation not in {m.org_id for m in user.memberships}:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "you are not a member of that organisation")
        issued = issue_token(session, user, kind="bearer", org_id=body.organisation,
                             lifetime=timedelta(days=platform.settings.token_days), name="api")
    return TokenResponse(access_token=issued.token, expires_at=issued.expires_at)


@router.post("/revoke", status_code=204)
def revoke(principal: Annotated[Principal, Depends(current_principal)],
           platform: PlatformDep) -> None:
    """Revoke the token that authenticated this request."""
    with platform.session() as session:
        revoke_token(session, principal.token_id)


@router.get("/me", response_model=Me)
def me(principal: Annotated[Principal, Depends(current_principal)]) -> Me:
    return Me(user_id=principal.user_id, username=principal.username,
              display_name=principal.display_name, org_id=principal.org_id,
              roles=sorted(principal.roles))


class TotpSetup(BaseModel):
    secret: str
    otpauth_uri: str


class TotpCode(BaseModel):
    code: str = Field(pattern=r"^\d{6}$")


def _user(session: Session, principal: Principal) -> User:
    user = session.get(User, principal.user_id)
    if user is None or principal.client_id is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only a signed-in person has a second "
                            "factor")
    return user


@router.post("/totp", response_model=TotpSetup)
def totp_setup(principal: Annotated[Principal, Depends(current_principal)],
               platform: PlatformDep) -> TotpSetup:
    """Start setting up a second factor: scan the URI (a QR code) into an authenticator app,
    then confirm with a code from it. The secret is shown only now."""
    with platform.session() as session:
        try:
            secret, uri = begin_enrolment(session, _user(session, principal),
                                          platform.settings.secret_key)
        except TotpError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return TotpSetup(secret=secret, otpauth_uri=uri)


@router.post("/totp/confirm", status_code=204)
def totp_confirm(body: TotpCode, principal: Annotated[Principal, Depends(current_principal)],
                 platform: PlatformDep) -> None:
    """Switch the second factor on: from now on sign-in needs a code as well."""
    with platform.session() as session:
        try:
            confirm_enrolment(session, _user(session, principal), body.code,
                              platform.settings.secret_key)
        except TotpError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


@router.post("/totp/disable", status_code=204)
def totp_disable(body: TotpCode, principal: Annotated[Principal, Depends(current_principal)],
                 platform: PlatformDep) -> None:
    """Switch the second factor off (a current code proves it is really you)."""
    with platform.session() as session:
        try:
            disable(session, _user(session, principal), body.code, platform.settings.secret_key)
        except TotpError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=1000)
    new_password: str = Field(min_length=1, max_length=1000,
                              description="at least 12 characters; a passphrase is best")


@router.post("/password", status_code=204)
def password_change(body: PasswordChange,
                    principal: Annotated[Principal, Depends(current_principal)],
                    platform: PlatformDep) -> None:
    """Change your own password (the current one proves it is really you)."""
    refused: WrongPassword | None = None
    with platform.session() as session:
        user = session.get(User, principal.user_id)
        if user is None or principal.client_id is not None:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                "only a signed-in person has a password")
        try:
            change_password(session, user, body.current_password, body.new_password,
                            keep_token_id=principal.token_id)
        except WrongPassword as exc:
            refused = exc  # committed: the failure counts toward the lockout
        except IdentityError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if refused is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(refused))
