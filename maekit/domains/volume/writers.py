"""Writing whole-volume segmentation predictions as NIfTI label maps on each case's source grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from maekit.files import atomic_output, run_output_dir
from maekit.lazy import lazy_import


class VolumeSegmentationWriter(BasePredictionWriter):
    """For every case, writes `<output_dir>/<case>_pred.nii.gz`: the label map that
    `VolumeSegmentationTask` predicts by sliding window over the whole volume, resampled
    (nearest neighbour) from the model's RAS grid back onto the grid of the case's source file,
    with the source's affine and header. Class indices become the declared label values again
    (`VolumeDataModule.labels`, e.g. BraTS 0, 1, 2, 4). Cases read from a DICOM folder are
    written on the model grid with its affine.

    Args:
        output_dir: folder for the outputs; default `predictions/` in the run's own log folder (a
            relative path is taken from `--trainer.default_root_dir`).
        suffix: added to the case name.
    """

    def __init__(self, output_dir: str | None = None, suffix: str = "_pred") -> None:
        super().__init__(write_interval="batch")
        self.given_dir = output_dir
        self.output_dir = Path(output_dir or "predictions")
        self.suffix = suffix

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.output_dir = run_output_dir(trainer, self.given_dir, "predictions")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"maekit: predictions written under {self.output_dir}")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: dict[str, Any], batch_idx: int, dataloader_idx: int) -> None:
        lazy_import("nibabel", "volumes")
        import nibabel as nib

        labels = prediction.cpu()
        declared = getattr(getattr(trainer, "datamodule", None), "labels", None)
        names = batch.get("case") or [f"case_{batch_idx}_{i}" for i in range(labels.shape[0])]
        affines, sources = batch.get("affine"), batch.get("source")
        for i, case in enumerate(names):
            values = labels[i].numpy().astype(np.int64)
            if declared:
                values = np.asarray(declared, dtype=np.int64)[values]
            dtype = np.uint8 if values.min() >= 0 and values.max() < 256 else np.int16
            affine = affines[i].cpu().numpy() if affines is not None else np.eye(4)
            on_source = sources is not None and Path(sources[i]).is_file()  # NIfTI, not a DICOM folder
            image = (labels_on_source_grid(values, affine, sources[i], dtype) if on_source
                     else nib.Nifti1Image(values.astype(dtype), affine))
            with atomic_output(self.output_dir / f"{case}{self.suffix}.nii.gz") as tmp:
                nib.save(image, str(tmp))


def labels_on_source_grid(labels: np.ndarray, affine: np.ndarray, source: str | Path, dtype: Any = np.uint8) -> Any:
    """A label map on the model grid (`affine`) -> a NIfTI image on the grid of `source` (its
    shape, affine and header), by nearest-neighbour resampling."""
    lazy_import("nibabel", "volumes")
    import nibabel as nib
    lazy_import("monai", "volumes")
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    src = nib.load(str(source))
    shape = src.shape[:3]
    moving = MetaTensor(torch.from_numpy(labels.astype(np.float32))[None], affine=torch.as_tensor(affine))
    reference = MetaTensor(torch.zeros(1, *shape), affine=torch.as_tensor(src.affine))
    data = ResampleToMatch(mode="nearest", padding_mode="zeros")(moving, reference)[0].numpy()
    data = np.rint(data).astype(dtype)
    header = src.header.copy()
    header.set_data_dtype(dtype)
    header["scl_slope"], header["scl_inter"] = np.nan, np.nan
    return nib.Nifti1Image(data, src.affine, header)
