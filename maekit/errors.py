"""Errors a user can act on: each names the file (or setting) and what was wrong with it."""

from __future__ import annotations

from os import PathLike


class MaekitError(Exception):
    """Base class of every error maekit raises on purpose."""


class DataError(MaekitError, ValueError):
    """A data file that cannot be used as it is; the message names the file and the problem."""

    def __init__(self, path: str | PathLike[str], problem: str | None = None) -> None:
        if problem is None:  # rebuilt from one message, e.g. re-raised from a DataLoader worker
            path, problem = _original_message(str(path)).partition(": ")[::2]
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _original_message(text: str) -> str:
    """The error's own message from a worker's formatted traceback (its last line), or `text`."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else text
    for prefix in ("maekit.errors.DataError: ", "DataError: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last if "Traceback" in text else text


class ConfigError(MaekitError, ValueError):
    """A setting that contradicts the data or the model (unknown band, statistics of the wrong length...)."""

    def __init__(self, message: str) -> None:
        super().__init__(_original_message(message).removeprefix("maekit.errors.ConfigError: "))
