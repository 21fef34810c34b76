"""CLI errors: one line on stderr and a non-zero exit, no traceback unless --debug."""

from __future__ import annotations


class CliError(Exception):
    """A problem the operator can fix; the message says how."""
