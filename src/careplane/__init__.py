"""careplane: a self-hostable digital-health platform.

The public surface is small on purpose: build an app with :func:`create_app` from a
:class:`Settings`, or drive everything from the ``careplane`` command.
"""

from typing import TYPE_CHECKING, Any

from careplane._version import __version__
from careplane.settings import Settings, SettingsError

if TYPE_CHECKING:
    from careplane.app import create_app

__all__ = ["Settings", "SettingsError", "__version__", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: job worker processes import careplane without needing the web app.
    if name == "create_app":
        from careplane.app import create_app

        return create_app
    raise AttributeError(f"module 'careplane' has no attribute {name!r}")
