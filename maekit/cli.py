"""The `maekit` command: Lightning's CLI (fit/validate/test/predict) plus a few kit commands.

    maekit fit -c configs/naip/pretrain.yaml --data.root DIR
    maekit domains                     # domains, band presets and shipped configs
    maekit stats -c CONFIG             # per-band statistics of a dataset, as config YAML
    maekit sample-data OUT [--preset naip|toa] [--task classification|segmentation]
    maekit export CKPT OUT_DIR         # model.safetensors + config.json + model card
    maekit weights list|info|download|add
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI

from maekit.errors import ConfigError, MaekitError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class MaekitCLI(LightningCLI):
    """LightningCLI with the kit's defaults: any LightningModule/DataModule by `class_path`,
    seeded runs, and bf16 mixed precision by default where the GPU supports it."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: Any) -> None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        parser.set_defaults({"trainer.precision": "bf16-mixed" if bf16 else "32-true"})


def _overview() -> str:
    return (__doc__ or "").strip() + (
        "\n\nLightning commands take --help, --print_config and any --trainer.*, --model.*, --data.* "
        "option:\n    maekit fit --help\n")


def cmd_domains(argv: list[str]) -> int:
    """Print the domains, their band presets and the shipped configs."""
    from maekit.datasets.bands import PRESETS

    argparse.ArgumentParser(prog="maekit domains", description=cmd_domains.__doc__).parse_args(argv)
    print("multispectral  (maekit.domains.MultispectralAdapter)")
    for preset in PRESETS.values():
        print(f"  preset {preset.name:10s} {len(preset.bands):2d} bands {','.join(preset.bands)}")
        print(f"         {'':10s} {preset.description}")
    print("\nvolumes  (maekit.domains.VolumeAdapter)")
    print("  multimodal MRI (t1, t1ce, t2, flair; cases may lack some) and CT; layouts: BraTS 2021/2023,")
    print("  MSD Decathlon, nnU-Net raw, plain folder (maekit.datasets.VolumeDataModule)")
    roots = [Path.cwd() / "configs", CONFIG_DIR]
    seen: set[Path] = set()
    print("\nconfigs:")
    for root in roots:
        if not root.is_dir() or root.resolve() in seen:
            continue
        seen.add(root.resolve())
        for cfg in sorted(root.glob("*/*.yaml")):
            first = cfg.read_text().splitlines()[0].lstrip("# ").strip() if cfg.stat().st_size else ""
            print(f"  {cfg.relative_to(root.parent)}  {first}")
    return 0


def cmd_sample_data(argv: list[str]) -> int:
    """Write a small seeded sample dataset in the layout the readers expect."""
    from maekit.datasets.samples import make_chip_dataset

    p = argparse.ArgumentParser(prog="maekit sample-data", description=cmd_sample_data.__doc__)
    p.add_argument("out", help="folder to write")
    p.add_argument("--preset", choices=["naip", "toa"], default="naip")
    p.add_argument("--task", choices=["classification", "segmentation"], default="classification")
    p.add_argument("--per-class", type=int, default=64, help="training chips per class")
    p.add_argument("--val-per-class", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="chip edge in pixels")
    p.add_argument("--format", choices=["tif", "npz"], default="tif")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = make_chip_dataset(a.out, a.preset, a.task, a.per_class, a.val_per_class, a.size,
                             file_format=a.format, seed=a.seed)
    print(f"wrote {sum(1 for _ in root.rglob('*.*'))} files under {root}")
    return 0


def cmd_stats(argv: list[str]) -> int:
    """Per-band mean/std (in physical units) of a config's training data, printed as YAML to
    paste under the adapter's init_args (or written with --out)."""
    from maekit.datasets.stats import band_statistics

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


def cmd_export(argv: list[str]) -> int:
    """Turn a training checkpoint into a publishable folder: model.safetensors, config.json, README.md."""
    from maekit.weights import export

    p = argparse.ArgumentParser(prog="maekit export", description=cmd_export.__doc__)
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--name")
    p.add_argument("--training-data", default="", help="what it was trained on, for the model card")
    p.add_argument("--licence", default="unspecified")
    a = p.parse_args(argv)
    out = export(a.checkpoint, a.out_dir, a.training_data, a.licence, a.name)
    print(f"exported {out}: {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


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


EXTRA_COMMANDS = {"domains": cmd_domains, "stats": cmd_stats, "sample-data": cmd_sample_data,
                  "export": cmd_export, "weights": cmd_weights}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `maekit` console script."""
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        print("commands: " + ", ".join([*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]))
        return 0
    try:
        if argv[0] in EXTRA_COMMANDS:
            return EXTRA_COMMANDS[argv[0]](argv[1:])
        MaekitCLI(args=None if from_console else argv)  # Lightning reads sys.argv itself
    except MaekitError as err:
        print(f"maekit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
