"""API authentication: exchange a username and password for a bearer token, see who you are.

The built-in OAuth2/OIDC server (client credentials, authorization code + PKCE) issues into the
same token table and supersedes the password exchange for applications.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from careplane.deps import PlatformDep
from careplane.security._principal import Principal
from careplane.security.deps import current_principal
from careplane.security.identity import authenticate, issue_token, revoke_token

router = APIRouter(prefix="/api/auth", tags=["auth"])


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=1000)
    organisation: str | None = Field(default=None, description="org id; default: the first")


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
        user = authenticate(session, body.username, body.password)
        if user is None:
            session.commit()  # keep the failure count even though we refuse
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
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
