"""TensorBoard logging out of the box: `--trainer.logger TensorBoardLogger` on a shipped config."""

from __future__ import annotations

import math
import random
from pathlib import Path

from maekit.cli import main

from .conftest import CPU_TRAINER, TINY_DECODER, TINY_MODEL


def test_tensorboard_logger_writes_event_files_under_the_run_dir(naip_chips: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = random.randint(2, 4)
    root = tmp_path / "run"
    assert main(["fit", "-c", "naip/pretrain", "--trainer.logger", "TensorBoardLogger",
                 "--trainer.logger.name", "tb", "--data.root", str(naip_chips), "--data.crop_size", "16",
                 "--data.batch_size", "4", "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8",
                 "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "1",
                 "--trainer.default_root_dir", str(root), *TINY_MODEL, *TINY_DECODER, *CPU_TRAINER]) == 0
    version = root / "runs" / "tb" / "version_0"  # the config's save_dir `runs`, under the run dir
    events = sorted(version.glob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(root) for p in root.rglob("*"))
    assert (version / "hparams.yaml").exists() and (version / "checkpoints" / "last.ckpt").exists()
    log = EventAccumulator(str(version)).Reload()
    losses = [e.value for e in log.Scalars("train/loss_step")]
    assert len(losses) == steps and all(math.isfinite(v) and v > 0 for v in losses)
