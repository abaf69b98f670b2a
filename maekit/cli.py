"""The `maekit` command: Lightning's CLI (fit/validate/test/predict) plus a few kit commands.

    maekit fit -c naip/pretrain --data.root DIR   # -c takes a shipped config's short name or a path
    maekit configs                     # the shipped configs, one line each
    maekit domains                     # domains, band presets and shipped configs
    maekit stats -c CONFIG             # per-band statistics of a dataset, as config YAML
    maekit sample-data OUT [--preset naip|toa|brats|ct|pointcloud|modelnet40|nerf|skeleton]
    maekit nerf-grid MESHES OUT        # coloured meshes / point clouds -> NeRF-MAE radiance grids
    maekit shard -c CONFIG --out DIR   # convert a corpus once into streaming shards (litdata)
    maekit predict-scene CKPT SCENE.tif --out DIR      # whole GeoTIFF scenes, tiled and blended
    maekit embed-points WEIGHTS SCENE.las OUT.ply      # per-point embeddings of a large scene, in chunks
    maekit embed CKPT CHIPS_OR_SCENE --out E.parquet   # one embedding per chip / tile / case (GeoParquet)
    maekit export CKPT OUT_DIR [--format timm|monai]  # model.safetensors + config.json + model card
    maekit probe -c CONFIG --model.pretrained WEIGHTS  # kNN / linear probes at label budgets vs random init
    maekit weights list|info|download|add
    maekit --version
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI

from maekit.config_files import CONFIG_DIR, describe, resolve_config_args, shipped_configs
from maekit.errors import ConfigError, MaekitError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class MaekitCLI(LightningCLI):
    """LightningCLI with the kit's defaults: any LightningModule/DataModule by `class_path`,
    seeded runs, and bf16 mixed precision by default where the GPU supports it.

    Where a run's outputs go: `--trainer.default_root_dir DIR` moves all of them. Relative
    output paths of the configuration (the logger's `save_dir`, a callback's `dirpath` or
    `output_dir`) are taken from DIR instead of the working directory, so the run's log folder
    (`DIR/runs/<name>/version_N/`), its checkpoints, reconstruction figures and prediction
    writers' outputs all land under DIR. The end of every `fit` prints the checkpoint it wrote.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        if args is None:  # Lightning reads sys.argv itself (and DDP re-launches it): resolve there
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        else:
            args = resolve_config_args(args)
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=args,
            run=run,
            **kwargs,
        )

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, writing checkpoints atomically unless a custom checkpoint IO was configured."""
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        from maekit.checkpointing import AtomicCheckpointIO

        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        note = slow_cpu_bf16_note(trainer)
        if note:
            warnings.warn(note, stacklevel=2)
        return trainer

    def before_instantiate_classes(self) -> None:
        """Relative output paths of the config resolve against `trainer.default_root_dir`."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._decoder_follows_size(config)
        root = config.get("trainer.default_root_dir")
        if root is None:
            return
        for item in _class_items(config.get("trainer.logger")) + _class_items(config.get("trainer.callbacks")):
            args = item.get("init_args")
            for key in ("save_dir", "dirpath", "output_dir"):
                value = args.get(key) if args is not None else None
                if isinstance(value, (str, Path)) and "://" not in str(value) and not Path(value).is_absolute():
                    args[key] = str(Path(root) / value)

    def _decoder_follows_size(self, config: Any) -> None:
        """`--model.size` given on the command line without a `--model.decoder_*`: the config's
        decoder is dropped for the size's own (`maekit.backbones.DECODER_SIZES`), so a nano
        encoder does not keep a base-sized decoder."""
        args = config.get("model.init_args")
        if args is None or "decoder_width" not in args:
            return

        def given(name: str) -> bool:
            return any(a.split("=")[0] in (f"--model.{name}", f"--model.init_args.{name}") for a in self._argv)

        if not given("size") or any(given(f"decoder_{k}") for k in ("width", "depth", "heads")):
            return
        from maekit.backbones import DECODER_SIZES

        old = tuple(args.get(f"decoder_{k}") for k in ("width", "depth", "heads"))
        new = DECODER_SIZES[args.get("size")]
        for k in ("width", "depth", "heads"):
            args[f"decoder_{k}"] = None
        if old != (new.width, new.depth, new.heads) and any(v is not None for v in old):
            print(f"maekit: --model.size {args.get('size')}: decoder {new.width} wide, {new.depth} deep, {new.heads} "
                  f"heads (the config's {old[0]}/{old[1]}/{old[2]} is for another size; give --model.decoder_width, "
                  "_depth and _heads to choose one)")

    def after_fit(self) -> None:
        """Print the checkpoint this run wrote (its `last.ckpt` when it keeps one)."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        callbacks = trainer.checkpoint_callbacks
        paths = [cb.last_model_path for cb in callbacks if getattr(cb, "last_model_path", "")]
        paths += [cb.best_model_path for cb in callbacks if getattr(cb, "best_model_path", "")]
        if paths:
            print(f"maekit: checkpoint written: {Path(paths[0]).resolve()}")
        else:
            print("maekit: no checkpoint written (checkpointing is off in this configuration)")

    def add_arguments_to_parser(self, parser: Any) -> None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        parser.set_defaults({"trainer.precision": "bf16-mixed" if bf16 else "32-true"})


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def slow_cpu_bf16_note(trainer: Any) -> str | None:
    """A warning for bf16 mixed precision on a CPU without bf16 units: autocast does run the
    matmuls in bf16 there, but emulated, several times slower than fp32 (measured 8x on an
    AVX2 machine by benchmarks/mae_step.py). None when the run is not affected."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if not isinstance(trainer.accelerator, CPUAccelerator) or "bf16" not in str(trainer.precision):
        return None
    if cpu_has_bf16_units():
        return None
    return (f"trainer.precision {trainer.precision} on a CPU without bf16 units (no AVX-512-BF16/AMX; torch "
            f"reports {torch.backends.cpu.get_cpu_capability()}): the matmuls run in emulated bf16, several times "
            "slower than 32-true; use --trainer.precision 32-true on this machine unless memory is the limit")


def _class_items(value: Any) -> list[Any]:
    """The `class_path`/`init_args` entries of a config value (one, a list of them, or none)."""
    items = value if isinstance(value, list) else [value]
    return [item for item in items if hasattr(item, "get") and item.get("class_path")]


def _overview() -> str:
    return (__doc__ or "").strip() + (
        "\n\nLightning commands take --help, --print_config and any --trainer.*, --model.*, --data.* "
        "option:\n    maekit fit --help\n")


def cmd_domains(argv: list[str]) -> int:
    """Print the registered domains (adapter, datamodules, sample presets, extra) and the shipped configs."""
    from maekit.domains.registry import domains, load, public_name

    argparse.ArgumentParser(prog="maekit domains", description=cmd_domains.__doc__).parse_args(argv)
    for domain in domains().values():
        extra = f"  [pip install 'maekit[{domain.extra}]']" if domain.extra else ""
        print(f"{domain.name}  ({public_name(domain.adapter)}){extra}")
        print(f"  {domain.description}")
        for path in domain.datamodules:
            print(f"  data: {public_name(path)}")
        if domain.samples:
            print(f"  sample-data presets: {', '.join(domain.samples)}")
        if domain.details:
            for line in load(domain.details)():
                print(f"  {line}")
        print()
    print("configs (maekit fit -c NAME):")
    _print_configs()
    return 0


def _print_configs() -> None:
    """One line per shipped config: its short name and its first comment line."""
    shipped = shipped_configs()
    width = max((len(name) for name in shipped), default=0)
    for name, path in shipped.items():
        print(f"  {name:{width}s}  {describe(path)}")
    if not shipped:
        print(f"  none found under {CONFIG_DIR}")


def cmd_configs(argv: list[str]) -> int:
    """List the configs shipped with maekit, by the short name that `-c` takes (`maekit fit -c naip/pretrain`)."""
    argparse.ArgumentParser(prog="maekit configs", description=cmd_configs.__doc__).parse_args(argv)
    _print_configs()
    return 0


def _summary(function: Any) -> str:
    """What a sample-data function writes: its docstring after the command it serves."""
    return (function.__doc__ or "").split(":", 1)[-1].strip().rstrip(".")


def cmd_sample_data(argv: list[str]) -> int:
    """Write a small seeded sample dataset in the layout the readers expect."""
    from maekit.domains.registry import SampleOptions, load, sample_presets

    presets = sample_presets()
    p = argparse.ArgumentParser(prog="maekit sample-data", description=cmd_sample_data.__doc__)
    p.add_argument("out", help="folder to write")
    by_function: dict[str, list[str]] = {}
    for name, domain in presets.items():
        by_function.setdefault(domain.samples[name], []).append(name)
    p.add_argument("--preset", choices=list(presets), default="naip",
                   help="; ".join(f"{' / '.join(names)}: {_summary(load(path))}" for path, names in by_function.items()))
    p.add_argument("--task", choices=["classification", "segmentation"], default="classification",
                   help="chips only")
    p.add_argument("--per-class", type=int, default=None,
                   help="samples per class (chips 64, point clouds 20, skeletons 8) or cases/scenes (8/6/12)")
    p.add_argument("--val-per-class", type=int, default=16, help="chips and point clouds: held-out samples per class")
    p.add_argument("--size", type=int, default=None,
                   help="chip edge (64), volume edge (32), NeRF grid longest side (32), points per cloud (2048)")
    p.add_argument("--format", choices=["tif", "npz"], default="tif", help="chips only")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    options = SampleOptions(a.per_class, a.val_per_class, a.size, a.task, a.format, a.seed)
    root = presets[a.preset].make_samples(a.preset, a.out, options)
    print(f"wrote {sum(1 for p in Path(root).rglob('*') if p.is_file())} files under {root}")
    return 0


def cmd_shard(argv: list[str]) -> int:
    """Convert a config's training and validation data into streaming shards (litdata), once."""
    from maekit.data.shards import cmd_shard as run

    return run(argv)


def cmd_stats(argv: list[str]) -> int:
    """Per-band mean/std (in physical units) of a config's training data, printed as YAML to
    paste under the adapter's init_args (or written with --out)."""
    from maekit.domains.multispectral.stats import band_statistics

    p = argparse.ArgumentParser(prog="maekit stats", description=cmd_stats.__doc__)
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--max-files", type=int, default=1000, help="sample at most this many files")
    p.add_argument("--out", help="write the YAML here as well")
    a, rest = p.parse_known_args(argv)
    cli = MaekitCLI(args=["-c", a.config, *rest], run=False)
    adapter = getattr(cli.model, "adapter", None)
    stats = band_statistics(cli.datamodule, adapter, a.max_files)
    lines = [f"# per-band statistics of {getattr(cli.datamodule, 'root', '?')} ({stats['files']} files, "
             f"{stats['pixels']} valid pixels)", f"bands: [{', '.join(stats['bands'])}]",
             f"mean: [{', '.join(f'{v:.6g}' for v in stats['mean'])}]",
             f"std: [{', '.join(f'{v:.6g}' for v in stats['std'])}]"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        from maekit.files import write_text_atomic

        write_text_atomic(Path(a.out), text)
    return 0


def cmd_probe(argv: list[str]) -> int:
    """Frozen-encoder kNN and linear probes at several label budgets, pretrained vs random init."""
    from maekit.finetune.probe import cmd_probe as run

    return run(argv)


def cmd_export(argv: list[str]) -> int:
    """Turn a training checkpoint into a publishable folder: model.safetensors, config.json, README.md
    (--format timm: a timm VisionTransformer; --format monai: a MONAI ViT / UNETR encoder)."""
    from maekit.weights import export

    p = argparse.ArgumentParser(prog="maekit export", description=cmd_export.__doc__)
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--name")
    p.add_argument("--training-data", default="", help="what it was trained on, for the model card")
    p.add_argument("--licence", default="unspecified")
    p.add_argument("--format", choices=["maekit", "timm", "monai"], default="maekit",
                   help="maekit (default), timm (one-group multispectral encoders) or monai (one-modality volumes)")
    p.add_argument("--image-size", type=int, nargs="+", default=None,
                   help="timm/monai: the input size the position table is laid out for (one edge, or each)")
    p.add_argument("--proj-type", choices=["conv", "perceptron"], default="conv", help="monai: patch embedding")
    a = p.parse_args(argv)
    size = a.image_size[0] if a.image_size and len(a.image_size) == 1 else a.image_size
    out = export(a.checkpoint, a.out_dir, a.training_data, a.licence, a.name, a.format, size, a.proj_type)
    print(f"exported {out}: {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


def cmd_embed(argv: list[str]) -> int:
    """Encoder embeddings as a table (GeoParquet for georeferenced chips and scene tiles)."""
    from maekit.embeddings import cmd_embed as run

    return run(argv)


def cmd_weights(argv: list[str]) -> int:
    """Pretrained weights: list, info NAME, download NAME, add NAME URL."""
    import json

    from maekit.weights import add_entry, download, registry

    p = argparse.ArgumentParser(prog="maekit weights", description=cmd_weights.__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    sub.add_parser("info").add_argument("name")
    d = sub.add_parser("download")
    d.add_argument("name")
    d.add_argument("--trust-unverified", action="store_true")
    add = sub.add_parser("add", help="register weights by URL (+ sha256) in $MAEKIT_HOME/registry.json")
    add.add_argument("name")
    add.add_argument("url")
    add.add_argument("--sha256")
    for field in ("domain", "backbone", "licence", "source", "size"):
        add.add_argument(f"--{field}", default="")
    add.add_argument("--bands", nargs="*", default=[])
    add.add_argument("--modalities", nargs="*", default=[])
    a = p.parse_args(argv)
    entries = registry()
    if a.action == "list":
        if not entries:
            print("no registered weights (add your own with `maekit weights add`)")
        for e in entries.values():
            channels = ",".join(e.get("bands") or e.get("modalities") or [])
            print(f"{e['name']:30s} {e.get('domain', ''):14s} {e.get('backbone', ''):10s} {channels:24s} "
                  f"{e.get('size', ''):8s} {e.get('licence', ''):12s} {e.get('source') or e['url']}"
                  f"{'' if e.get('sha256') else '  (unverified)'}")
    elif a.action == "info":
        if a.name not in entries:
            raise ConfigError(f"no registered weights called {a.name!r}")
        print(json.dumps(entries[a.name], indent=2))
    elif a.action == "download":
        if a.name not in entries:
            raise ConfigError(f"no registered weights called {a.name!r}")
        e = entries[a.name]
        print(download(e["url"], e.get("sha256"), e.get("filename"), trust_unverified=a.trust_unverified))
    else:
        entry = {k: v for k, v in vars(a).items() if k != "action" and v not in (None, "", [])}
        add_entry(entry)
        print(f"registered {a.name}{'' if a.sha256 else ' (unverified: downloads need --trust-unverified)'}")
    return 0


EXTRA_COMMANDS = {"configs": cmd_configs, "domains": cmd_domains, "stats": cmd_stats, "sample-data": cmd_sample_data,
                  "shard": cmd_shard, "export": cmd_export, "weights": cmd_weights, "probe": cmd_probe,
                  "embed": cmd_embed}


def _commands() -> dict[str, Any]:
    """The kit's commands plus those registered by domains (`maekit nerf-grid`, `predict-scene`...)."""
    from maekit.domains.registry import commands, load

    found: dict[str, Any] = dict(EXTRA_COMMANDS)
    for name, path in commands().items():
        found[name] = lambda argv, path=path: load(path)(argv)
    return found


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `maekit` console script."""
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        print("commands: " + ", ".join([*LIGHTNING_COMMANDS, *_commands()]))
        return 0
    if argv[0] in ("-V", "--version"):
        from maekit import __version__

        print(f"maekit {__version__}")
        return 0
    try:
        extra = _commands() if argv[0] not in LIGHTNING_COMMANDS else {}
        if argv[0] in extra:
            return extra[argv[0]](argv[1:])
        from maekit.strategies import register_strategies

        register_strategies()  # --trainer.strategy fsdp_blocks
        MaekitCLI(args=None if from_console else argv)  # Lightning reads sys.argv itself
    except MaekitError as err:
        print(f"maekit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
