"""Scaling out and surviving: resumable data order, kill -9 and resume to the same weights, and a
2-process DDP run (gloo, CPU) that matches a single-process run with the same global batch."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy

import maekit.datasets.resumable as resumable
from maekit.datasets.resumable import ResumableLoader

from .conftest import REPO

# the tiny pretraining run every test here trains: NAIP chips, nano model, no augmentation
TINY_RUN = ["--model.size", "nano", "--model.decoder_width", "32", "--model.decoder_depth", "1",
            "--model.decoder_heads", "2", "--model.adapter.init_args.patch_size", "8", "--model.figure_every_n_epochs",
            "0", "--model.warmup_epochs", "1", "--data.flips", "false", "--data.num_workers", "0", "--data.crop_size", "32",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1"]


class KillAtStep(Callback):
    """Sends SIGKILL to its own process when training reaches `step` (after the checkpoint of the
    step before was written): a kill at a known moment in the middle of an epoch."""

    def __init__(self, step: int = 4) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: object, *args: object) -> None:
        if trainer.global_step >= self.step:  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGKILL)


class RecordParamGroups(Callback):
    """Writes each optimiser group's weight decay, parameter count and summed element count as
    seen before training starts (rank 0; under FSDP, whose ranks hold shards, the elements are
    summed over the ranks)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: object, *args: object) -> None:
        groups = []
        for group in trainer.optimizers[0].param_groups:  # type: ignore[attr-defined]
            elements = torch.tensor(float(sum(p.numel() for p in group["params"])))
            if isinstance(trainer.strategy, FSDPStrategy):  # type: ignore[attr-defined]
                elements = trainer.strategy.reduce(elements, reduce_op="sum")  # type: ignore[attr-defined]
            groups.append([group["weight_decay"], len(group["params"]), int(elements)])
        if trainer.is_global_zero:  # type: ignore[attr-defined]
            Path(self.path).write_text(json.dumps(sorted(groups)))


def _override(tmp: Path, name: str, kill_at: int | None = None) -> Path:
    """A second config: last.ckpt after every step (+ an optional kill -9), CSV logs in tmp and
    the optimiser's parameter groups in `tmp/<name>_groups.json`. (`monitor: null` is spelled out:
    jsonargparse merges a callback list item by item into a base list of the same length.)"""
    slow_cb = ("    - class_path: tests.test_scale.KillAtStep\n"
               f"      init_args: {{step: {kill_at}}}\n") if kill_at is not None else ""
    slow_cb += ("    - class_path: tests.test_scale.RecordParamGroups\n"
                f"      init_args: {{path: {tmp / (name + '_groups.json')}}}\n")
    path = tmp / f"{name}.yaml"
    path.write_text(
        "trainer:\n"
        "  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n"
        f"    init_args: {{save_dir: {tmp / name}, name: run}}\n"
        "  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args: {monitor: null, every_n_train_steps: 1, save_last: true, save_top_k: 0}\n" + slow_cb)
    return path


def _maekit(args: list[str], **kwargs: object) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "maekit", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _last(run: Path) -> Path:
    """The newest last.ckpt under a run (a resumed run logs to a new version folder)."""
    found = sorted(run.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert found, f"no last.ckpt under {run}"
    return found[-1]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


# --------------------------------------------------------------------------- data order
def test_resumable_loader_order_skip_and_rank_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    data = list(range(23))
    loader = ResumableLoader(data, batch_size=4, seed=5)
    first = [b.tolist() for b in loader]
    assert first == [b.tolist() for b in ResumableLoader(data, batch_size=4, seed=5)]  # fixed by the seed
    loader.sampler.set_epoch(1)
    second = [b.tolist() for b in loader]
    assert second != first and sorted(sum(second, [])) == data
    # resuming after 3 fetched batches (2 trained + 1 prefetched) continues with batch 3
    resumed = ResumableLoader(data, batch_size=4, seed=5)
    resumed.load_state_dict({"epoch": 1, "seed": 5, "served": 3})
    assert [b.tolist() for b in resumed] == second[2:]
    # two ranks: disjoint equal shares covering the epoch
    monkeypatch.setattr(resumable, "_rank_and_world", lambda: (0, 2))
    rank0 = sum((b.tolist() for b in ResumableLoader(data, batch_size=4, seed=5)), [])
    monkeypatch.setattr(resumable, "_rank_and_world", lambda: (1, 2))
    rank1 = sum((b.tolist() for b in ResumableLoader(data, batch_size=4, seed=5)), [])
    assert len(rank0) == len(rank1) == 12 and set(rank0) | set(rank1) == set(data)
    # a small set on many ranks: a rank's only (partial) batch is kept even with drop_last
    monkeypatch.setattr(resumable, "_rank_and_world", lambda: (3, 8))
    assert len(ResumableLoader(list(range(100)), batch_size=16, drop_last=True)) == 1
    monkeypatch.setattr(resumable, "_rank_and_world", lambda: (0, 1))
    # a checkpoint that closed epoch 1: the skip belongs to epoch 1, epoch 2 starts whole
    closed = ResumableLoader(data, batch_size=4, seed=5)
    closed.load_state_dict({"epoch": 1, "seed": 5, "served": 7})
    closed.sampler.set_epoch(2)
    assert len([b for b in closed]) == 6


class RandomSamples(torch.utils.data.Dataset):
    """Each sample is a draw from torch's generator (an augmentation stands in for it)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(2) + index


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentations_repeat_on_resume_whatever_the_workers(workers: int) -> None:
    straight = ResumableLoader(RandomSamples(), batch_size=3, seed=1, num_workers=workers)
    straight.sampler.set_epoch(4)
    everything = [b for b in straight]
    resumed = ResumableLoader(RandomSamples(), batch_size=3, seed=1, num_workers=0)
    resumed.load_state_dict({"epoch": 4, "seed": 1, "served": 3})  # 2 batches trained, 1 prefetched
    again = [b for b in resumed]
    assert len(again) == 2 and all(torch.equal(a, b) for a, b in zip(again, everything[2:]))


# ------------------------------------------------------------------------- kill -9, resume
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(naip_chips: Path, tmp_path: Path) -> None:
    base = ["fit", "-c", str(REPO / "configs/naip/pretrain.yaml"), "--data.root", str(naip_chips),
            "--data.batch_size", "4", "--trainer.max_steps", "14", "--trainer.max_epochs", "10", "--model.lr", "1e-3",
            *TINY_RUN]  # lr 1e-3: every step moves weights ~1e-3, far beyond the tolerance below
    straight = _maekit([*base, "-c", str(_override(tmp_path, "straight"))])
    killed = _maekit([*base, "-c", str(_override(tmp_path, "killed", kill_at=4))])
    run = tmp_path / "killed"
    killed.wait(timeout=300)
    out = killed.stdout.read() if killed.stdout else ""
    assert killed.returncode == -signal.SIGKILL, out[-3000:]
    step = torch.load(_last(run), map_location="cpu", weights_only=False)["global_step"]
    assert step == 4  # 4 of 6 batches of the epoch done: killed mid-epoch
    early = _weights(_last(run))
    resumed = _maekit([*base, "-c", str(_override(tmp_path, "killed")), "--ckpt_path", str(_last(run))])
    _finish(resumed)
    _finish(straight)
    a, b = _weights(_last(tmp_path / "straight")), _weights(_last(run))
    assert torch.load(_last(run), map_location="cpu", weights_only=False)["global_step"] == 14
    assert a.keys() == b.keys()
    # the same batches with the same masks after the kill: per-step losses agree to float rounding
    # (a different batch or mask changes a step's loss by ~1e-2)
    straight_losses = _train_losses(tmp_path / "straight")
    resumed_losses = _train_losses(run, latest=True)
    assert len(resumed_losses) == 14 - step
    assert resumed_losses == pytest.approx(straight_losses[step:], rel=1e-5)
    # and the weights agree far closer than what the steps after the kill moved them (kernels may
    # round differently at other memory alignments, so not bit for bit)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    moved = max((a[k].float() - early[k].float()).abs().max().item() for k in a)
    assert worst < 0.02 * moved, f"resumed weights differ from the uninterrupted run by {worst} (moved {moved})"


# --------------------------------------------------------------------------------- DDP
def _train_losses(run: Path, latest: bool = False) -> list[float]:
    """Per-step training losses from the run's CSV log (the newest version's with `latest`)."""
    files = sorted(run.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if latest:
        files = files[-1:]
    assert len(files) == 1, files  # one logger: rank 0 only
    with open(files[0]) as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


def _epoch_losses(run: Path) -> list[float]:
    (metrics,) = run.rglob("metrics.csv")
    with open(metrics) as f:
        return [float(r["train/loss_epoch"]) for r in csv.DictReader(f) if r.get("train/loss_epoch")]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp_blocks"])
def test_two_processes_match_one_process(strategy: str, naip_chips: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """DDP, and FSDP sharding each transformer block (on CPU through gloo), train like one
    process with the same global batch, with the same weight-decay groups."""
    base = ["fit", "-c", str(REPO / "configs/naip/pretrain.yaml"), "--data.root", str(naip_chips),
            "--trainer.max_steps", "12", "--model.lr", "1e-3", *TINY_RUN]
    single = _maekit([*base, "-c", str(_override(tmp_path, "single")), "--data.batch_size", "8"])
    _finish(single)
    two_ranks = _maekit([*base, "-c", str(_override(tmp_path, strategy)), "--data.batch_size", "4",
                         "--trainer.devices", "2", "--trainer.strategy", strategy])
    out = _finish(two_ranks)
    assert "distributed_backend=gloo" in out and "All distributed processes registered" in out
    one, two = _train_losses(tmp_path / "single"), _train_losses(tmp_path / strategy)
    assert len(one) == len(two) == 12  # same number of optimizer steps on the same global batch
    mean_one, mean_two = sum(one[-6:]) / 6, sum(two[-6:]) / 6
    assert abs(mean_one - mean_two) / mean_one < 0.1, (one, two)
    assert one[-1] < one[0] and two[-1] < two[0]  # both learn
    # FSDP shows parameters as flat shards: the decay groups must still be the bare model's
    groups = [json.loads((tmp_path / f"{name}_groups.json").read_text()) for name in ("single", strategy)]
    assert groups[0] == groups[1] and len(groups[0]) == 2, groups
    checkpoints = list((tmp_path / strategy).rglob("last.ckpt"))
    assert len(checkpoints) == 1  # checkpointing happens once, as one ordinary file
    saved = _weights(checkpoints[0])
    assert saved.keys() == _weights(_last(tmp_path / "single")).keys()
    assert all(torch.isfinite(v).all() for v in saved.values())
    epoch_mean = _epoch_losses(tmp_path / strategy)  # reduced over both ranks' samples
    assert len(epoch_mean) >= 1 and all(v == v for v in epoch_mean)
    if strategy == "fsdp_blocks":
        _fsdp_resumes_and_writes_sharded_checkpoints_that_export(base, checkpoints[0], tmp_path, capsys)


def _fsdp_resumes_and_writes_sharded_checkpoints_that_export(base: list[str], checkpoint: Path, tmp: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A sharded run resumes from its own checkpoint; with `state_dict_type: sharded` it writes
    checkpoint folders, which `maekit export` refuses with the merge command, then reads merged."""
    from maekit.cli import main

    steps = base.index("--trainer.max_steps")
    resumed = _maekit([*base[:steps], *base[steps + 2:], "--trainer.max_steps", "14",
                       "-c", str(_override(tmp, "sharded")), "--data.batch_size", "4", "--trainer.devices", "2",
                       "--trainer.strategy", "maekit.strategies.BlockShardedStrategy",
                       "--trainer.strategy.state_dict_type", "sharded", "--ckpt_path", str(checkpoint)])
    assert "Restored all states" in _finish(resumed)
    assert len(_train_losses(tmp / "sharded")) == 2  # steps 12 and 13
    (folder,) = (tmp / "sharded").rglob("last.ckpt")
    assert folder.is_dir() and (folder / ".metadata").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["last.ckpt"]  # swapped in whole, nothing left over
    again = _maekit([*base[:steps], *base[steps + 2:], "--trainer.max_steps", "16",
                     "-c", str(_override(tmp, "sharded_again")), "--data.batch_size", "4", "--trainer.devices", "2",
                     "--trainer.strategy", "maekit.strategies.BlockShardedStrategy",
                     "--trainer.strategy.state_dict_type", "sharded", "--ckpt_path", str(folder)])
    assert "Restored all states" in _finish(again)  # resumes from the sharded folder itself
    assert len(_train_losses(tmp / "sharded_again")) == 2  # steps 14 and 15
    assert main(["export", str(folder), str(tmp / "refused")]) == 2
    assert "consolidate_checkpoint" in capsys.readouterr().err and not (tmp / "refused").exists()
    from maekit.errors import DataError
    from maekit.weights import from_pretrained, read_state_dict

    for read in (from_pretrained, read_state_dict):  # --model.pretrained FOLDER says the same
        with pytest.raises(DataError, match="consolidate_checkpoint"):
            read(folder)
    merge = subprocess.run([sys.executable, "-m", "lightning.pytorch.utilities.consolidate_checkpoint", str(folder)],
                           capture_output=True, text=True, timeout=120)
    assert merge.returncode == 0, merge.stderr[-2000:]
    merged = folder.with_name("last.ckpt.consolidated")
    assert torch.load(merged, map_location="cpu", weights_only=True)["global_step"] == 14
    assert main(["export", str(merged), str(tmp / "exported")]) == 0
    assert (tmp / "exported" / "model.safetensors").is_file()


def test_sharded_checkpoint_swap_recovers_from_a_kill_at_any_point(tmp_path: Path) -> None:
    """The file steps of `BlockShardedStrategy`'s sharded save, after kills at each point."""
    from maekit.strategies import _clear_previous_save, _swap_in

    final, partial, old = (tmp_path / name for name in ("last.ckpt", "last.ckpt.partial", "last.ckpt.old"))

    def folder(path: Path, content: str) -> None:
        path.mkdir()
        (path / ".metadata").write_text(content)

    folder(final, "step 1")
    folder(partial, "step 2")  # killed mid-write: the half-written folder goes, step 1 stays
    _clear_previous_save(final, partial, old)
    assert (final / ".metadata").read_text() == "step 1" and not partial.exists()
    folder(partial, "step 2")
    _swap_in(final, partial, old)
    assert (final / ".metadata").read_text() == "step 2" and sorted(tmp_path.iterdir()) == [final]
    final.rename(old)  # killed between the two renames of a swap: the next save puts step 2 back
    _clear_previous_save(final, partial, old)
    assert (final / ".metadata").read_text() == "step 2" and sorted(tmp_path.iterdir()) == [final]
    folder(old, "step 1")  # killed while removing the replaced folder: it is cleared, not renamed onto
    _clear_previous_save(final, partial, old)
    assert (final / ".metadata").read_text() == "step 2" and sorted(tmp_path.iterdir()) == [final]
