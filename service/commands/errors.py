"""The error every command raises for its user."""

from __future__ import annotations


class CliError(Exception):
    """A one-line message for the user; exit code 2 unless said otherwise."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
