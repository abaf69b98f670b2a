"""Shipped configs and their short names.

The configs under `configs/<group>/<name>.yaml` in the source tree are installed with the package
(as `maekit/configs/`), so `maekit fit -c naip/pretrain` works from a wheel as well as from a
clone. A path that exists always wins over a short name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from maekit.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_FLAGS = ("-c", "--config")


def shipped_configs() -> dict[str, Path]:
    """Short name (`naip/pretrain`) -> path of every config shipped with the package, sorted."""
    if not CONFIG_DIR.is_dir():
        return {}
    return {p.relative_to(CONFIG_DIR).with_suffix("").as_posix(): p for p in sorted(CONFIG_DIR.glob("*/*.yaml"))}


def describe(path: Path) -> str:
    """The first comment line of a config (its one-line description), or '' when it has none."""
    for line in path.read_text().splitlines():
        if line.strip():
            return line.lstrip("#").strip() if line.lstrip().startswith("#") else ""
    return ""


def _inline(value: str) -> bool:
    """Whether `-c VALUE` is inline YAML/JSON rather than a file (jsonargparse accepts both)."""
    return any(ch in value for ch in "\n{}[]") or ": " in value


def resolve_config(value: str | Path) -> str:
    """A `-c` value as jsonargparse should read it: an existing path unchanged, a short name
    (`naip/pretrain`, `naip/pretrain.yaml`, `configs/naip/pretrain.yaml` from any folder) as the
    shipped file's path. Anything else raises a ConfigError listing the shipped names."""
    text = str(value)
    if Path(text).expanduser().exists() or _inline(text):
        return text
    name = text.replace("\\", "/").removesuffix(".yaml").removesuffix(".yml")
    name = name.removeprefix("./").removeprefix("configs/")
    shipped = shipped_configs()
    if name in shipped:
        return str(shipped[name])
    listing = ", ".join(shipped) or "(none: the package was installed without its configs)"
    raise ConfigError(f"config {text!r}: no such file, and no shipped config of that name. Shipped configs "
                      f"(use as `-c NAME`, list them with `maekit configs`): {listing}")


def resolve_config_args(argv: Sequence[str]) -> list[str]:
    """`argv` with the value of every `-c`/`--config` (`-c X`, `--config X`, `--config=X`, in any
    position) resolved by `resolve_config`."""
    out = [str(a) for a in argv]
    for i, arg in enumerate(out):
        if arg in CONFIG_FLAGS and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out


__all__ = ["CONFIG_DIR", "describe", "resolve_config", "resolve_config_args", "shipped_configs"]
