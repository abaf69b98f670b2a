"""Exports to timm and MONAI: the other library's own forward pass gives maekit's features.

Every parameter is randomised (group embeddings, position tables, norms and biases too), so a
wrong key, a transposed patch layout or a dropped fold shows up as a difference."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from maekit.cli import main
from maekit.domains.multispectral import MultispectralAdapter
from maekit.domains.volume import VolumeAdapter
from maekit.errors import ConfigError
from maekit.pretrain.module import MAEPretrainModule
from maekit.weights import export, from_pretrained, match_layer_norm_eps, to_monai, to_timm
from maekit.weights.converters import MONAI_BLOCK_TABLE, TIMM_VIT_TABLE, invert_table, rename
from maekit.weights.hub import build_pretrained


def randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


def checkpoint(module: MAEPretrainModule, path: Path, size: str) -> Path:
    torch.save({"state_dict": module.state_dict(),
                "maekit": {"adapter": module.adapter.config(), "size": size, "prefix": "mae."}}, path)
    return path


def load_quietly(source: Path):  # noqa: ANN201
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_pretrained(source)


def four_band_adapter(position: str = "sincos") -> MultispectralAdapter:
    """One group whose band order differs from the model's, non-trivial statistics and scaling."""
    return MultispectralAdapter(bands=["R", "G", "B", "NIR"], groups=[["NIR", "B", "R", "G"]], patch_size=8,
                                mean=[0.11, 0.23, 0.31, 0.47], std=[0.52, 0.61, 0.73, 0.84],
                                scale=[1 / 255, 1 / 255, 1 / 200, 1 / 100], offset=[0.01, 0.0, -0.05, 0.02],
                                position=position, max_grid=4)  # type: ignore[arg-type]


def timm_input(encoder, raw: torch.Tensor, pretrained_cfg: dict) -> torch.Tensor:  # noqa: ANN001
    """What a timm user feeds: physical units (raw * scale + offset), normalised by pretrained_cfg."""
    a = encoder.adapter
    x = raw * a.scale[None, :, None, None] + a.offset[None, :, None, None]
    mean = torch.tensor(pretrained_cfg["mean"])[None, :, None, None]
    std = torch.tensor(pretrained_cfg["std"])[None, :, None, None]
    return (x - mean) / std


@pytest.mark.parametrize("position", ["sincos", "learned"])
def test_timm_export_loads_in_timm_and_gives_the_same_features(position: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import timm

    module = MAEPretrainModule(four_band_adapter(position), size="nano")
    randomise(module, 1)
    ckpt = checkpoint(module, tmp_path / "m.ckpt", "nano")
    out = tmp_path / "timm"
    size_args = ["--image-size", "32"] if position == "sincos" else []  # learned: the table's extent (4 x 8)
    assert main(["export", str(ckpt), str(out), "--format", "timm", *size_args]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pretrained_cfg"]["num_classes"] == 0 and cfg["model_args"]["in_chans"] == 4
    assert cfg["maekit"]["bands"] == ["R", "G", "B", "NIR"]
    by_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_name = timm.create_model(cfg["architecture"], pretrained=True, **cfg["model_args"],
                                pretrained_cfg_overlay=dict(cfg["pretrained_cfg"], file=str(out / "model.safetensors")))
    encoder = load_quietly(ckpt)
    raw = torch.randint(0, 256, (2, 4, 32, 32)).float()
    x = timm_input(encoder, raw, by_dir.pretrained_cfg)
    with torch.no_grad():
        ours, _ = encoder({"image": raw})
        for vit in (by_dir, by_name.eval()):
            theirs = vit.forward_features(x)
            assert theirs.shape == ours.shape == (2, 16, 64)
            assert (ours - theirs).abs().max() < 1e-5 * max(1.0, ours.abs().max().item())
            # pooled features: timm's global average pool == maekit's mean over tokens
            assert (vit.forward_head(theirs, pre_logits=True) - encoder.pooled({"image": raw})).abs().max() < 1e-5
    # the raw-unit statistics are the same normalisation
    m = cfg["maekit"]
    raw_mean, raw_std = (torch.tensor(m[k])[None, :, None, None] for k in ("raw_mean", "raw_std"))
    raw_norm = (raw - raw_mean) / raw_std
    assert (raw_norm - x).abs().max() < 1e-4


def test_timm_export_with_a_class_token(tmp_path: Path) -> None:
    """A fine-tuned encoder with a class token: timm's class slot of pos_embed carries maekit's cls_pos."""
    from timm.models.vision_transformer import VisionTransformer

    from maekit.finetune.tasks import ClassificationTask

    task = ClassificationTask(four_band_adapter(), num_classes=3, size="nano", class_token=True)
    randomise(task, 2)
    config = {"adapter": task.adapter.config(), "size": "nano", "class_token": True}
    encoder = build_pretrained(config, task.state_dict())
    state, cfg = to_timm(encoder, 16)
    assert cfg["model_args"]["class_token"] and cfg["model_args"]["global_pool"] == "token"
    vit = VisionTransformer(**cfg["model_args"]).eval()
    vit.load_state_dict(state)  # strict: every tensor named as timm names it
    raw = torch.rand(3, 4, 16, 16) * 255
    with torch.no_grad():
        ours, _ = encoder({"image": raw}, return_prefix=True)
        theirs = vit.forward_features(timm_input(encoder, raw, cfg["pretrained_cfg"]))
        assert (ours - theirs).abs().max() < 1e-5
        assert (vit.forward_head(theirs, pre_logits=True) - encoder.pooled({"image": raw})).abs().max() < 1e-5


def test_a_wrong_key_mapping_is_caught(tmp_path: Path) -> None:
    """The comparison above is sensitive to the mapping: swapping one block's two norms, or
    dropping the folded group embedding, changes timm's features."""
    from timm.models.vision_transformer import VisionTransformer

    module = MAEPretrainModule(four_band_adapter(), size="nano")
    randomise(module, 3)
    encoder = load_quietly(checkpoint(module, tmp_path / "m.ckpt", "nano"))
    state, cfg = to_timm(encoder, 16)
    raw = torch.rand(2, 4, 16, 16) * 255
    x = timm_input(encoder, raw, cfg["pretrained_cfg"])
    with torch.no_grad():
        ours, _ = encoder({"image": raw})
    swapped = dict(state, **{"blocks.1.norm1.weight": state["blocks.1.norm2.weight"],
                             "blocks.1.norm2.weight": state["blocks.1.norm1.weight"]})
    unfolded = dict(state, **{"patch_embed.proj.bias": module.mae.adapter.patch_embed[0].bias.detach()})
    for wrong in (swapped, unfolded):
        vit = VisionTransformer(**cfg["model_args"]).eval()
        vit.load_state_dict(wrong)
        with torch.no_grad():
            assert (vit.forward_features(x) - ours).abs().max() > 1e-3


def test_the_inverted_tables_are_exact_inverses() -> None:
    keys = ["cls_token", "patch_embed.proj.bias", "blocks.0.norm1.weight", "blocks.11.attn.proj.bias",
            "blocks.3.mlp.fc2.weight", "norm.bias"]
    state = {k: torch.zeros(1) for k in keys}
    kit, unmatched = rename(state, TIMM_VIT_TABLE)
    assert not unmatched and sorted(rename(kit, invert_table(TIMM_VIT_TABLE))[0]) == sorted(keys)
    monai = ["norm1.bias", "attn.qkv.weight", "attn.out_proj.bias", "mlp.linear1.weight", "mlp.linear2.bias"]
    timm_names, _ = rename({k: torch.zeros(1) for k in monai}, MONAI_BLOCK_TABLE)
    assert sorted(rename(timm_names, invert_table(MONAI_BLOCK_TABLE))[0]) == sorted(monai)


def volume_checkpoint(tmp_path: Path, modalities: list[str], size: str = "tiny", patch: int = 16) -> Path:
    module = MAEPretrainModule(VolumeAdapter(modalities, patch_size=patch), size=size)  # type: ignore[arg-type]
    randomise(module, 4)
    return checkpoint(module, tmp_path / "v.ckpt", size)


@pytest.mark.parametrize("proj_type", ["conv", "perceptron"])
def test_monai_export_loads_into_unetr_and_vit_with_the_same_features(proj_type: str, tmp_path: Path) -> None:
    from monai.networks.nets import UNETR, ViT
    from safetensors.torch import load_file

    ckpt = volume_checkpoint(tmp_path, ["ct"])
    out = tmp_path / "monai"
    args = ["export", str(ckpt), str(out), "--format", "monai", "--image-size", "32", "--proj-type", proj_type]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    state = load_file(str(out / "model.safetensors"))
    assert cfg["unetr_compatible"]
    unetr = UNETR(out_channels=3, **cfg["unetr_args"])
    unetr.vit.load_state_dict(state)  # strict
    vit = ViT(**cfg["vit_args"])
    vit.load_state_dict(state)
    encoder = load_quietly(ckpt)
    volume = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        ours, _ = encoder({"image": volume})
        default_eps, _ = vit.eval()(volume)
        match_layer_norm_eps(unetr, cfg["layer_norm_eps"])
        exact, _ = unetr.vit.eval()(volume)
        assert exact.shape == ours.shape == (2, 8, 192)
        assert (ours - exact).abs().max() < 1e-5 * max(1.0, ours.abs().max().item())
        # with MONAI's own LayerNorm eps (1e-5 instead of 1e-6) only the last digits move
        assert (ours - default_eps).abs().max() < 1e-3
        if proj_type == "conv":  # the whole UNETR runs on the exported encoder
            assert unetr.eval()(volume).shape == (2, 3, 32, 32, 32)


def test_exports_with_no_equivalent_are_refused_with_the_reason(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from maekit.domains.pointcloud import PointCloudAdapter

    naip = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8), size="nano")
    ckpt = checkpoint(naip, tmp_path / "naip.ckpt", "nano")
    assert main(["export", str(ckpt), str(tmp_path / "o1"), "--format", "timm", "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "2 band groups" in err and "one token per patch over all bands" in err
    assert not (tmp_path / "o1").exists()
    brats = volume_checkpoint(tmp_path, ["t1", "t2"], size="nano", patch=8)
    assert main(["export", str(brats), str(tmp_path / "o2"), "--format", "monai", "--image-size", "16"]) == 2
    assert "2 modalities" in capsys.readouterr().err
    assert main(["export", str(brats), str(tmp_path / "o3"), "--format", "timm", "--image-size", "16"]) == 2
    assert "use --format monai" in capsys.readouterr().err
    single = volume_checkpoint(tmp_path, ["ct"], size="nano", patch=8)
    assert main(["export", str(single), str(tmp_path / "o4"), "--format", "monai"]) == 2
    assert "--image-size" in capsys.readouterr().err
    points = MAEPretrainModule(PointCloudAdapter(groups=8, group_size=8), size="nano")
    point_encoder = build_pretrained({"adapter": points.adapter.config(), "size": "nano"},
                                     {k[len("mae."):]: v for k, v in points.state_dict().items()})
    for convert in (lambda m: to_timm(m, 32), lambda m: to_monai(m, 32)):
        with pytest.raises(ConfigError, match="Point-MAE encoder has no .* equivalent: its tokens are groups of"):
            convert(point_encoder)
    rgb = checkpoint(MAEPretrainModule(four_band_adapter(), size="nano"), tmp_path / "rgb.ckpt", "nano")
    with pytest.raises(ConfigError, match="image_size .* is not a multiple of the patch size"):
        export(rgb, tmp_path / "o5", format="timm", image_size=30)
