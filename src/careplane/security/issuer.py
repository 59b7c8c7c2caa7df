"""This server's identity as an OAuth2 issuer and resource server.

The issuer URL is the configured public URL when the settings carry one (``public_url``), and
otherwise the URL the request came in on (behind a proxy, uvicorn's proxy headers make that the
public one). Tokens name it as ``iss`` and ``aud``; a token minted for another host name of the
same server is therefore refused, which is the safe direction to fail.
"""

from __future__ import annotations

from fastapi import Request

__all__ = ["issuer_url"]


def issuer_url(request: Request) -> str:
    configured = getattr(request.app.state.platform.settings, "public_url", None)
    if configured:
        return str(configured).rstrip("/")
    return str(request.base_url).rstrip("/")
