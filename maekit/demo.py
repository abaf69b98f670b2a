"""`make demo`: generate NAIP-like chips, pretrain a small MAE, and show that it helps.

Prints the pretraining loss at start and end, the linear-probe accuracy of the pretrained
encoder and of the same encoder randomly initialised (same labelled subset, same probe
recipe), a full fine-tune of the pretrained encoder, and the reconstruction figure's path.

    python -m maekit.demo [--out demo_run] [--epochs 20]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from maekit.domains.multispectral import ChipDataModule
from maekit.domains.multispectral.samples import make_chip_dataset
from maekit.domains.multispectral import MultispectralAdapter
from maekit.finetune import ClassificationTask
from maekit.pretrain import MAEPretrainModule

MODEL: dict[str, Any] = {"size": "micro"}
PATCH = 8


def _trainer(epochs: int, root: Path, name: str, **kwargs: Any) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, default_root_dir=root / name,
                     logger=L.pytorch.loggers.CSVLogger(root, name=name), enable_progress_bar=False,
                     enable_model_summary=False, log_every_n_steps=5, **kwargs)


def _adapter() -> MultispectralAdapter:
    return MultispectralAdapter(preset="naip", patch_size=PATCH)


def probe(data: Path, out: Path, pretrained: str | None, name: str, epochs: int, labels_per_class: int,
          freeze: bool = True) -> float:
    """Train a classifier on a small labelled subset; return validation accuracy."""
    L.seed_everything(0, verbose=False)
    # the whole labelled subset is one batch: one optimiser step per epoch
    dm = ChipDataModule(str(data), preset="naip", task="classification", batch_size=4 * labels_per_class,
                        labels_per_class=labels_per_class)
    task = ClassificationTask(_adapter(), num_classes=4, pretrained=pretrained, freeze_encoder=freeze,
                              lr=1e-2 if freeze else 1e-3, layer_decay=1.0 if freeze else 0.75,
                              drop_path=0.0 if freeze else 0.1, warmup_epochs=1, **MODEL)
    trainer = _trainer(epochs, out, name, enable_checkpointing=False, check_val_every_n_epoch=epochs,
                       num_sanity_val_steps=0)
    trainer.fit(task, dm)
    return float(trainer.callback_metrics["val/acc"])


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    p = argparse.ArgumentParser(prog="python -m maekit.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_run", help="folder for data, logs, checkpoints and figures")
    p.add_argument("--epochs", type=int, default=20, help="pretraining epochs")
    p.add_argument("--per-class", type=int, default=200, help="generated training chips per class")
    p.add_argument("--val-per-class", type=int, default=50, help="generated validation chips per class")
    p.add_argument("--labels-per-class", type=int, default=10, help="labelled chips per class for the probe")
    p.add_argument("--probe-epochs", type=int, default=60)
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_float32_matmul_precision("high")
    out = Path(a.out)
    data = out / "data"
    started = time.time()
    if not (data / "train").is_dir():
        make_chip_dataset(data, "naip", "classification", per_class=a.per_class, val_per_class=a.val_per_class,
                          size=64)
    print(f"[1/4] sample data: {data} (4 classes of NAIP-like 64x64 4-band GeoTIFF chips)")

    L.seed_everything(0, verbose=False)
    dm = ChipDataModule(str(data), preset="naip", task="pretrain", batch_size=64)
    mae = MAEPretrainModule(_adapter(), decoder_width=128, decoder_depth=2, decoder_heads=4, lr=2e-3,
                            warmup_epochs=2, figure_every_n_epochs=max(1, a.epochs // 3), **MODEL)
    trainer = _trainer(a.epochs, out, "pretrain")
    trainer.fit(mae, dm)
    ckpt = Path(trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path)
    history = _epoch_losses(Path(trainer.logger.log_dir) / "metrics.csv")
    print(f"[2/4] pretraining loss: start {history[0]:.4f} -> end {history[-1]:.4f} "
          f"({a.epochs} epochs), checkpoint {ckpt}")

    acc_pre = probe(data, out, str(ckpt), "probe_pretrained", a.probe_epochs, a.labels_per_class)
    acc_rand = probe(data, out, None, "probe_random", a.probe_epochs, a.labels_per_class)
    print(f"[3/4] linear probe on {a.labels_per_class} labels/class: pretrained {acc_pre:.3f} vs "
          f"random init {acc_rand:.3f} (chance 0.250)")
    acc_ft = probe(data, out, str(ckpt), "finetune_pretrained", a.probe_epochs, a.labels_per_class, freeze=False)
    print(f"      full fine-tune of the pretrained encoder: {acc_ft:.3f}")
    print(f"[4/4] reconstruction figure: {mae.last_figure}")
    print(f"done in {time.time() - started:.0f} s")
    return {"loss_start": history[0], "loss_end": history[-1], "probe_pretrained": acc_pre,
            "probe_random": acc_rand, "finetune": acc_ft, "figure": str(mae.last_figure)}


def _epoch_losses(metrics_csv: Path) -> list[float]:
    """Per-epoch training loss from a CSVLogger file."""
    import csv

    with open(metrics_csv) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_epoch")]
    return [float(r["train/loss_epoch"]) for r in rows]


if __name__ == "__main__":
    main()
