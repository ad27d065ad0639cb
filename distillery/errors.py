"""One error root. Every error a user can meet derives from `DistilleryError`, and its message
names the file, field or command involved and says what to do, so the command line can print it
as one line and exit non-zero instead of showing a traceback."""

from __future__ import annotations


class DistilleryError(Exception):
    """A failure the user can act on; the message is the whole explanation."""


class ConfigError(DistilleryError, ValueError):
    """A config file, option or environment variable that cannot be used; names the source and field."""
