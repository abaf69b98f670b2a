"""Shared fixtures: tiny generated datasets in the real on-disk layouts."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from maekit.datasets.samples import make_chip_dataset

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def naip_chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4-class NAIP-like classification chips, 32x32, some with nodata wedges."""
    return make_chip_dataset(tmp_path_factory.mktemp("naip"), "naip", "classification", per_class=6,
                             val_per_class=2, size=32, nodata_fraction=0.3, seed=1)


@pytest.fixture(scope="session")
def naip_segmentation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chip_dataset(tmp_path_factory.mktemp("naipseg"), "naip", "segmentation", per_class=2,
                             val_per_class=1, size=32, seed=2)


@pytest.fixture(scope="session")
def toa_chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chip_dataset(tmp_path_factory.mktemp("toa"), "toa", "classification", per_class=3,
                             val_per_class=1, size=16, file_format="npz", seed=3)


TINY_MODEL = ["--model.size", "nano"]
TINY_DECODER = ["--model.decoder_width", "32", "--model.decoder_depth", "1", "--model.decoder_heads", "2"]
CPU_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1"]
