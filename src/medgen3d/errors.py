"""Errors that users cause and can fix.

The command line prints these as one line and exits non-zero; the napari plugin shows them
as a notification. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputError", "OutputExistsError"]


class InputError(ValueError):
    """Bad input from a user: a file, a value or a combination the engine cannot use.

    Args:
        problem: what is wrong, phrased for the person who gave the input.
        path: the file the problem is in, when there is one; it leads the message.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else Path(path)
        super().__init__(problem if path is None else f"{path}: {problem}")


class OutputExistsError(InputError):
    """An output file exists and overwriting was not asked for."""

    def __init__(self, path: str | Path) -> None:
        super().__init__("already exists; pass --overwrite to replace it", path)
