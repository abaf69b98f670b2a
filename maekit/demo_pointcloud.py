"""`make demo-pointcloud`: a seeded ModelNet-like dataset (meshes and partial scans of six shape
classes, written as PLY/OFF); pretrain a small Point-MAE on it, then score the frozen encoder with
a linear SVM (C by cross-validation) and the few-shot protocol, against the same encoder at its
random initialisation.

    python -m maekit.demo_pointcloud [--out demo_pointcloud] [--epochs 30]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from maekit.domains.pointcloud import PointCloudDataModule
from maekit.domains.pointcloud.samples import make_pointcloud_dataset
from maekit.demo_common import quiet, quiet_trainer
from maekit.domains.pointcloud import PointCloudAdapter
from maekit.finetune.frozen import FrozenFeatureEvaluation
from maekit.pretrain import MAEPretrainModule, RandomMasking

POINTS, GROUPS, GROUP_SIZE, SIZE = 512, 32, 24, "micro"


def _adapter() -> PointCloudAdapter:
    return PointCloudAdapter(groups=GROUPS, group_size=GROUP_SIZE)


def _data(root: Path, task: str, augment: list[str]) -> PointCloudDataModule:
    return PointCloudDataModule(str(root), task=task, num_points=POINTS, augment=augment, batch_size=16,
                                mesh_points=2048)  # type: ignore[arg-type]


def frozen_scores(data: Path, pretrained: str | None, out: Path, query: int) -> dict[str, float]:
    """Linear-SVM accuracy on the test split and 5-way 5-shot accuracy of a frozen encoder."""
    scores: dict[str, float] = {}
    for protocol in ("svm", "fewshot"):
        L.seed_everything(0, verbose=False)
        model = FrozenFeatureEvaluation(_adapter(), size=SIZE, pretrained=pretrained, protocol=protocol,  # type: ignore[arg-type]
                                        n_way=5, k_shot=5, query=query, folds=10)
        quiet_trainer(1, out, enable_checkpointing=False, num_sanity_val_steps=0,
                 limit_val_batches=1.0 if protocol == "svm" else 0).fit(model, _data(data, "classification", []))
        scores.update(model.results)
    return scores


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m maekit.demo_pointcloud", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_pointcloud")
    p.add_argument("--per-class", type=int, default=24, help="training samples per class (at least 6: 5 shots + 1 query)")
    p.add_argument("--test-per-class", type=int, default=8, help="test samples per class")
    p.add_argument("--epochs", type=int, default=30, help="pretraining epochs")
    a = p.parse_args(argv)
    if a.per_class < 6:
        p.error("--per-class must be at least 6 (the few-shot protocol takes 5 shots and 1 query per class)")
    quiet()
    out, started = Path(a.out), time.time()
    data = out / "data"
    if not data.is_dir():
        make_pointcloud_dataset(data, per_class=a.per_class, test_per_class=a.test_per_class, points=POINTS, seed=0)
    print(f"[1/3] 6 shape classes x {a.per_class} training + {a.test_per_class} test samples (PLY/OFF meshes, ~30% partial scans): {data}")
    L.seed_everything(0, verbose=False)
    mae = MAEPretrainModule(_adapter(), size=SIZE, decoder_width=128, decoder_depth=2, decoder_heads=4, lr=1e-3,
                            betas=(0.9, 0.999), warmup_epochs=3, masking=RandomMasking(0.6), figure_every_n_epochs=0)
    trainer = quiet_trainer(a.epochs, out / "pretrain")
    trainer.fit(mae, _data(data, "pretrain", ["scale_translate"]))
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    print(f"[2/3] pretrained {a.epochs} epochs: Chamfer-L2 train loss {float(trainer.callback_metrics['train/loss_epoch']):.4f},"
          f" validation {float(trainer.callback_metrics['val/loss']):.4f}")
    query = min(10, a.per_class - 5)
    pre = frozen_scores(data, ckpt, out / "eval", query)
    scratch = frozen_scores(data, None, out / "eval", query)
    print(f"[3/3] frozen encoder, linear SVM on the test split | 5-way 5-shot, {query} queries (10 folds):")
    for name, s in (("pretrained", pre), ("random init", scratch)):
        print(f"      {name:11s} SVM {s['svm_acc']:.3f} (C={s['svm_c']:g}) | few-shot {s['fewshot_acc']:.3f} ± {s['fewshot_std']:.3f}")
    print(f"done in {time.time() - started:.0f} s")
    return {"pretrained": pre, "scratch": scratch}


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
