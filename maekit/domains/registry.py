"""The domain registry: one `register_domain(...)` call makes a domain known to the kit.

    register_domain("skeleton", adapter="maekit.domains.skeleton.adapter:SkeletonAdapter",
                    datamodules=["maekit.domains.skeleton.datamodule:SkeletonDataModule"],
                    samples={"skeleton": "maekit.domains.skeleton.samples:sample_data"},
                    example="maekit.domains.skeleton.samples:example",
                    description="skeleton sequences: one token per joint per 4-frame segment")

Everything is named by import path ("module:attribute") and imported only when used, so
registering a domain never imports its optional dependencies. The registry drives
`maekit domains`, `maekit sample-data`, the domain-specific CLI commands, how stored shards are
finished when a manifest names a kind rather than a function, and the conformance tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maekit.errors import ConfigError
from maekit.lazy import import_module

#: the domains shipped with the kit (each package registers itself on import)
BUILTIN = ("multispectral", "volume", "pointcloud", "nerf", "skeleton")


def load(path: str) -> Any:
    """The object at "package.module:attribute" (or "package.module.attribute")."""
    module, sep, attribute = path.partition(":")
    if not sep:
        module, _, attribute = path.rpartition(".")
    try:
        return getattr(import_module(module, path), attribute)
    except AttributeError as err:
        raise ConfigError(f"{path}: {module} has no attribute {attribute!r}") from err


def public_name(path: str) -> str:
    """The package-level spelling of "package.module:Name" when the package re-exports it
    (`maekit.domains.multispectral.MultispectralAdapter`), the module's otherwise."""
    module, _, name = path.partition(":")
    package = module.rpartition(".")[0]
    if name in getattr(importlib.import_module(package), "__all__", ()):
        return f"{package}.{name}"
    return f"{module}.{name}"


@dataclass(frozen=True)
class SampleOptions:
    """`maekit sample-data` options; None means the domain's own default."""

    per_class: int | None = None
    val_per_class: int = 16
    size: int | None = None
    task: str = "classification"
    file_format: str = "tif"
    seed: int = 0


@dataclass(frozen=True)
class Domain:
    """A registered domain (see `register_domain`)."""

    name: str
    adapter: str
    datamodules: tuple[str, ...] = ()
    samples: Mapping[str, str] = field(default_factory=dict)
    extra: str | None = None
    description: str = ""
    example: str | None = None
    commands: Mapping[str, str] = field(default_factory=dict)
    shard_kinds: Mapping[str, str] = field(default_factory=dict)
    details: str | None = None

    def adapter_class(self) -> type:
        return load(self.adapter)

    def datamodule_classes(self) -> list[type]:
        return [load(p) for p in self.datamodules]

    def make_samples(self, preset: str, out: str | Path, options: SampleOptions = SampleOptions()) -> Path:
        """Write the `preset` sample dataset under `out`; returns its root."""
        return Path(load(self.samples[preset])(Path(out), preset, options))

    def make_example(self, root: Path) -> Any:
        """The conformance example (see `Example`) on tiny sample data written under `root`."""
        if self.example is None:
            raise ConfigError(f"domain {self.name!r} registered no example for the conformance tests")
        return load(self.example)(Path(root))


@dataclass
class Example:
    """What the conformance tests need from a domain: a tiny adapter (not yet built), a
    datamodule on tiny sample data (batch size >= 2, no workers, a non-empty validation split),
    and `native(adapter, batch)`: the batch in the adapter's native layout, which
    `adapter.untokenize(adapter.tokenize(batch).values, tokens)` must give back (where present)."""

    adapter: Any
    datamodule: Any
    native: Any


_DOMAINS: dict[str, Domain] = {}


def _path(value: str | type | Any) -> str:
    if isinstance(value, str):
        return value
    return f"{value.__module__}:{value.__qualname__}"


def register_domain(name: str, *, adapter: str | type, datamodules: Iterable[str | type] = (),
                    samples: Mapping[str, str | Any] | None = None, extra: str | None = None,
                    description: str = "", example: str | Any | None = None,
                    commands: Mapping[str, str | Any] | None = None,
                    shard_kinds: Mapping[str, str | Any] | None = None, details: str | Any | None = None) -> Domain:
    """Make a domain known to the kit. Every object is given by import path ("module:attribute")
    or as the object itself (fine for domains defined in the module that registers them).

    Args:
        name: the domain's name (`maekit domains`, tests).
        adapter: its `DomainAdapter` class.
        datamodules: its LightningDataModule classes.
        samples: `maekit sample-data --preset` name -> function(out, preset, SampleOptions) -> root.
        extra: the `pip install maekit[...]` extra its readers need (None: none).
        description: one line for `maekit domains`.
        example: function(root) -> `Example`, for the conformance tests.
        commands: extra `maekit` subcommands: name -> function(argv) -> exit code.
        shard_kinds: stored-sample kinds of older shard manifests -> their finisher class.
        details: function() -> lines that `maekit domains` prints under the domain (band presets...).
    """
    if name in _DOMAINS and _DOMAINS[name].adapter != _path(adapter):
        raise ConfigError(f"domain {name!r} is already registered with {_DOMAINS[name].adapter}")
    taken = {p: d.name for d in _DOMAINS.values() if d.name != name for p in d.samples}
    clash = sorted(set(samples or {}) & set(taken))
    if clash:
        raise ConfigError(f"sample preset(s) {clash} of domain {name!r} are taken by {taken[clash[0]]!r}")
    domain = Domain(name, _path(adapter), tuple(_path(d) for d in datamodules),
                    {k: _path(v) for k, v in (samples or {}).items()}, extra, description,
                    None if example is None else _path(example), {k: _path(v) for k, v in (commands or {}).items()},
                    {k: _path(v) for k, v in (shard_kinds or {}).items()}, None if details is None else _path(details))
    _DOMAINS[name] = domain
    return domain


def unregister_domain(name: str) -> None:
    """Forget a domain (tests that register their own)."""
    _DOMAINS.pop(name, None)


def domains() -> dict[str, Domain]:
    """Every registered domain, the built-in ones first (importing a domain's package is cheap:
    it registers names, not code)."""
    for name in BUILTIN:
        importlib.import_module(f"maekit.domains.{name}")
    return dict(_DOMAINS)


def get_domain(name: str) -> Domain:
    found = domains()
    if name not in found:
        raise ConfigError(f"no domain called {name!r} (registered: {', '.join(found)})")
    return found[name]


def sample_presets() -> dict[str, Domain]:
    """`maekit sample-data` preset -> the domain that writes it."""
    return {preset: d for d in domains().values() for preset in d.samples}


def commands() -> dict[str, str]:
    """Domain-specific `maekit` subcommands -> their function's import path."""
    return {cmd: path for d in domains().values() for cmd, path in d.commands.items()}


def shard_kind(kind: str) -> str:
    """The finisher of stored samples of `kind` (manifests written before finishers were named)."""
    for d in domains().values():
        if kind in d.shard_kinds:
            return d.shard_kinds[kind]
    raise ConfigError(f"stored samples of kind {kind!r} belong to no registered domain")
