"""Exception types for problems the user can fix.

Every error raised at a public boundary says *what* is wrong, *which* argument, file or value, and *how* to
fix it. ``DragsawError`` subclasses are what the command line prints as one paragraph without a traceback.
"""

from __future__ import annotations

__all__ = ["DragsawError", "DataError", "ConfigError"]


class DragsawError(Exception):
    """Base class of user-facing errors (bad input, bad configuration, unreadable data)."""


class DataError(DragsawError, ValueError):
    """A dataset, image or mask cannot be used as given (names the file and the fix)."""


class ConfigError(DragsawError, ValueError):
    """A configuration value, preset name or command-line option is invalid (names the key and the fix)."""
