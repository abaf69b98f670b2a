"""Errors a user can act on: each names the file (or setting) and what was wrong with it."""

from __future__ import annotations

from os import PathLike


class MaekitError(Exception):
    """Base class of every error maekit raises on purpose."""


class DataError(MaekitError, ValueError):
    """A data file that cannot be used as it is; the message names the file and the problem."""

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(MaekitError, ValueError):
    """A setting that contradicts the data or the model (unknown band, statistics of the wrong length...)."""
