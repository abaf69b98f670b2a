"""maekit: one masked-autoencoder engine for data that is not photos."""

from __future__ import annotations

from typing import Any

from maekit.tokens import DomainAdapter, Tokens

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)
__all__ = ["DomainAdapter", "Tokens", "__version__", "from_pretrained"]


def __getattr__(name: str) -> Any:
    """`maekit.from_pretrained`, imported on first use so `import maekit` stays light."""
    if name == "from_pretrained":
        from maekit.weights.hub import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'maekit' has no attribute {name!r}")
