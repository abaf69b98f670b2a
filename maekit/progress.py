"""One progress bar for the kit's long commands that are not Lightning loops (`sample-data`,
`shard`, `predict-scene`, `embed-points`, `nerf-grid`, `stats`, `probe`): shown on a terminal,
silent when stderr is a pipe or a file (CI logs, tests, `2> log`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str | None = None,
             unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, disabled unless stderr is a terminal. Use it as an iterable wrapper
    (`for x in progress(items, desc="tiles")`) or as a context manager with `.update(n)`."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not _stderr_is_terminal(), **kwargs)


def say(message: str) -> None:
    """Print a line to stdout without tearing an open progress bar."""
    tqdm.write(message, file=sys.stdout)


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


__all__ = ["progress", "say"]
