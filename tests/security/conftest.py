"""Security-test fixtures.

``client`` here also disposes the application's own database engine when the test ends, so a
PostgreSQL connection of one test is never garbage-collected (with a ResourceWarning) during
the next one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from careplane.app import create_app
from careplane.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    try:
        with TestClient(app) as test_client:
            yield test_client
    finally:
        app.state.platform.db.dispose()
