"""3D volumes as tokens: multimodal MRI (one token per modality per 3D patch) and CT.

Modalities a case lacks are absent tokens: never visible to the encoder, never scored, and
what the decoder predicts there is the reconstruction of the missing modality. A model
pretrained on all modalities runs on any subset of them with no change of architecture.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from maekit.domains.patches import PatchGridAdapter
from maekit.errors import ConfigError
from maekit.domains.volume.spec import BRATS_MODALITIES



class VolumeAdapter(PatchGridAdapter):
    """Adapter for (B, M, X, Y, Z) volumes already normalised per modality (MONAI transforms).

    The batch may carry `modality_present` (B, M) bool: False where a case lacks a modality.

    Args:
        modalities: the model's modality names, in order (CT: `[ct]`); or a count N: N
            modalities named by the datamodule it is trained with (`connect_datamodule`), so a
            config names its modalities once, on the data (single-modality MRI/CT: `1`).
        patch_size: edge of the cubic patches in voxels (BM-MAE: 16; Hi-End-MAE: 12).
        input_modalities: modalities the data delivers, in order (default all); set from the
            datamodule when training through Lightning.
        norm_pix_loss, loss, position, max_grid: as in `PatchGridAdapter`.
    """

    channel_kind = "modality"
    datamodule_attribute = "modalities"

    def __init__(
        self,
        modalities: list[str] | int | None = None,
        patch_size: int = 16,
        input_modalities: list[str] | None = None,
        norm_pix_loss: bool = True,
        loss: Literal["mse", "l1"] = "mse",
        position: Literal["sincos", "learned"] = "sincos",
        max_grid: int = 32,
    ) -> None:
        if isinstance(modalities, int):
            if modalities < 1:
                raise ConfigError(f"modalities must be names or a positive count, got {modalities}")
            names = [f"{self._UNNAMED}{i}" for i in range(modalities)]
        else:
            names = list(modalities) if modalities is not None else list(BRATS_MODALITIES)
        super().__init__(names, [[m] for m in names], patch_size, 3, input_modalities, norm_pix_loss, loss,
                         position, max_grid)

    #: placeholder names of modalities given as a count, until the datamodule names them
    _UNNAMED = "unnamed"

    @property
    def modalities(self) -> list[str]:
        return self.channels

    @property
    def names_pending(self) -> bool:
        """True while the modalities were given as a count and no datamodule has named them."""
        return all(c.startswith(self._UNNAMED) for c in self.channels)

    def connect_datamodule(self, datamodule: Any) -> None:
        """Name count-given modalities after the datamodule's (once), then take its input modalities."""
        names = getattr(datamodule, self.datamodule_attribute, None)
        if names is not None and self.names_pending:
            names = list(names)
            self.adopt_names(names)
        super().connect_datamodule(datamodule)

    def adopt_names(self, names: list[str]) -> None:
        """Name modalities given as a count (from the datamodule, or from pretrained weights)."""
        if len(names) != len(self.channels):
            raise ConfigError(f"the adapter was built for {len(self.channels)} modalities but the data delivers "
                              f"{len(names)} ({names}): set the adapter's modalities to {len(names)} or to the names")
        rename = dict(zip(self.channels, names))
        self.channels = list(names)
        self.groups = [[rename[c] for c in g] for g in self.groups]
        self.init_args["modalities"] = list(names)  # checkpoints and exports record the names
        self.set_input_channels(list(names))

    def prepare(self, batch: dict[str, Any]) -> Tensor:
        return self.scatter_input(batch["image"].float())

    def group_presence(self, batch: dict[str, Any]) -> Tensor | None:
        have = batch.get("modality_present")
        if have is None:
            return None
        full = self.scatter_input(have.float())  # (B, M_model), absent model modalities 0
        columns = torch.tensor(self.present_groups, device=full.device)
        return full.index_select(1, columns) > 0.5

    def picture(self, native: Tensor) -> Tensor:
        """(B, M, X, Y, Z) -> (B, X, Y * M_in, 1): the middle axial slice of each input modality."""
        slices = native[:, self.input_index, :, :, native.shape[-1] // 2]  # (B, M_in, X, Y)
        return torch.cat(slices.unbind(1), dim=2).unsqueeze(-1)
