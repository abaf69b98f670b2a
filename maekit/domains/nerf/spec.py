"""NeRF vocabulary: the model-side channels of a radiance grid, density conventions and tasks."""

from __future__ import annotations

from typing import Literal

DensityMode = Literal["instant_ngp", "relu", "alpha"]
NerfTask = Literal["pretrain", "segmentation", "classification"]
#: channel names of the model side, in order
NERF_CHANNELS = ["r", "g", "b", "alpha"]
