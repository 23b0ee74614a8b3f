"""Exception types for problems the user can fix.

Every error raised at a public boundary says *what* is wrong, *where* (which argument, file or value) and *how* to
fix it. ``DragsawError`` subclasses are what the command line prints as one paragraph without a traceback.

The contract of :class:`DragsawError` (and so of every subclass):

* ``DragsawError(what, *, where=None, fix=None)``: ``what`` says what is wrong (with the offending values);
  ``where`` names the file, folder or configuration key concerned (a path is stored as ``str``); ``fix`` says how
  to fix it. The three are kept as the attributes ``.what``, ``.where`` (``str | None``) and ``.fix``
  (``str | None``).
* The message is rendered once, by :meth:`DragsawError.render`, and is the exception's ``str``:
  ``"{where}: {what}; fix: {fix}"``, leaving out the parts that are ``None`` (``"{what}"``, ``"{where}: {what}"``,
  ``"{what}; fix: {fix}"``).
* A single positional message, ``DataError("...")``, is ``what`` alone, so its ``str`` is the message unchanged.
* Errors pickle with their fields (they cross process boundaries in DataLoader workers and DDP):
  ``pickle.loads(pickle.dumps(err))`` has the same ``str``, ``.what``, ``.where`` and ``.fix``.
"""

from __future__ import annotations

import os

__all__ = ["DragsawError", "DataError", "ConfigError", "InterruptedRun", "DiskFullError"]

FIX_SEPARATOR = "; fix: "
"""What separates the fix from the rest of a rendered message."""


class DragsawError(Exception):
    """Base class of user-facing errors (bad input, bad configuration, unreadable data).

    Args:
        what: What is wrong, with the offending values.
        where: The file, folder or configuration key concerned (rendered as a ``"{where}: "`` prefix), or None.
        fix: How to fix it (rendered after ``"; fix: "``), or None.
    """

    def __init__(self, what: str, *, where: str | os.PathLike | None = None, fix: str | None = None) -> None:
        self.what = str(what)
        self.where = os.fspath(where) if isinstance(where, os.PathLike) else (None if where is None else str(where))
        self.fix = None if fix is None else str(fix)
        super().__init__(self.render())

    def render(self) -> str:
        """The message: ``"{where}: {what}; fix: {fix}"`` without the parts that are None."""
        text = self.what if self.where is None else f"{self.where}: {self.what}"
        return text if self.fix is None else f"{text}{FIX_SEPARATOR}{self.fix}"

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self):
        # Exception's default reduce re-calls cls(*self.args), which would lose ``where``/``fix``; rebuild through
        # _rebuild so every subclass (whatever its own __init__) comes back with its fields and instance dict.
        return (_rebuild, (type(self), self.what, self.where, self.fix), dict(self.__dict__))


def _rebuild(cls: type, what: str, where: str | None, fix: str | None) -> DragsawError:
    """Unpickle a :class:`DragsawError` without calling a subclass's own ``__init__`` signature."""
    err = cls.__new__(cls)
    DragsawError.__init__(err, what, where=where, fix=fix)
    return err


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
