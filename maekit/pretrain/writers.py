"""Writing reconstructions of missing modalities as NIfTI, with a picture beside each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from maekit.files import atomic_output, run_output_dir
from maekit.tokens import NamedChannels


class VolumeReconstructionWriter(BasePredictionWriter):
    """For every case and every modality it lacks (`modality_present` False), writes the
    reconstruction as `<output_dir>/<case>_<modality>_synth.nii.gz`, resampled back onto the
    grid of the case's source file (its affine and header; intensities in the normalised units
    the model sees), plus `<case>_reconstruction.png`: middle axial slices of the input and the
    reconstruction.

    Args:
        output_dir: folder for the outputs; default `reconstructions/` in the run's own log folder (a
            relative path is taken from `--trainer.default_root_dir`).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.given_dir = output_dir
        self.output_dir = Path(output_dir or "reconstructions")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.output_dir = run_output_dir(trainer, self.given_dir, "reconstructions")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            print(f"maekit: reconstructions written under {self.output_dir}")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: dict[str, Any], batch_idx: int, dataloader_idx: int) -> None:
        import nibabel as nib

        recon = prediction["reconstruction"].float().cpu()
        present = batch["modality_present"].cpu()
        adapter = pl_module.adapter
        modalities = list(adapter.channels) if isinstance(adapter, NamedChannels) else []
        names = batch.get("case") or [f"case_{batch_idx}_{i}" for i in range(recon.shape[0])]
        affines = batch.get("affine")
        sources = batch.get("source")
        input_index = pl_module.adapter.input_index.cpu().tolist()  # type: ignore[union-attr]
        for i, case in enumerate(names):
            affine = affines[i].cpu().numpy() if affines is not None else np.eye(4)
            for slot, channel in enumerate(input_index):
                if bool(present[i, slot]):
                    continue
                volume = recon[i, channel].numpy().astype(np.float32)
                target = self.output_dir / f"{case}_{modalities[channel]}_synth.nii.gz"
                on_source = sources is not None and Path(sources[i]).is_file()  # NIfTI, not a DICOM folder
                image = _on_source_grid(volume, affine, sources[i]) if on_source else nib.Nifti1Image(volume, affine)
                with atomic_output(target) as tmp:
                    nib.save(image, str(tmp))
            self._picture(batch["image"][i].float().cpu(), recon[i, input_index], case)

    def _picture(self, given: torch.Tensor, recon: torch.Tensor, case: str) -> None:  # noqa: D102
        from matplotlib.figure import Figure  # no pyplot: leaves the notebook backend alone

        z = given.shape[-1] // 2
        fig = Figure(figsize=(2.5 * given.shape[0], 5))
        axes = fig.subplots(2, given.shape[0], squeeze=False)
        for m in range(given.shape[0]):
            for row, (vol, title) in enumerate(((given, "input"), (recon, "reconstruction"))):
                axes[row][m].imshow(vol[m, :, :, z].T.numpy(), cmap="gray", origin="lower")
                axes[row][m].set_axis_off()
                axes[row][m].set_title(f"{title} {m}", fontsize=8)
        fig.tight_layout()
        with atomic_output(self.output_dir / f"{case}_reconstruction.png") as tmp:
            fig.savefig(tmp, dpi=80, format="png")


def _on_source_grid(volume: np.ndarray, affine: np.ndarray, source: str) -> Any:
    """`volume` on the (RAS, resampled) model grid -> a NIfTI image on the grid of `source`,
    with the source's affine and header (data type float32)."""
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    src = nib.load(source)
    shape = src.shape[:3]
    moving = MetaTensor(torch.from_numpy(volume)[None], affine=torch.as_tensor(affine))
    reference = MetaTensor(torch.zeros(1, *shape), affine=torch.as_tensor(src.affine))
    data = ResampleToMatch(mode="bilinear")(moving, reference)[0].numpy().astype(np.float32)
    header = src.header.copy()
    header.set_data_dtype(np.float32)
    header["scl_slope"], header["scl_inter"] = np.nan, np.nan
    return nib.Nifti1Image(data, src.affine, header)
