"""Promises the docs make about pretraining, each checked against its own formula: the learning
rate's batch scaling, the norm-pix target, the no-decay set, per-rank masks and `compile: true`."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from maekit.datasets import ChipDataModule
from maekit.domains import MultispectralAdapter, VolumeAdapter
from maekit.errors import ConfigError
from maekit.pretrain import MAEPretrainModule, RandomMasking
from maekit.seeding import seed_training_batch

NAIP_BANDS = ["R", "G", "B", "NIR"]


def _tiny_mae(**kwargs: Any) -> MAEPretrainModule:
    adapter = MultispectralAdapter(preset="naip", patch_size=8, position="learned", max_grid=8)
    return MAEPretrainModule(adapter, size="nano", decoder_width=32, decoder_depth=1, decoder_heads=2,
                             figure_every_n_epochs=0, **kwargs)


def _trainer(root: Path, **kwargs: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                     limit_val_batches=0, num_sanity_val_steps=0, **kwargs)


class Snapshot(Callback):
    """Keeps the optimiser's parameter groups as set up, and every training step's loss."""

    def __init__(self) -> None:
        self.groups: list[dict[str, Any]] = []
        self.losses: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.groups = [dict(g) for g in trainer.optimizers[0].param_groups]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))


# ------------------------------------------------------------------------ learning rate
def test_lr_is_base_lr_times_effective_batch_over_256_and_the_no_decay_set(naip_chips: Path,
                                                                          tmp_path: Path) -> None:
    """lr = base_lr * (batch * accumulate_grad_batches * devices * nodes) / 256, read back from the
    optimiser that `configure_optimizers` built; biases, norms, the mask token, group embeddings
    and the learned position table take no weight decay, every other weight does."""
    rng = random.Random()
    batch, accumulate = rng.choice([2, 3, 4]), rng.choice([2, 3])
    base_lr, decay = rng.uniform(1e-4, 1e-3), rng.uniform(0.01, 0.2)
    model = _tiny_mae(base_lr=base_lr, weight_decay=decay)
    snap = Snapshot()
    _trainer(tmp_path, max_steps=1, accumulate_grad_batches=accumulate, callbacks=[snap]).fit(
        model, ChipDataModule(str(naip_chips), task="pretrain", batch_size=batch))
    expected = base_lr * batch * accumulate / 256
    # LambdaLR keeps each group's lr before warm-up scaling as `initial_lr`
    assert [g["initial_lr"] for g in snap.groups] == pytest.approx([expected] * len(snap.groups), rel=1e-12)

    decay_of = {id(p): g["weight_decay"] for g in snap.groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(decay_of) == sum(len(g["params"]) for g in snap.groups) == len(named)  # each exactly once
    no_decay_tables = {"mae.mask_token", "mae.decoder_group.weight", "mae.adapter.group_embed.weight",
                       "mae.adapter.pos_table.table"}
    for name, param in named.items():
        leaf = name.rsplit(".", 2)[-2]
        exempt = name.endswith(".bias") or leaf.startswith("norm") or name in no_decay_tables
        assert decay_of[id(param)] == (0.0 if exempt else decay), name
    assert {n for n in named if n.endswith("norm1.weight")} and "mae.encoder.norm.weight" in named


def test_effective_batch_counts_devices_and_nodes() -> None:
    """`trainer.world_size`, which the effective batch multiplies by, is devices x nodes (checked
    without launching processes; the 2-process run in test_scale checks it live)."""
    devices, nodes = random.choice([2, 3]), random.choice([2, 4])
    trainer = L.Trainer(accelerator="cpu", devices=devices, num_nodes=nodes, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert trainer.world_size == devices * nodes


class _Samples(torch.utils.data.Dataset):
    """Random 4-band 16x16 chips as a plain dataset (no datamodule)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": torch.rand(4, 16, 16) * 255}


class _Batches(torch.utils.data.Sampler):
    """A batch sampler that does not say its batch size."""

    def __iter__(self) -> Any:
        return iter([[0, 1, 2], [3, 4, 5]])

    def __len__(self) -> int:
        return 2


def test_lr_scaling_without_a_datamodule_batch_size(tmp_path: Path) -> None:
    """Without a datamodule `batch_size`, the training loader's batch size scales the lr; when
    nothing says the batch size, `base_lr` is refused with an error naming the fix (no guess)."""
    batch, base_lr = random.choice([2, 3, 5]), random.uniform(1e-4, 1e-3)
    snap = Snapshot()
    _trainer(tmp_path, max_steps=1, callbacks=[snap]).fit(
        _tiny_mae(base_lr=base_lr), torch.utils.data.DataLoader(_Samples(), batch_size=batch))
    assert snap.groups[0]["initial_lr"] == pytest.approx(base_lr * batch / 256, rel=1e-12)

    unsized = torch.utils.data.DataLoader(_Samples(), batch_sampler=_Batches())
    with pytest.raises(ConfigError, match=r"no integer `batch_size`.*--model\.lr"):
        _trainer(tmp_path, max_steps=1).fit(_tiny_mae(base_lr=base_lr), unsized)
    snap = Snapshot()  # an absolute lr needs no batch size
    _trainer(tmp_path, max_steps=1, callbacks=[snap]).fit(_tiny_mae(lr=3e-4), unsized)
    assert snap.groups[0]["initial_lr"] == pytest.approx(3e-4)


# ----------------------------------------------------------------------------- norm-pix
def _reference_target(values: torch.Tensor) -> torch.Tensor:
    """MAE's normalised-pixel target of one token's values: (v - mean) / sqrt(var + 1e-6), with
    the unbiased variance (`Tensor.var`'s default, as in facebookresearch/mae)."""
    return (values - values.mean()) / (values.var() + 1e-6).sqrt()


def test_norm_pix_target_of_uneven_band_groups_follows_the_formula() -> None:
    """Per patch and band group, over the group's real values only: (v - mean) / sqrt(var + 1e-6);
    the padding of narrower groups stays 0, the loss averages only real values, and
    `values_from_prediction` undoes the normalisation."""
    g = torch.Generator().manual_seed(random.randrange(2**31))
    patch = random.choice([2, 4])
    grid = (random.choice([2, 3]), random.choice([2, 3]))
    groups = [["R", "G", "B"], ["NIR"]] if random.random() < 0.5 else [["R"], ["G", "B", "NIR"]]
    mean = (torch.rand(4, generator=g) * 50).tolist()
    std = (torch.rand(4, generator=g) * 20 + 5).tolist()
    adapter = MultispectralAdapter(bands=NAIP_BANDS, groups=groups, patch_size=patch, mean=mean, std=std)
    image = torch.rand(3, 4, grid[0] * patch, grid[1] * patch, generator=g) * 255
    tokens = adapter.tokenize({"image": image})
    target = adapter.target(tokens)
    x = (image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    num = grid[0] * grid[1]
    for slot, names in enumerate(groups):
        width = len(names) * patch * patch
        bands = [NAIP_BANDS.index(n) for n in names]
        for b in range(image.shape[0]):
            for i in range(grid[0]):
                for j in range(grid[1]):
                    token = slot * num + i * grid[1] + j
                    assert tokens.coords[b, token].tolist() == [i, j]
                    values = x[b, bands, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].reshape(-1)
                    assert torch.allclose(tokens.values[b, token, :width], values, atol=1e-5)
                    assert torch.allclose(target[b, token, :width], _reference_target(values), atol=1e-4)
                    assert not target[b, token, width:].any()  # padding of the narrower group
    pred = torch.randn(target.shape, generator=g)
    loss = adapter.loss(pred, target, tokens)
    widths = torch.tensor([len(n) * patch * patch for n in groups]).repeat_interleave(num)
    for token in range(tokens.values.shape[1]):
        w = int(widths[token])
        assert torch.allclose(loss[:, token], ((pred[:, token, :w] - target[:, token, :w]) ** 2).mean(-1))
    assert torch.allclose(adapter.values_from_prediction(target, tokens), tokens.values, atol=1e-4)


def test_norm_pix_target_of_volumes_follows_the_formula() -> None:
    """The same for 3-D patches, one token per modality and patch; a flat patch (variance 0)
    divides by sqrt(1e-6), not by 0."""
    g = torch.Generator().manual_seed(random.randrange(2**31))
    patch, modalities = 2, ["t1", "t2"]
    adapter = VolumeAdapter(modalities, patch_size=patch)
    volume = torch.randn(2, 2, 4, 4, 6, generator=g) * 3 + 1
    volume[0, 1, :2, :2, :2] = 0.7  # one flat patch
    tokens = adapter.tokenize({"image": volume})
    target = adapter.target(tokens)
    grid = (2, 2, 3)
    for b in range(2):
        for m in range(2):
            for token_in_grid, (i, j, k) in enumerate((i, j, k) for i in range(grid[0]) for j in range(grid[1])
                                                      for k in range(grid[2])):
                token = m * 12 + token_in_grid
                values = volume[b, m, i * 2:i * 2 + 2, j * 2:j * 2 + 2, k * 2:k * 2 + 2].reshape(-1)
                assert torch.allclose(target[b, token], _reference_target(values), atol=1e-4)
    assert target[0, 12].abs().max() < 1e-3 and torch.isfinite(target).all()  # 0 up to the mean's rounding


# --------------------------------------------------------------------------- rank seeds
def _trainer_at(batch: int, rank: int) -> Any:
    """What `seed_training_batch` reads from a trainer: batches fetched so far, and the rank."""
    progress = SimpleNamespace(total=SimpleNamespace(ready=batch))
    return SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
                           global_rank=rank)


def test_ranks_never_mask_alike_and_a_batch_masks_alike_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masks drawn after seeding batch k on rank r: different on another rank (DDP would otherwise
    see the same masks on every rank) and on another batch, identical for the same (k, r)."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(random.randrange(1000)))
    adapter = MultispectralAdapter(preset="naip", patch_size=4)
    tokens = adapter.tokenize({"image": torch.rand(4, 4, 16, 16) * 255})
    masking = RandomMasking(random.choice([0.6, 0.75, 0.9]))

    def mask(batch: int, rank: int) -> torch.Tensor:
        seed_training_batch(_trainer_at(batch, rank))
        return masking(tokens).mask

    start = random.randrange(10_000)
    for batch in range(start, start + 5):
        ranks = [mask(batch, rank) for rank in range(4)]
        assert all(not torch.equal(ranks[a], ranks[b]) for a in range(4) for b in range(a + 1, 4)), batch
        assert torch.equal(mask(batch, 2), ranks[2])
        assert not torch.equal(mask(batch + 1, 0), ranks[0])


# ---------------------------------------------------------------------------- compile
def _fit_losses(root: Path, data: Path, backend: str | None) -> tuple[MAEPretrainModule, list[float]]:
    L.seed_everything(11, workers=True)
    model = _tiny_mae(lr=1e-3, compile=backend is not None, compile_backend=backend or "inductor")
    snap = Snapshot()
    _trainer(root, max_steps=2, callbacks=[snap]).fit(model, ChipDataModule(str(data), task="pretrain", batch_size=8))
    return model, snap.losses


INDUCTOR = pytest.mark.skipif(
    os.environ.get("MAEKIT_TEST_INDUCTOR") != "1",
    reason="inductor's first (uncached) CPU compile of this model takes 1-4 minutes on 2 cores; "
           "MAEKIT_TEST_INDUCTOR=1 runs it (aot_eager checks the same tracing in seconds)")


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=INDUCTOR)])
def test_compile_true_trains_compiled_and_matches_eager(backend: str, naip_chips: Path, tmp_path: Path) -> None:
    """`compile: true` wraps the encoder and decoder in torch.compile, a fit runs the compiled
    graphs (dynamo captures and runs them: forward and, through AOTAutograd, backward), and its
    losses match an eager fit of the same seed."""
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    if backend == "inductor" and shutil.which("g++") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile's CPU backend (inductor) needs a C++ compiler")
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled, compiled_losses = _fit_losses(tmp_path / "compiled", naip_chips, backend)
        assert isinstance(compiled.mae.encoder, OptimizedModule) and isinstance(compiled.mae.decoder, OptimizedModule)
        # one graph each for the encoder and the decoder, no graph breaks, no recompiles at step 2
        assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
        assert counters["frames"]["ok"] == 2 and not counters["graph_break"], dict(counters["graph_break"])
        if backend == "aot_eager":
            assert counters["aot_autograd"]["total"] >= 2, dict(counters["aot_autograd"])
    finally:
        torch._dynamo.reset()
    _, eager_losses = _fit_losses(tmp_path / "eager", naip_chips, None)
    assert len(compiled_losses) == len(eager_losses) == 2
    # step 2 follows an update computed by the compiled backward
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
