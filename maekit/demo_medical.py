"""`make demo-medical`: multimodal brain-MRI phantoms with missing modalities; pretrain a small
MAE on all cases, then segment the tumour from a few labelled cases, starting from the
pretrained encoder and from scratch (same recipe), and print validation Dice of both.

    python -m maekit.demo_medical [--out demo_medical] [--epochs 30] [--labelled 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from maekit.domains.volume import VolumeDataModule
from maekit.domains.volume.samples import make_brats_dataset
from maekit.demo_common import quiet, quiet_trainer
from maekit.domains.volume import VolumeAdapter
from maekit.finetune import VolumeSegmentationTask
from maekit.pretrain import GroupDirichletMasking, MAEPretrainModule

MODALITIES = ["t1", "t1ce", "t2", "flair"]
ROI, PATCH, SIZE = 32, 8, "micro"


def _adapter() -> VolumeAdapter:
    return VolumeAdapter(MODALITIES, patch_size=PATCH, norm_pix_loss=False)


def segment(data: Path, out: Path, pretrained: str | None, labelled: int, epochs: int) -> list[float]:
    """Fine-tune on `labelled` cases; Dice per tumour class on the held-out cases."""
    L.seed_everything(0, verbose=False)
    dm = VolumeDataModule(str(data), modalities=MODALITIES, roi_size=[ROI] * 3, labels=[0, 1, 2, 4], batch_size=2,
                          val_fraction=0.5, val_whole_volumes=True)
    dm.setup("fit")
    dm.datasets["train"].cases = dm.datasets["train"].cases[:labelled]
    task = VolumeSegmentationTask(_adapter(), num_classes=4, roi_size=[ROI] * 3, size=SIZE, pretrained=pretrained,
                                  lr=1e-3, layer_decay=0.75, feature_size=8, warmup_epochs=2)
    trainer = quiet_trainer(epochs, out, enable_checkpointing=False, check_val_every_n_epoch=epochs,
                       num_sanity_val_steps=0)
    trainer.fit(task, dm)
    return [float(trainer.callback_metrics[f"val/dice_{k}"]) for k in (1, 2, 3)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m maekit.demo_medical", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_medical")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--size", type=int, default=40, help=f"phantom edge in voxels (at least the {ROI}-voxel crop)")
    p.add_argument("--epochs", type=int, default=30, help="pretraining epochs")
    p.add_argument("--labelled", type=int, default=4, help="labelled cases for fine-tuning")
    p.add_argument("--finetune-epochs", type=int, default=40)
    a = p.parse_args(argv)
    if a.size < ROI:
        p.error(f"--size {a.size} is smaller than the {ROI}-voxel training crop")
    quiet()
    out, started = Path(a.out), time.time()
    data = out / "data"
    if not data.is_dir():
        make_brats_dataset(data, cases=a.cases, size=a.size, missing_fraction=0.3)
    print(f"[1/3] {a.cases} brain phantoms (BraTS 2021 layout, ~30% of cases lack modalities): {data}")
    L.seed_everything(0, verbose=False)
    dm = VolumeDataModule(str(data), modalities=MODALITIES, roi_size=[ROI] * 3, batch_size=4, val_fraction=0.1)
    mae = MAEPretrainModule(_adapter(), size=SIZE, decoder_width=96, decoder_depth=2, decoder_heads=4, lr=1.5e-3,
                            warmup_epochs=2, masking=GroupDirichletMasking(0.75, num_groups=4), figure_every_n_epochs=0)
    trainer = quiet_trainer(a.epochs, out / "pretrain")
    trainer.fit(mae, dm)
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    print(f"[2/3] pretrained {a.epochs} epochs (final train loss {float(trainer.callback_metrics['train/loss_epoch']):.4f})")
    pre = segment(data, out / "seg_pretrained", ckpt, a.labelled, a.finetune_epochs)
    scratch = segment(data, out / "seg_scratch", None, a.labelled, a.finetune_epochs)
    fmt = lambda d: " / ".join(f"{v:.3f}" for v in d) + f" (mean {sum(d) / len(d):.3f})"  # noqa: E731
    print(f"[3/3] tumour Dice necrosis / edema / enhancing with {a.labelled} labelled cases:")
    print(f"      pretrained {fmt(pre)}")
    print(f"      scratch    {fmt(scratch)}")
    print(f"done in {time.time() - started:.0f} s")
    return {"pretrained": pre, "scratch": scratch}


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
