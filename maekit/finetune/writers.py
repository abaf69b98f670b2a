"""Writing `maekit predict` outputs: class probabilities as CSV, segmentation masks as GeoTIFF."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from maekit.files import run_output_dir, write_text_atomic


class PredictionWriter(BasePredictionWriter):
    """Writes predictions next to nothing it might overwrite half-way.

    - (B, K) class probabilities -> `output_dir/predictions.csv` (path, class, probabilities),
      written once at the end (one `predictions_rank<N>.csv` per process when distributed);
    - (B, H, W) label maps -> `output_dir/<chip stem>_pred.tif` on the source chip's grid
      (same CRS and transform), one atomic write per chip.

    Args:
        output_dir: folder for the outputs; default `predictions/` in the run's own log folder
            (a relative path is taken from `--trainer.default_root_dir`).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.given_dir = output_dir
        self.output_dir = Path(output_dir or "predictions")
        self._rows: list[list[str]] = []
        self._classes: list[str] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.output_dir = run_output_dir(trainer, self.given_dir, "predictions")
        self._rows = []
        self._classes = list(getattr(trainer.datamodule, "classes", []) or [])

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: dict[str, Any], batch_idx: int, dataloader_idx: int) -> None:
        paths = batch.get("path") or [f"sample_{batch_idx}_{i}" for i in range(len(prediction))]
        if isinstance(prediction, torch.Tensor) and prediction.dim() == 2:
            probs = prediction.float().cpu().numpy()
            for path, p in zip(paths, probs):
                k = int(p.argmax())
                name = self._classes[k] if k < len(self._classes) else str(k)
                self._rows.append([str(path), name, *(f"{v:.6f}" for v in p)])
        elif isinstance(prediction, torch.Tensor) and prediction.dim() == 3:
            for path, labels in zip(paths, prediction.cpu().numpy().astype(np.uint8)):
                from maekit.domains.multispectral.readers import write_like  # GeoTIFF masks: the geo extra

                write_like(path, labels[None], self.output_dir / f"{Path(path).stem}_pred.tif")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"maekit: predictions written under {self.output_dir}")
        if not self._rows:
            return
        width = len(self._rows[0]) - 2
        names = self._classes if len(self._classes) == width else [str(i) for i in range(width)]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "predicted", *(f"p_{n}" for n in names)])
        writer.writerows(self._rows)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        write_text_atomic(self.output_dir / name, buffer.getvalue())
