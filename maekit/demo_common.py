"""What the `make demo-*` scripts share: a quiet Lightning trainer and quiet logs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L


def quiet() -> None:
    """Keep the demos' output to their own results."""
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def quiet_trainer(epochs: int, root: Path, **kwargs: Any) -> L.Trainer:
    """A single-device trainer without a logger, progress bar or model summary."""
    return L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, default_root_dir=root, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=5, **kwargs)
