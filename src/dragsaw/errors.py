"""Exception types for problems the user can fix.

Every error raised at a public boundary says *what* is wrong, *which* argument, file or value, and *how* to
fix it. ``DragsawError`` subclasses are what the command line prints as one paragraph without a traceback.
"""

from __future__ import annotations

__all__ = ["DragsawError", "DataError", "ConfigError", "InterruptedRun", "DiskFullError"]


class DragsawError(Exception):
    """Base class of user-facing errors (bad input, bad configuration, unreadable data)."""


class DataError(DragsawError, ValueError):
    """A dataset, image or mask cannot be used as given (names the file and the fix)."""


class ConfigError(DragsawError, ValueError):
    """A configuration value, preset name or command-line option is invalid (names the key and the fix)."""


class InterruptedRun(DragsawError):
    """A run stopped by SIGINT or SIGTERM; ``code`` is the shell's exit status for that signal (130 or 143) and the
    message says what was saved and how to continue."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class DiskFullError(DragsawError):
    """The disk of a run's output folder is full (or would be by the first checkpoint); names the disk and its free
    space."""
