"""Writing outputs so that a failure never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` (with the
    permissions of any new file), when it fails it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)  # keep `.nii.gz`: writers choose the format by it
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent, prefix=f".{path.name[: len(path.name) - len(suffix)]}.")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through `atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def run_output_dir(trainer: Any, given: str | Path | None, name: str) -> Path:
    """Where a callback writes: `given` (a relative path is taken from the trainer's
    `default_root_dir`, the working directory unless set), or `<the run's log folder>/<name>`
    (`<default_root_dir>/<name>` for a run without a logger)."""
    root = Path(trainer.default_root_dir)
    if given is not None:
        return Path(given) if Path(given).is_absolute() else root / given
    return Path(trainer.log_dir or root) / name
