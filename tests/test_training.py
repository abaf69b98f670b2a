"""Optimiser grouping, layer-wise lr decay, pretrained loading and repeatable training."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from maekit.cli import main
from maekit.datasets import ChipDataModule
from maekit.domains import MultispectralAdapter
from maekit.errors import DataError
from maekit.finetune import ClassificationTask
from maekit.optim import param_groups, parameter_ranks, warmup_cosine
from maekit.pretrain import MAEPretrainModule

from .conftest import CPU_TRAINER, REPO, TINY_DECODER, TINY_MODEL


def tiny_task(**kwargs: object) -> ClassificationTask:
    return ClassificationTask(MultispectralAdapter(preset="naip", patch_size=8), num_classes=4, size="nano",
                              **kwargs)  # type: ignore[arg-type]


def test_layer_decay_scales_lr_by_depth_and_skips_decay_on_norms() -> None:
    task = tiny_task(layer_decay=0.5)
    depth = task.encoder.depth
    groups = param_groups(task, 0.05, {"adapter.group_embed.weight"}, task._layer_of, depth + 1, 0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(task.named_parameters())
    assert scale_of[id(named["head.fc.weight"])] == 1.0
    assert scale_of[id(named[f"encoder.blocks.{depth - 1}.mlp.fc1.weight"])] == 0.5
    assert scale_of[id(named["encoder.blocks.0.mlp.fc1.weight"])] == 0.5**depth
    assert scale_of[id(named["adapter.patch_embed.0.weight"])] == 0.5 ** (depth + 1)
    assert decay_of[id(named["encoder.blocks.0.mlp.fc1.weight"])] == 0.05
    for name in ("encoder.blocks.0.norm1.weight", "encoder.blocks.0.mlp.fc1.bias", "adapter.group_embed.weight"):
        assert decay_of[id(named[name])] == 0.0


def test_groups_see_through_wrappers_and_flattened_parameters() -> None:
    """torch.compile and FSDP insert name parts (`_orig_mod`, `_fsdp_wrapped_module`) and FSDP
    flattens parameters to 1-D: layer decay and weight decay must still follow the bare model."""
    task = tiny_task(layer_decay=0.5)
    depth = task.encoder.depth
    bare = param_groups(task, 0.05, (), task._layer_of, depth + 1, 0.5)
    ranks = parameter_ranks(task)
    task.encoder = torch.compile(task.encoder)  # type: ignore[assignment]
    with torch.no_grad():
        for param in task.parameters():  # what FSDP's flat shards look like
            param.data = param.data.reshape(-1)
    assert any("_orig_mod" in name for name, _ in task.named_parameters())
    wrapped = param_groups(task, 0.05, (), task._layer_of, depth + 1, 0.5, ranks=ranks)

    def summary(groups: list[dict]) -> list[tuple[float, float, int]]:
        return sorted((g["weight_decay"], g["lr_scale"], len(g["params"])) for g in groups)

    assert summary(wrapped) == summary(bare) and len(bare) > 2 * depth


def test_linear_probe_optimises_only_the_head() -> None:
    task = tiny_task(freeze_encoder=True)
    groups = param_groups(task, 0.05)
    params = {id(p) for g in groups for p in g["params"]}
    assert params == {id(p) for p in task.head.parameters() if p.requires_grad}


def test_warmup_then_cosine() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.05


def test_pretrained_weights_of_another_size_are_refused(tmp_path: Path) -> None:
    mae = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8), size="nano")
    path = tmp_path / "nano.ckpt"
    torch.save({"state_dict": mae.state_dict()}, path)
    task = tiny_task(pretrained=str(path))  # same size: loads
    assert torch.equal(task.encoder.blocks[0].attn.qkv.weight, mae.mae.encoder.blocks[0].attn.qkv.weight)
    with pytest.raises(DataError, match=r"nano\.ckpt: does not fit this model"):
        ClassificationTask(MultispectralAdapter(preset="naip", patch_size=8), num_classes=4, size="micro",
                           pretrained=str(path))
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk\.ckpt: cannot be loaded safely"):
        tiny_task(pretrained=str(tmp_path / "junk.ckpt"))


def _pretrain_once(root: Path, out: Path) -> dict[str, torch.Tensor]:
    L.seed_everything(7, workers=True)
    dm = ChipDataModule(str(root), task="pretrain", batch_size=8)
    model = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8, position="learned", max_grid=8),
                              size="nano", decoder_width=32, decoder_depth=1, decoder_heads=2,
                              figure_every_n_epochs=0)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=out, deterministic=True).fit(model, dm)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_runs_with_the_same_seed_are_identical(naip_chips: Path, tmp_path: Path) -> None:
    a = _pretrain_once(naip_chips, tmp_path / "a")
    b = _pretrain_once(naip_chips, tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "mae.adapter.pos_table.table" in a


def test_warmup_follows_steps_per_epoch_with_max_steps(naip_chips: Path, tmp_path: Path) -> None:
    dm = ChipDataModule(str(naip_chips), task="pretrain", batch_size=8)  # 3 batches per epoch
    model = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8), size="nano", decoder_width=32,
                              decoder_depth=1, decoder_heads=2, lr=1e-3, warmup_epochs=1, figure_every_n_epochs=0)
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    lrs = [scheduler.lr_lambdas[0](step) for step in range(12)]
    assert lrs[2] == pytest.approx(1.0)  # warm-up over the 3 steps of one epoch
    assert lrs[11] < 0.1  # then cosine down


def test_loading_warns_about_missing_weights_and_accepts_compiled_checkpoints(tmp_path: Path) -> None:
    mae = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8), size="nano")
    state = {k.replace("mae.encoder.", "mae.encoder._orig_mod."): v for k, v in mae.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "compiled.ckpt")
    task = tiny_task(pretrained=str(tmp_path / "compiled.ckpt"))
    assert torch.equal(task.encoder.norm.weight, mae.mae.encoder.norm.weight)
    encoder_only = {k: v for k, v in mae.state_dict().items() if k.startswith("mae.encoder.")}
    torch.save({"state_dict": encoder_only}, tmp_path / "encoder_only.ckpt")
    with pytest.warns(UserWarning, match="has no weights for adapter"):
        tiny_task(pretrained=str(tmp_path / "encoder_only.ckpt"))


class PoisonAt(Callback):
    """A diverging run on cue at `step`: `weights` writes NaN into the encoder's final norm (the
    loss turns NaN), `gradient` writes NaN into one gradient (the loss is still finite; the update
    poisons the weights)."""

    def __init__(self, step: int, what: str = "weights") -> None:
        self.step, self.what = step, what

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.step and self.what == "weights":
            with torch.no_grad():
                pl_module.mae.encoder.norm.weight.fill_(float("nan"))  # type: ignore[union-attr]

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.step and self.what == "gradient":
            pl_module.mae.encoder.norm.weight.grad.fill_(float("nan"))  # type: ignore[union-attr]


@pytest.mark.parametrize(("what", "checked", "message"), [
    ("weights", "save", "loss became NaN or infinite at step 3"),
    ("gradient", "save", "weights became NaN or infinite by step 4 although the loss stayed finite"),
    ("weights", "periodic", "loss became NaN or infinite at step 3"),
])
def test_a_diverging_run_stops_with_a_clear_error_and_no_poisoned_checkpoint(
        what: str, checked: str, message: str, naip_chips: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Caught before the next checkpoint (log_every_n_steps 50), or by the periodic check when no
    checkpoint is written per step (log_every_n_steps 1)."""
    per_step_checkpoints = ("    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                            "      init_args: {monitor: null, every_n_train_steps: 1, save_last: true, save_top_k: 0}\n")
    override = tmp_path / "poison.yaml"
    override.write_text(
        "trainer:\n"
        "  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n"
        f"    init_args: {{save_dir: {tmp_path}, name: run}}\n"
        "  callbacks:\n" + (per_step_checkpoints if checked == "save" else "") +
        "    - class_path: tests.test_training.PoisonAt\n"
        f"      init_args: {{step: 3, what: {what}}}\n")
    code = main(["fit", "-c", str(REPO / "configs/naip/pretrain.yaml"), "-c", str(override),
                 "--data.root", str(naip_chips), "--data.crop_size", "32", "--data.batch_size", "4",
                 "--data.num_workers", "0", "--model.adapter.init_args.patch_size", "8",
                 "--model.figure_every_n_epochs", "0", "--trainer.max_steps", "8", *TINY_MODEL, *TINY_DECODER,
                 *CPU_TRAINER, "--trainer.log_every_n_steps", "50" if checked == "save" else "1"])
    assert code == 2
    assert message in capsys.readouterr().err
    saved_files = list(tmp_path.rglob("*.ckpt"))
    if checked == "periodic":  # stopped at step 3, before the epoch-end checkpoint
        assert saved_files == []
        return
    (last,) = saved_files
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3  # the checkpoint after step 3 (the bad one) was refused
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
