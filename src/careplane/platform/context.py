"""The per-process bundle of platform services that routers and CLI commands are handed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session

from careplane.platform.blobs import BlobStore
from careplane.platform.db import Database
from careplane.platform.events import EventHub
from careplane.platform.events._publish import PUBLISHED
from careplane.settings import Settings


@dataclass
class Platform:
    settings: Settings
    db: Database
    blobs: BlobStore
    events: EventHub

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work whose committed events reach this process's subscribers at once."""
        with self.db.session() as session:
            yield session
            published = session.info.pop(PUBLISHED, False)
        if published:
            self.events.poke()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """Read-only work in autocommit (:meth:`Database.read_session`); it publishes nothing,
        so it wakes no one."""
        with self.db.read_session() as session:
            yield session
