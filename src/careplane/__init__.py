"""careplane: a self-hostable digital-health platform.

The public surface is small on purpose: build an app with :func:`create_app` from a
:class:`Settings`, or drive everything from the ``careplane`` command.
"""

from careplane._version import __version__
from careplane.app import create_app
from careplane.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "__version__", "create_app"]
