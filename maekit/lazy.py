"""Optional dependencies: import them only where used, and name the extra that provides them.

    rasterio = lazy_import("rasterio")      # MissingExtraError: ... pip install 'maekit[geo]'

Each domain imports its own extra's packages through this, never another domain's.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from maekit.errors import MaekitError

#: top-level package -> the `pip install maekit[...]` extra that provides it (pyproject.toml)
EXTRA_OF: dict[str, str] = {
    "rasterio": "geo", "torchgeo": "geo", "requests": "geo", "geopandas": "geo", "pyarrow": "geo",
    "monai": "medical", "nibabel": "medical", "pydicom": "medical",
    "open3d": "3d", "h5py": "3d", "sklearn": "3d",
    "laspy": "lidar", "litdata": "scale",
}


class MissingExtraError(MaekitError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def install_hint(package: str) -> str:
    """`pip install 'maekit[extra]'` for a top-level package (its own name when it is in no extra)."""
    extra = EXTRA_OF.get(package.partition(".")[0])
    return f"pip install 'maekit[{extra}]'" if extra else f"pip install {package.partition('.')[0]}"


def lazy_import(name: str, needed_for: str = "") -> ModuleType:
    """`importlib.import_module(name)`, or a `MissingExtraError` saying what to install."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        top = name.partition(".")[0]
        if err.name is None or err.name.partition(".")[0] != top:
            raise  # the package is there but one of *its* dependencies is missing: show that
        what = f" (needed for {needed_for})" if needed_for else ""
        raise MissingExtraError(f"{top} is not installed{what}: {install_hint(top)}") from err


def import_module(name: str, needed_for: str = "") -> ModuleType:
    """`importlib.import_module(name)`; a missing optional dependency anywhere below it becomes a
    `MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        top = (err.name or "").partition(".")[0]
        if top not in EXTRA_OF:
            raise
        what = needed_for or name
        raise MissingExtraError(f"{what} needs {top}, which is not installed: {install_hint(top)}") from err


def lazy_exports(package: str, names: dict[str, str]):  # noqa: ANN201 - returns a module __getattr__
    """A module-level `__getattr__` that imports `name` from `names[name]` on first use, so a
    package can re-export classes without importing their (optional) dependencies up front.

        __getattr__ = lazy_exports(__name__, {"ChipDataModule": "maekit.domains.multispectral.datamodule"})
    """

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(names[name], f"{package}.{name}"), name)

    return __getattr__


def alias_module(old: str, new: str) -> None:
    """Make the old module name `old` the very module `new` (old import paths, pickled and
    recorded class paths keep working; patching either name patches both)."""
    import sys

    sys.modules[old] = import_module(new, old)


def forward_module(old: str, *new: str):  # noqa: ANN201 - returns a module __getattr__
    """A module `__getattr__` for an old module whose contents now live in several modules."""

    def __getattr__(name: str) -> object:
        for target in new:
            module = import_module(target, f"{old}.{name}")
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (its contents moved to {', '.join(new)})")

    return __getattr__
