"""Typed FastAPI dependencies shared by every router."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from careplane.platform.context import Platform


async def get_platform(request: Request) -> Platform:
    # async: no I/O, so FastAPI need not hop to a worker thread for it on every request
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def get_session(platform: PlatformDep) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns, rolled back on error."""
    with platform.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
