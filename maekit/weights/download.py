"""Verified downloads into the weights cache.

Files stream to a temporary file beside their cache entry, their sha256 is checked, and only
then are they renamed into place: an interrupted or corrupt download leaves nothing cached.
`MAEKIT_HOME` (default `~/.cache/maekit`) holds the cache; `MAEKIT_OFFLINE=1` uses it only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from maekit.errors import MaekitError
from maekit.files import atomic_output


class WeightsError(MaekitError, RuntimeError):
    """A weights file that cannot be had: missing offline, wrong hash, unverified, unreachable."""


def cache_root() -> Path:
    """Where downloaded weights live (`$MAEKIT_HOME/weights`)."""
    return Path(os.environ.get("MAEKIT_HOME", "~/.cache/maekit")).expanduser() / "weights"


def offline() -> bool:
    return os.environ.get("MAEKIT_OFFLINE", "") not in ("", "0", "false", "False")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_path(url: str, sha256: str | None, filename: str | None = None) -> Path:
    """The cache entry a URL maps to (its hash, when pinned, is part of the name)."""
    name = filename or url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "weights"
    folder = sha256[:16] if sha256 else hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_root() / folder / name


def download(url: str, sha256: str | None = None, filename: str | None = None, trust_unverified: bool = False,
             retries: int = 3, backoff: float = 0.5, progress: bool = True, timeout: float = 60.0) -> Path:
    """The cached file for `url`, downloading (and verifying) it when missing.

    Args:
        url: http(s) address.
        sha256: expected hex digest; without one the download is refused unless
            `trust_unverified` (then the file is cached under a name derived from the URL).
        retries: attempts for connection failures and truncated transfers, with exponential
            back-off starting at `backoff` seconds. A hash mismatch is not retried.
    """
    target = cached_path(url, sha256, filename)
    if target.is_file():
        if sha256 is None or sha256_of(target) == sha256.lower():
            return target
        target.unlink()  # a damaged cache entry is fetched again
    if offline():
        raise WeightsError(f"{url}: not in the cache ({target}) and MAEKIT_OFFLINE is set")
    if sha256 is None and not trust_unverified:
        raise WeightsError(f"{url}: no sha256 is pinned for it; pass trust_unverified (--trust-unverified) "
                           "to download it anyway")
    last: Exception | None = None
    for attempt in range(max(1, retries)):
        try:
            _fetch(url, target, sha256, progress, timeout)
            return target
        except WeightsError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as err:
            last = err
            if isinstance(err, urllib.error.HTTPError) and err.code in (401, 403, 404):
                break  # final answers: retrying will not help
            time.sleep(backoff * 2**attempt)
    raise WeightsError(f"{url}: download failed after {max(1, retries)} attempt(s): {last}")


def _fetch(url: str, target: Path, sha256: str | None, progress: bool, timeout: float) -> None:
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "maekit"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=target.name, leave=False)
        received = 0
        try:
            with atomic_output(target) as tmp, open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
                if total and received != total:
                    raise http.client.IncompleteRead(b"", total - received)
                if sha256 is not None and digest.hexdigest() != sha256.lower():
                    raise WeightsError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {digest.hexdigest()}; "
                                       "nothing was cached")
        finally:
            if bar is not None:
                bar.close()
