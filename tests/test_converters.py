"""Converters of public checkpoints: every converter's output compared numerically with the
published model's forward pass (MONAI's own models; timm's VisionTransformer, which
facebookresearch/mae's models are; references written in this file from the published code for
Prithvi, SatMAE, BM-MAE and Point-MAE, each naming the upstream commit it follows), with every
parameter random, and a check that swapping any two same-shaped entries of a converter's key
table breaks that comparison.

BM-MAE's reference follows the model card and code of `luklebigbosse/BM-MAE` on Hugging Face
(`bmmae.model.ViTEncoder`, `bmmae.tokenizers.MRITokenizer`); its source repository is not
reachable from here, so no commit is pinned for it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial, wraps
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from maekit.backbones import TransformerStack
from maekit.domains import MultispectralAdapter, VolumeAdapter
from maekit.domains.point_ops import group_points
from maekit.errors import ConfigError, DataError
from maekit.finetune import ClassificationTask
from maekit.weights import WeightsError, converters, from_pretrained, registry
from maekit.weights.converters import convert_monai_vit, detect_format
from maekit.weights.formats import WeightsFile
from maekit.weights.hub import build_pretrained
from maekit.weights.loading import convert_public_weights

TOL = 1e-5


def identity_statistics(encoder: nn.Module) -> None:
    """Feed inputs unchanged (compare on the same normalised input as the reference model)."""
    for name in ("mean", "offset"):
        if hasattr(encoder.adapter, name):
            getattr(encoder.adapter, name).zero_()
    for name in ("std", "scale"):
        if hasattr(encoder.adapter, name):
            getattr(encoder.adapter, name).fill_(1.0)


def save(state: dict[str, Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def randomise(module: nn.Module) -> None:
    """Random values everywhere (biases, norms, positions too), so nothing passes by being zero or one."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)


# ------------------------------------------------------------------------------- MONAI
def features_of_monai_vit(model: nn.Module, x: Tensor) -> Tensor:
    """MONAI ViT's normalised token features (class token included): the output of `model.norm`."""
    captured: list[Tensor] = []
    handle = model.norm.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return captured[0]


@pytest.mark.parametrize("dims, proj, pos, classification, width, depth, heads", [
    (2, "conv", "learnable", True, 64, 2, 2),
    (3, "conv", "sincos", False, 192, 12, 3),  # MONAI's 3D sin-cos needs a width divisible by 6: size tiny
])
def test_monai_vit_features_match(tmp_path: Path, dims: int, proj: str, pos: str, classification: bool, width: int,
                                  depth: int, heads: int) -> None:
    from monai.networks.nets import ViT

    channels = 3 if dims == 2 else 1
    size = (32, 32) if dims == 2 else (16, 16, 16)
    vit = ViT(in_channels=channels, img_size=size, patch_size=8, hidden_size=width, mlp_dim=4 * width,
              num_layers=depth, num_heads=heads, proj_type=proj, pos_embed_type=pos, classification=classification, num_classes=3,
              spatial_dims=dims).eval()
    randomise(vit)
    path = save(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.warns(UserWarning, match=r"dropped \d+ \(blocks.\*.norm_cross_attn"):  # (+ classification_head)
        encoder = from_pretrained(path)
    assert encoder.config["norm_eps"] == 1e-5 and encoder.encoder.norm.eps == 1e-5
    assert isinstance(encoder.adapter, MultispectralAdapter if dims == 2 else VolumeAdapter)
    identity_statistics(encoder)
    x = torch.randn(2, channels, *size)
    with torch.no_grad():
        ours, _ = encoder({"image": x}, return_prefix=True)
    theirs = features_of_monai_vit(vit, x)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() < TOL


def test_monai_vit_perceptron_on_a_non_cubic_grid(tmp_path: Path) -> None:
    """Perceptron patches (MONAI flattens them channel-last) on a 4x4x2 grid: the layout is not in
    the weights, so auto-detection asks for it and the explicit call converts exactly."""
    from monai.networks.nets import ViT

    vit = ViT(in_channels=1, img_size=(32, 32, 16), patch_size=8, hidden_size=64, mlp_dim=256, num_layers=2,
              num_heads=2, proj_type="perceptron", pos_embed_type="learnable", spatial_dims=3).eval()
    randomise(vit)
    path = save(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(DataError, match="perceptron.*spatial_dims="):
        from_pretrained(path)
    config, state, report = convert_monai_vit(vit.state_dict(), ["ct"], spatial_dims=3, in_channels=1, patch_size=8,
                                              grid=(4, 4, 2))
    assert report["unmatched"] == [] and config["adapter"]["init_args"]["max_grid"] == 4
    encoder = build_pretrained(config, state)
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        ours, _ = encoder({"image": x})
    assert (ours - features_of_monai_vit(vit, x)).abs().max() < TOL


@pytest.mark.parametrize("dims", [2, 3])
def test_monai_masked_autoencoder_encoder_matches(tmp_path: Path, dims: int) -> None:
    from monai.networks.nets import MaskedAutoEncoderViT

    channels = 2 if dims == 2 else 1
    size = (32, 32) if dims == 2 else (16, 16, 16)
    width, depth, heads = (64, 2, 2) if dims == 2 else (192, 12, 3)  # 3D sin-cos: width divisible by 6
    mae = MaskedAutoEncoderViT(in_channels=channels, img_size=size, patch_size=8, hidden_size=width,
                               mlp_dim=2 * width, num_layers=depth, num_heads=heads, decoder_hidden_size=48,
                               decoder_mlp_dim=64, decoder_num_layers=1, decoder_num_heads=2,
                               spatial_dims=dims).eval()
    randomise(mae)
    path = save(mae.state_dict(), tmp_path / "mae.safetensors")
    with pytest.warns(UserWarning, match="decoder_embed"):
        encoder = from_pretrained(path)
    assert encoder.config["source_format"] == "monai-mae" and encoder.config["mlp_ratio"] == 2.0
    identity_statistics(encoder)
    x = torch.randn(2, channels, *size)
    with torch.no_grad():  # MONAI's encoder without masking: patch embedding, class token, blocks (+ final norm)
        tokens = mae.patch_embedding(x)
        theirs = mae.blocks(torch.cat([mae.cls_token.expand(2, -1, -1), tokens], 1))
        ours, _ = encoder({"image": x}, return_prefix=True)
    assert (ours - theirs).abs().max() < TOL
    with pytest.warns(UserWarning), pytest.raises(DataError, match="full=True is not possible.*class token"):
        from_pretrained(path, full=True)


# ---------------------------------------------------------------------------- BM-MAE
class PublishedBMMAEEncoder(nn.Module):
    """BM-MAE's encoder as published (`bmmae.model.ViTEncoder` + `bmmae.tokenizers.MRITokenizer`):
    a MONAI PatchEmbeddingBlock per modality under `tokenizers.{m}.patch_embedding`, MONAI
    TransformerBlocks (qkv bias, MLP 2x), `norm`, `cls_token`."""

    def __init__(self, modalities: list[str], width: int = 192, depth: int = 12, heads: int = 3) -> None:
        super().__init__()
        from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock

        self.modalities = modalities
        self.tokenizers = nn.ModuleDict({m: nn.Module() for m in modalities})
        for m in modalities:
            self.tokenizers[m].patch_embedding = PatchEmbeddingBlock(1, 32, 16, width, heads, pos_embed_type="sincos",
                                                                     spatial_dims=3)
        self.blocks = nn.ModuleList(TransformerBlock(width, 2 * width, heads, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))

    def forward(self, x: Tensor) -> Tensor:
        tokens = [self.tokenizers[m].patch_embedding(x[:, i:i + 1]) for i, m in enumerate(self.modalities)]
        out = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), *tokens], 1)
        for block in self.blocks:
            out = block(out)
        return self.norm(out)


def test_bm_mae_encoder_matches_and_fine_tunes(tmp_path: Path) -> None:
    modalities = ["t1", "t1ce", "t2", "flair"]
    published = PublishedBMMAEEncoder(modalities).eval()
    randomise(published)
    with torch.no_grad():  # fixed sin-cos tables, identical per modality as in BM-MAE
        for m in modalities[1:]:
            published.tokenizers[m].patch_embedding.position_embeddings.copy_(
                published.tokenizers["t1"].patch_embedding.position_embeddings)
    state = dict(published.state_dict(), **{"decoder.decoder_embed.weight": torch.zeros(32, 192)})
    path = save(state, tmp_path / "bmmae.pth")
    assert detect_format(state) == "bm-mae"
    with pytest.warns(UserWarning, match=r"blocks.\*.norm_cross_attn, decoder"):
        encoder = from_pretrained(path)
    assert encoder.adapter.modalities == modalities and encoder.adapter.groups == [[m] for m in modalities]
    x = torch.randn(2, 4, 32, 32, 32)
    with torch.no_grad():
        ours, _ = encoder({"image": x}, return_prefix=True)
        theirs = published(x)
    assert (ours - theirs).abs().max() < TOL
    adapter = VolumeAdapter(modalities=modalities, patch_size=16, position="learned", max_grid=2)
    with pytest.raises(DataError, match=r"set `model.class_token: true`"):
        ClassificationTask(adapter, num_classes=2, size="tiny", pretrained=str(path))
    with pytest.warns(UserWarning, match="encoder rebuilt to match the weights.*mlp_ratio"):
        task = ClassificationTask(VolumeAdapter(modalities=modalities, patch_size=16, position="learned", max_grid=2),
                                  num_classes=2, size="tiny", class_token=True, pooling="cls", pretrained=str(path))
    assert task.encoder.norm.eps == 1e-5 and task.encoder.mlp_ratio == 2.0
    assert torch.equal(task.encoder.blocks[1].attn.proj.weight, published.blocks[1].attn.out_proj.weight)
    with pytest.raises(DataError, match="position: learned"):
        ClassificationTask(VolumeAdapter(modalities=modalities, patch_size=16), num_classes=2, size="tiny",
                           class_token=True, pretrained=str(path))


# ------------------------------------------------------------------ cases with a reference
@dataclass
class Case:
    """A public checkpoint built with the published key names and shapes, every parameter
    random, the batch it is run on and the features the published model gives for it."""

    state: dict[str, Tensor]
    batch: dict[str, Tensor]
    reference: Tensor
    facts: dict[str, Any] = field(default_factory=dict)
    pooled: bool = False  # compare `PretrainedEncoder.pooled` (fine-tuned global-pool classifiers)
    #: target pairs whose swap cannot change any output (the class token and its position are
    #: summed once, so exchanging them is the same model)
    equivalent: tuple[tuple[str, str], ...] = (("encoder.cls_pos", "encoder.cls_token"),)


def features(case: Case) -> Tensor:
    """What maekit gives for the case's checkpoint: converted in memory and run."""
    wf = WeightsFile(Path("<case>"), case.state, None, None, "plain")
    converted = convert_public_weights(wf, case.facts)
    assert converted is not None
    encoder = build_pretrained(*converted[:2])
    identity_statistics(encoder)
    with torch.no_grad():
        return encoder.pooled(case.batch) if case.pooled else encoder(case.batch, return_prefix=True)[0]


def timm_case(global_pool: bool = False, decoder: bool = False, size: int = 32) -> Case:
    """timm's VisionTransformer (facebookresearch/mae's `models_vit` is one; with global pooling its
    file has `fc_norm` and no `norm`), random everywhere, optionally with MAE decoder tensors."""
    vit = VisionTransformer(img_size=size, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5,
                            global_pool="avg" if global_pool else "token",
                            norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    randomise(vit)
    state = vit.state_dict()
    assert ("fc_norm.weight" in state) == global_pool and ("norm.weight" in state) != global_pool
    if decoder:
        state |= {"decoder_embed.weight": torch.randn(32, 64), "mask_token": torch.randn(1, 1, 32),
                  "decoder_pos_embed": torch.randn(1, 17, 32), "decoder_blocks.0.norm1.weight": torch.randn(32),
                  "decoder_norm.weight": torch.randn(32), "decoder_pred.weight": torch.randn(192, 32)}
    image = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = vit.forward_features(image)
        reference = vit.fc_norm(tokens[:, 1:].mean(1)) if global_pool else tokens
    return Case(state, {"image": image}, reference, pooled=global_pool)


def monai_case(dims: int = 2, mae: bool = False) -> Case:
    from monai.networks.nets import MaskedAutoEncoderViT, ViT

    size = (32, 32) if dims == 2 else (16, 16, 16)
    channels = 3 if dims == 2 else 1
    if mae:
        model = MaskedAutoEncoderViT(in_channels=channels, img_size=size, patch_size=8, hidden_size=64, mlp_dim=128,
                                     num_layers=2, num_heads=2, decoder_hidden_size=48, decoder_mlp_dim=64,
                                     decoder_num_layers=1, decoder_num_heads=2, spatial_dims=dims).eval()
    else:
        model = ViT(in_channels=channels, img_size=size, patch_size=8, hidden_size=64, mlp_dim=256, num_layers=2,
                    num_heads=2, proj_type="conv", pos_embed_type="learnable", classification=True, num_classes=3,
                    qkv_bias=True, spatial_dims=dims).eval()
    randomise(model)
    x = torch.randn(2, channels, *size)
    with torch.no_grad():
        if mae:  # MONAI's encoder without masking: patch embedding, class token, blocks (+ final norm)
            reference = model.blocks(torch.cat([model.cls_token.expand(2, -1, -1), model.patch_embedding(x)], 1))
        else:
            reference = features_of_monai_vit(model, x)
    return Case(model.state_dict(), {"image": x}, reference)


def bm_mae_case() -> Case:
    modalities = ["t1", "t1ce", "t2", "flair"]
    published = PublishedBMMAEEncoder(modalities, width=48, depth=2, heads=2).eval()
    randomise(published)
    with torch.no_grad():  # fixed sin-cos tables, identical per modality as in BM-MAE
        for m in modalities[1:]:
            published.tokenizers[m].patch_embedding.position_embeddings.copy_(
                published.tokenizers["t1"].patch_embedding.position_embeddings)
    x = torch.randn(2, 4, 32, 32, 32)
    with torch.no_grad():
        reference = published(x)
    state = dict(published.state_dict(), **{"decoder.decoder_embed.weight": torch.randn(32, 48)})
    return Case(state, {"image": x}, reference, facts={"heads": 2})


def published_vit_blocks(width: int, depth: int, heads: int, eps: float) -> tuple[nn.ModuleList, nn.LayerNorm]:
    """timm `Block`s (qkv bias) and a final LayerNorm, random everywhere."""
    blocks = nn.ModuleList(Block(width, heads, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=eps))
                           for _ in range(depth))
    norm = nn.LayerNorm(width, eps=eps)
    for part in (blocks, norm):
        randomise(part)
    return blocks, norm


# Prithvi: the reference follows terratorch's `terratorch/models/backbones/prithvi_mae.py`
# (IBM/terratorch, file at commit fd254a420685efa7010c00356c4b617081cfcb83): `PrithviViT`
# with a fixed 3D sin-cos `pos_embed` (channels [w 6/16, h 6/16, t 4/16], rows t-major, zero
# class slot), Conv3d patches of tubelet 1, timm `Block`s, `nn.LayerNorm`. For an input of
# fewer frames than the table, terratorch recomputes the table for the input's frame count
# (`_interpolate_pos_encoding`), and for another grid it is built for that grid.
def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(positions.astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def prithvi_pos_embed(dim: int, frames: int, side: int) -> Tensor:
    """(1, 1 + T side^2, dim) the published 3D sin-cos table with its zero class slot."""
    w = np.tile(sincos_1d(dim // 16 * 6, np.arange(side)), (frames * side, 1))
    h = np.tile(np.repeat(sincos_1d(dim // 16 * 6, np.arange(side)), side, axis=0), (frames, 1))
    t = np.repeat(sincos_1d(dim // 16 * 4, np.arange(frames)), side * side, axis=0)
    table = np.concatenate([np.zeros((1, dim)), np.concatenate([w, h, t], axis=1)])
    return torch.from_numpy(table).float()[None]


def prithvi_case(v2: bool = True, frames: int = 4, side: int = 4, input_side: int | None = None) -> Case:
    """A Prithvi checkpoint of the released shape (2.0: 4 frames, `encoder.`/`decoder.` keys with
    `-TL` scales; 1.0: 3 frames), nano width, and a single-date image's features as terratorch
    computes them (a one-frame input: the table of frame 0 for the input's grid)."""
    torch.manual_seed(2)
    blocks, norm = published_vit_blocks(64, 2, 2, 1e-5)
    state = {"patch_embed.proj.weight": torch.randn(64, 6, 1, 8, 8) * 0.1, "patch_embed.proj.bias": torch.randn(64),
             "cls_token": torch.randn(1, 1, 64), "pos_embed": prithvi_pos_embed(64, frames, side),
             **{f"blocks.{k}": v for k, v in blocks.state_dict().items()},
             **{f"norm.{k}": v for k, v in norm.state_dict().items()},
             "decoder_embed.weight": torch.randn(32, 64), "mask_token": torch.randn(1, 1, 32)}
    if v2:
        state = {("decoder." if k.startswith(("decoder", "mask")) else "encoder.") + k: v for k, v in state.items()}
        state["encoder.temporal_embed_enc.scale"] = torch.tensor([0.1])
        state["encoder.location_embed_enc.scale"] = torch.tensor([0.1])
    get = (lambda k: state["encoder." + k]) if v2 else (lambda k: state[k])
    g = input_side or side
    image = torch.randn(2, 6, 8 * g, 8 * g)
    pos = prithvi_pos_embed(64, 1, g)  # terratorch for a one-frame input of this grid
    with torch.no_grad():
        x = nn.functional.conv3d(image[:, :, None], get("patch_embed.proj.weight"), get("patch_embed.proj.bias"),
                                 stride=(1, 8, 8)).flatten(2).transpose(1, 2)
        x = torch.cat([(get("cls_token") + pos[:, :1]).expand(2, -1, -1), x + pos[:, 1:]], 1)
        for block in blocks:
            x = block(x)
        reference = norm(x)
    facts = {"image_size": 8 * g} if input_side else {}
    return Case(state, {"image": image}, reference, facts)


# SatMAE: the reference follows `models_mae_group_channels.py` / `models_vit_group_channels.py`
# of sustainlab-group/SatMAE (commit e31c11fa1bef6f9a9aa3eb49e8637c8b8952ba5e): per-group
# conv + cat(pos_embed, channel_embed), class token + cat(pos_embed[0], channel_cls_embed or 0),
# timm blocks, `norm` (pretraining) or mean over the patch tokens + `fc_norm` (fine-tuned,
# `global_pool=True`).
SATMAE_INDEX = [[0, 1, 2, 6], [3, 4, 5, 7], [8, 9]]


def satmae_case(global_pool: bool = False, size: int = 32, input_size: int | None = None) -> Case:
    torch.manual_seed(3)
    blocks, norm = published_vit_blocks(64, 2, 2, 1e-6)
    side = size // 8
    state = {**{f"patch_embed.{g}.proj.weight": torch.randn(64, len(idx), 8, 8) * 0.1
                for g, idx in enumerate(SATMAE_INDEX)},
             **{f"patch_embed.{g}.proj.bias": torch.randn(64) for g in range(3)},
             "cls_token": torch.randn(1, 1, 64), "pos_embed": torch.randn(1, 1 + side * side, 48),
             "channel_embed": torch.randn(1, 3, 16),
             **{f"blocks.{k}": v for k, v in blocks.state_dict().items()}}
    if global_pool:
        state |= {"channel_cls_embed": torch.randn(1, 1, 16), "fc_norm.weight": torch.randn(64),
                  "fc_norm.bias": torch.randn(64), "head.weight": torch.randn(5, 64), "head.bias": torch.randn(5)}
    else:
        state |= {**{f"norm.{k}": v for k, v in norm.state_dict().items()},
                  "decoder_embed.weight": torch.randn(32, 64), "decoder_channel_embed": torch.randn(1, 4, 8)}
    n = (input_size or size) // 8
    pos = state["pos_embed"]
    if input_size:  # SatMAE's (MAE's) interpolate_pos_embed
        rows = pos[:, 1:].reshape(1, side, side, 48).permute(0, 3, 1, 2)
        rows = nn.functional.interpolate(rows, size=(n, n), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], rows.permute(0, 2, 3, 1).reshape(1, n * n, 48)], 1)
    image = torch.randn(2, 10, 8 * n, 8 * n)
    with torch.no_grad():
        parts = [nn.functional.conv2d(image[:, idx], state[f"patch_embed.{g}.proj.weight"],
                                      state[f"patch_embed.{g}.proj.bias"], stride=8).flatten(2).transpose(1, 2)
                 + torch.cat([pos[0, 1:], state["channel_embed"][0, g].expand(n * n, -1)], 1)
                 for g, idx in enumerate(SATMAE_INDEX)]
        cls_channel = state.get("channel_cls_embed", torch.zeros(1, 1, 16))
        x = torch.cat([(state["cls_token"] + torch.cat([pos[:, :1], cls_channel], 2)).expand(2, -1, -1), *parts], 1)
        for block in blocks:
            x = block(x)
        if global_pool:
            reference = nn.functional.layer_norm(x[:, 1:].mean(1), (64,), state["fc_norm.weight"],
                                                 state["fc_norm.bias"], 1e-6)
        else:
            reference = norm(x)
    return Case(state, {"image": image}, reference, facts={"image_size": input_size} if input_size else {},
                pooled=global_pool)


# Point-MAE: the reference follows `models/Point_MAE.py` of Pang-Yatian/Point-MAE (commit
# 7445a68068d707da6d959b66773bfef84c4e3e32): mini-PointNet `Encoder`, centre MLP `pos_embed`
# added before every block (`TransformerEncoder`), qkv without bias, `norm`; the fine-tuned
# `PointTransformer` prepends `cls_token` with its own `cls_pos`.
def point_mae_state(width: int = 64, depth: int = 2, group_size: int = 16, finetuned: bool = False
                    ) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    enc = "" if finetuned else "MAE_encoder."
    sd: dict[str, Tensor] = {}
    for conv, (cin, mid, cout) in {"first_conv": (3, 128, 256), "second_conv": (512, 512, width)}.items():
        p = f"{enc}encoder.{conv}."
        sd |= {p + "0.weight": r(mid, cin, 1), p + "0.bias": r(mid), p + "1.weight": 1 + r(mid), p + "1.bias": r(mid),
               p + "1.running_mean": r(mid), p + "1.running_var": 1 + r(mid).abs(),
               p + "1.num_batches_tracked": torch.tensor(7), p + "3.weight": r(cout, mid, 1), p + "3.bias": r(cout)}
    sd |= {f"{enc}pos_embed.0.weight": r(128, 3), f"{enc}pos_embed.0.bias": r(128),
           f"{enc}pos_embed.2.weight": r(width, 128), f"{enc}pos_embed.2.bias": r(width)}
    for i in range(depth):
        p = f"{enc}blocks.blocks.{i}."
        sd |= {p + "norm1.weight": 1 + r(width), p + "norm1.bias": r(width), p + "attn.qkv.weight": r(3 * width, width),
               p + "attn.proj.weight": r(width, width), p + "attn.proj.bias": r(width),
               p + "norm2.weight": 1 + r(width), p + "norm2.bias": r(width), p + "mlp.fc1.weight": r(4 * width, width),
               p + "mlp.fc1.bias": r(4 * width), p + "mlp.fc2.weight": r(width, 4 * width),
               p + "mlp.fc2.bias": r(width)}
    sd |= {f"{enc}norm.weight": 1 + r(width), f"{enc}norm.bias": r(width)}
    if finetuned:
        sd |= {"cls_token": r(1, 1, width), "cls_pos": r(1, 1, width), "cls_head_finetune.0.weight": r(256, 2 * width)}
    else:
        sd |= {"mask_token": r(1, 1, width), "decoder_pos_embed.0.weight": r(128, 3),
               "MAE_decoder.blocks.0.norm1.weight": r(width), "increase_dim.0.weight": r(3 * group_size, width, 1)}
    return sd


def point_mae_reference(sd: dict[str, Tensor], points: Tensor, groups: int, group_size: int, heads: int,
                        prefix: str) -> Tensor:
    """Point-MAE's encoder forward (eval) with functional ops; the class token first when the
    state has one (fine-tuned)."""
    F = nn.functional
    hoods, centres = group_points(points, groups, group_size)
    b, g, k, _ = hoods.shape

    def shared_mlp(x: Tensor, p: str) -> Tensor:
        x = F.conv1d(x, sd[p + "0.weight"], sd[p + "0.bias"])
        x = F.batch_norm(x, sd[p + "1.running_mean"], sd[p + "1.running_var"], sd[p + "1.weight"], sd[p + "1.bias"],
                         False, 0.0, 1e-5)
        return F.conv1d(F.relu(x), sd[p + "3.weight"], sd[p + "3.bias"])

    f = shared_mlp(hoods.reshape(b * g, k, 3).transpose(1, 2), prefix + "encoder.first_conv.")
    f = torch.cat([f.amax(2, keepdim=True).expand(-1, -1, k), f], 1)
    x = shared_mlp(f, prefix + "encoder.second_conv.").amax(2).reshape(b, g, -1)
    pos = F.linear(F.gelu(F.linear(centres, sd[prefix + "pos_embed.0.weight"], sd[prefix + "pos_embed.0.bias"])),
                   sd[prefix + "pos_embed.2.weight"], sd[prefix + "pos_embed.2.bias"])
    if "cls_token" in sd:
        x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], 1)
        pos = torch.cat([sd["cls_pos"].expand(b, -1, -1), pos], 1)
    width, n = x.shape[-1], x.shape[1]
    i = 0
    while f"{prefix}blocks.blocks.{i}.norm1.weight" in sd:
        p = f"{prefix}blocks.blocks.{i}."
        x = x + pos
        h = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        q, kk, v = F.linear(h, sd[p + "attn.qkv.weight"]).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q @ kk.transpose(-2, -1)) * (width // heads) ** -0.5).softmax(-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, n, width), sd[p + "attn.proj.weight"],
                         sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                         sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        i += 1
    return F.layer_norm(x, (width,), sd[prefix + "norm.weight"], sd[prefix + "norm.bias"], 1e-5)


def point_mae_case(finetuned: bool = False) -> Case:
    sd = point_mae_state(finetuned=finetuned)
    torch.manual_seed(5)
    points = torch.rand(2, 200, 3) * 2 - 1
    with torch.no_grad():
        reference = point_mae_reference(sd, points, 8, 16, 2, "" if finetuned else "MAE_encoder.")
    state = sd if finetuned else {f"module.{k}": v for k, v in sd.items()}
    return Case(state, {"points": points}, reference, facts={"groups": 8, "group_size": 16} if finetuned else
                {"groups": 8}, equivalent=())


CASES: dict[str, Callable[[], Case]] = {
    "timm-vit": timm_case,
    "mae-with-decoder": partial(timm_case, decoder=True),
    "mae-finetuned-global-pool": partial(timm_case, global_pool=True),
    "monai-vit-2d": monai_case,
    "monai-mae-2d": partial(monai_case, mae=True),
    "bm-mae": bm_mae_case,
    "prithvi-eo-1": partial(prithvi_case, v2=False, frames=3),
    "prithvi-eo-2": partial(prithvi_case, v2=True, frames=4),
    "satmae": satmae_case,
    "satmae-finetuned-global-pool": partial(satmae_case, global_pool=True),
    "point-mae": point_mae_case,
    "point-mae-finetuned": partial(point_mae_case, finetuned=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_converted_features_match_the_published_model(name: str) -> None:
    case = CASES[name]()
    ours = features(case)
    assert ours.shape == case.reference.shape
    assert (ours - case.reference).abs().max() < TOL


def swap_pairs(out: dict[str, Tensor], equivalent: tuple[tuple[str, str], ...], limit: int = 12
               ) -> list[tuple[str, str]]:
    """Pairs of same-shaped converted entries with different values: neighbours within each shape
    (every entry is in a pair) plus the classic confusions, at most `limit`."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for key, value in out.items():
        by_shape.setdefault(tuple(value.shape), []).append(key)
    pairs = [("encoder.blocks.0.norm1.weight", "encoder.blocks.0.norm2.weight"),
             ("encoder.blocks.0.norm1.bias", "encoder.blocks.0.norm2.bias"),
             ("encoder.blocks.0.attn.proj.bias", "encoder.blocks.0.mlp.fc2.bias"),
             ("encoder.blocks.0.attn.proj.weight", "encoder.blocks.1.attn.proj.weight")]
    for keys in by_shape.values():
        pairs += [(keys[i], keys[(i + 1) % len(keys)]) for i in range(len(keys))] if len(keys) > 1 else []
    seen, chosen = {tuple(sorted(e)) for e in equivalent}, []
    for a, b in pairs:
        pair = tuple(sorted((a, b)))
        if a in out and b in out and a != b and pair not in seen and not torch.equal(out[a], out[b]):
            seen.add(pair)
            chosen.append((a, b))
    return chosen[:limit]


@pytest.mark.parametrize("name", list(CASES))
def test_every_swap_of_two_same_shaped_entries_is_noticed(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exchanging the targets of two same-shaped entries of the converter's key table (what a
    typo like norm1<->norm2 does) changes the features beyond the tolerance: the numerical
    comparison above is sensitive to every entry."""
    case = CASES[name]()
    format_name = detect_format(case.state)
    index = next(i for i, (n, _, _) in enumerate(converters.FORMATS) if n == format_name)
    _, detect, convert = converters.FORMATS[index]
    _, table, _ = convert(converters.unwrap(case.state), **case.facts)
    pairs = swap_pairs(table, case.equivalent)
    assert len(pairs) >= 4
    for a, b in pairs:
        @wraps(convert)
        def swapped(*args: Any, a: str = a, b: str = b, **kwargs: Any) -> Any:
            config, out, report = convert(*args, **kwargs)
            out[a], out[b] = out[b], out[a]
            return config, out, report

        formats = list(converters.FORMATS)
        formats[index] = (format_name, detect, swapped)
        monkeypatch.setattr(converters, "FORMATS", formats)
        close = (features(case) - case.reference).abs() <= 100 * TOL  # NaN (a variance made negative) is not close
        assert not bool(close.all()), f"swapping {a} and {b} went unnoticed"


# ----------------------------------------------------------------------------- Prithvi
@pytest.mark.parametrize("v2", [False, True])
def test_prithvi_single_frame_features(tmp_path: Path, v2: bool) -> None:
    """Released shapes: 2.0 trained with 4 frames (1 + 4 x 4^2 = 1 + 8^2 rows, so a square count
    alone reads one 8x8 frame), 1.0 with 3. Loaded from a file, the frame count is read from the
    table's structure."""
    case = prithvi_case(v2=v2, frames=4 if v2 else 3)
    path = save(case.state if v2 else {"model": case.state}, tmp_path / "prithvi.pt")
    with pytest.warns(UserWarning, match=r"temporal_embed_enc" if v2 else r"decoder_embed"):
        encoder = from_pretrained(path)
    assert encoder.config["num_frames"] == (4 if v2 else 3) and encoder.adapter.max_grid == 4
    assert encoder.adapter.bands == ["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"]  # the hls preset's names
    assert encoder.config["source_format"] == ("prithvi-eo-2" if v2 else "prithvi-eo-1")
    assert encoder.adapter.mean[0] == (1087.0 if v2 else 775.0)
    identity_statistics(encoder)
    with torch.no_grad():
        ours, _ = encoder(case.batch, return_prefix=True)
    assert (ours - case.reference).abs().max() < TOL


def test_prithvi_frame_count_from_config_argument_or_default(tmp_path: Path) -> None:
    """The frame count from the release's config.json, from an argument, or 4 for a 2.0 file whose
    table is not the published sin-cos one; a count that does not fit the rows is refused."""
    case = prithvi_case(v2=True, frames=4)
    folder = tmp_path / "release"
    folder.mkdir()
    path = save(case.state, folder / "Prithvi_EO_V2_300M.pt")
    (folder / "config.json").write_text(json.dumps({"architecture": "prithvi_eo_v2_300",
                                                    "pretrained_cfg": {"num_frames": 4, "img_size": 32}}))
    with pytest.warns(UserWarning, match=r"4 frames \(from the release's config.json\)"):
        assert from_pretrained(path).config["num_frames"] == 4
    (folder / "config.json").unlink()
    with pytest.warns(UserWarning, match=r"4 frames \(given\)"):
        assert from_pretrained(path, num_frames=4).config["num_frames"] == 4
    with pytest.raises(DataError, match=r"not 1 \+ 3 frames \(given\).*num_frames="):
        from_pretrained(path, num_frames=3)
    learned = dict(case.state, **{"encoder.pos_embed": torch.randn_like(case.state["encoder.pos_embed"])})
    with pytest.warns(UserWarning, match=r"4 frames \(Prithvi-EO-2.0's published setting\)"):
        assert from_pretrained(save(learned, tmp_path / "other.pt")).config["num_frames"] == 4


def test_prithvi_at_another_input_size_matches_terratorch(tmp_path: Path) -> None:
    """A 4x4-grid checkpoint used on 6x6-grid inputs: terratorch builds the fixed sin-cos table for
    the input's grid; without `image_size` the mismatch is refused instead of read wrongly."""
    case = prithvi_case(v2=True, frames=4, side=4, input_side=6)
    path = save(case.state, tmp_path / "prithvi.pt")
    with pytest.warns(UserWarning, match=r"4x4 -> 6x6, recomputed from Prithvi's 3D sin-cos"):
        encoder = from_pretrained(path, image_size=48)
    identity_statistics(encoder)
    with torch.no_grad():
        assert (encoder(case.batch, return_prefix=True)[0] - case.reference).abs().max() < TOL
    with pytest.warns(UserWarning):
        small = from_pretrained(path)
    with pytest.raises(ConfigError, match=r"laid out for a 4x4 patch grid.*image_size=N"):
        small(case.batch)
    with pytest.raises(ConfigError, match=r"laid out for a 4x4 patch grid, this input makes 2x2.*image_size=N"):
        small({"image": case.batch["image"][..., :16, :16]})


# ---------------------------------------------------- position tables at another input size
def test_mae_table_at_another_input_size_is_interpolated_like_mae(tmp_path: Path) -> None:
    """A 224 px / patch 16 table (14x14) used at 96 px (6x6): MAE's `interpolate_pos_embed`
    (bicubic on the grid, align_corners=False, class slot kept), then timm's forward at 96 px."""
    torch.manual_seed(6)
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=1, num_heads=2, num_classes=0,
                            norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    randomise(vit)
    path = save(vit.state_dict(), tmp_path / "mae_pretrain_vit_nano.pth")
    small = VisionTransformer(img_size=96, patch_size=16, embed_dim=64, depth=1, num_heads=2, num_classes=0,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    pos = vit.pos_embed
    rows = pos[:, 1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2)
    rows = nn.functional.interpolate(rows, size=(6, 6), mode="bicubic", align_corners=False)
    small.load_state_dict(dict(vit.state_dict(), pos_embed=torch.cat([pos[:, :1], rows.permute(0, 2, 3, 1)
                                                                      .reshape(1, 36, 64)], 1)))
    image = torch.randn(2, 3, 96, 96)
    with pytest.warns(UserWarning, match=r"position table 14x14 -> 6x6 by bicubic interpolation"):
        encoder = from_pretrained(path, image_size=96, heads=2)
    identity_statistics(encoder)
    with torch.no_grad():
        assert (encoder({"image": image}, return_prefix=True)[0] - small.forward_features(image)).abs().max() < TOL


def test_satmae_table_at_another_input_size() -> None:
    case = satmae_case(size=32, input_size=48)
    assert (features(case) - case.reference).abs().max() < TOL


# ------------------------------------------------------------------------------ SatMAE
def test_satmae_group_channels_remap_into_a_task(tmp_path: Path) -> None:
    case = satmae_case()
    path = save({"model": case.state, "epoch": 199, "args": argparse.Namespace(model="mae_vit_large_patch16")},
                tmp_path / "satmae.pth")
    with pytest.warns(UserWarning, match="decoder_channel_embed"):
        encoder = from_pretrained(path)
    assert encoder.adapter.groups == [["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A"], ["B11", "B12"]]
    target = MultispectralAdapter(bands=["B02", "B03", "B04", "B08", "B11", "B12"],
                                  groups=[["B02", "B03", "B04", "B08"], ["B11", "B12"]], patch_size=8,
                                  position="learned", max_grid=4)
    with pytest.warns(UserWarning, match=r"groups kept .*dropped \[\['B05'"):
        task = ClassificationTask(target, num_classes=2, size="nano", class_token=True, pretrained=str(path))
    assert torch.equal(task.adapter.patch_embed[1].weight, encoder.adapter.patch_embed[2].weight)
    assert torch.equal(task.adapter.group_embed.weight[1], encoder.adapter.group_embed.weight[2])
    assert task.adapter.std[4] == pytest.approx(4 * 1310.36996126)  # SatMAE's B11 statistics, by name


# ------------------------------------------------------------------ fine-tuned classifiers
@pytest.mark.parametrize("name", ["mae-finetuned-global-pool", "satmae-finetuned-global-pool"])
def test_global_pool_classifiers_load_from_a_file(tmp_path: Path, name: str) -> None:
    """`main_finetune.py`'s default files (fc_norm, no norm) load through `from_pretrained`: the
    pooled feature is fc_norm(mean of patch tokens), as trained; a task reports fc_norm."""
    case = CASES[name]()
    path = save({"model": case.state}, tmp_path / "checkpoint-99.pth")
    with pytest.warns(UserWarning, match=r"dropped \d+ \(head\)"):
        encoder = from_pretrained(path)
    assert isinstance(encoder.encoder.norm, nn.Identity) and encoder.fc_norm is not None
    identity_statistics(encoder)
    with torch.no_grad():
        assert (encoder.pooled(case.batch) - case.reference).abs().max() < TOL
    if name.startswith("mae"):
        adapter = MultispectralAdapter(bands=["R", "G", "B"], patch_size=8, position="learned", max_grid=4)
        with pytest.warns(UserWarning, match=r"new 2 \(.*encoder.norm.*fc_norm \(the norm after mean pooling"):
            task = ClassificationTask(adapter, num_classes=2, size="nano", class_token=True, pretrained=str(path))
        assert torch.equal(task.encoder.blocks[1].mlp.fc2.bias, case.state["blocks.1.mlp.fc2.bias"])


# -------------------------------------------------------------------- facebookresearch/mae
def test_facebook_mae_checkpoint_with_decoder(tmp_path: Path) -> None:
    case = CASES["mae-with-decoder"]()
    path = save({"model": case.state, "args": argparse.Namespace(norm_pix_loss=True)},
                tmp_path / "mae_visualize_vit_nano.pth")
    with pytest.warns(UserWarning, match=r"loaded .*: kept \d+ tensors, dropped 8 \(head, decoder_embed, mask_token"):
        encoder = from_pretrained(path)
    identity_statistics(encoder)
    with torch.no_grad():
        assert (encoder(case.batch, return_prefix=True)[0] - case.reference).abs().max() < TOL
    with pytest.warns(UserWarning), pytest.raises(DataError, match="full=True is not possible"):
        from_pretrained(path, full=True)
    with pytest.raises(DataError, match=r"set `model.class_token: true`"):
        ClassificationTask(MultispectralAdapter(bands=["R", "G", "B"], patch_size=8, position="learned", max_grid=4),
                           num_classes=2, size="nano", pretrained=str(path))
    broken = dict(case.state, **{"blocks.0.attn.q_norm.weight": torch.ones(32)})
    with pytest.raises(DataError, match="cannot place.*q_norm"):
        from_pretrained(save(broken, tmp_path / "broken.pth"))


# ---------------------------------------------------------------- what a file does not say
def test_facts_a_file_does_not_record_are_asked_for_by_name(tmp_path: Path) -> None:
    """heads for a width/depth that is no named size; groups/group size for fine-tuned Point-MAE;
    a fact the converter does not take is refused; kit files take none."""
    bm = bm_mae_case()
    path = save(bm.state, tmp_path / "bmmae.pth")
    with pytest.raises(DataError, match="no maekit size has width 48 and depth 2; pass heads="):
        from_pretrained(path)
    with pytest.warns(UserWarning):
        assert from_pretrained(path, heads=2).encoder.heads == 2
    with pytest.raises(DataError, match="groups does not apply to a bm-mae checkpoint"):
        from_pretrained(path, heads=2, groups=8)
    tuned = save({"base_model": point_mae_state(finetuned=True)}, tmp_path / "scanobjectnn.pth")
    with pytest.raises(DataError, match=r"does not record groups and group_size.*ScanObjectNN 128.*"
                                        r"--model.adapter.init_args.groups"):
        from_pretrained(tuned)
    with pytest.raises(DataError, match=r"does not record group_size"):
        from_pretrained(tuned, groups=128)
    with pytest.warns(UserWarning):
        encoder = from_pretrained(tuned, groups=128, group_size=32)
    assert encoder.adapter.groups == 128 and encoder.adapter.group_size == 32
    pretrain = save({"base_model": point_mae_state()}, tmp_path / "pretrain.pth")
    with pytest.warns(UserWarning, match=r"group size 16 read from increase_dim; 64 groups \(Point-MAE's pretraining"):
        assert from_pretrained(pretrain).adapter.groups == 64


def test_point_mae_finetuned_through_the_cli_options(tmp_path: Path) -> None:
    """What `--model.pretrained X --model.adapter.init_args.groups 8 --model.adapter.init_args.group_size
    16` builds (the CLI instantiates the task with these arguments): the task's adapter says what
    the file does not, and its features are the published model's."""
    from maekit.domains.pointcloud import PointCloudAdapter
    from maekit.finetune.pointcloud import PointCloudClassificationTask

    case = point_mae_case(finetuned=True)
    path = save({"base_model": case.state}, tmp_path / "modelnet.pth")
    with pytest.warns(UserWarning, match=r"loaded .*modelnet.pth: kept \d+ tensors.*dropped 1 \(cls_head_finetune\)"):
        task = PointCloudClassificationTask(PointCloudAdapter(8, 16), num_classes=4, size="nano",
                                            pretrained=str(path))
    task.eval()
    with torch.no_grad():
        _, x = task.encode(case.batch, return_prefix=True)
    assert (x - case.reference).abs().max() < TOL

def test_class_token_starts_fresh_on_weights_without_one(tmp_path: Path) -> None:
    """The reverse case: pretraining weights have no class token (MAE, Point-MAE), a fine-tuning
    model with one keeps everything else and starts its class token fresh, with a warning."""
    adapter = MultispectralAdapter(preset="naip", patch_size=8)
    source = ClassificationTask(adapter, num_classes=2, size="nano")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "k.ckpt")
    with pytest.warns(UserWarning, match="encoder.cls_token"):
        tuned = ClassificationTask(MultispectralAdapter(preset="naip", patch_size=8), num_classes=2, size="nano",
                                   class_token=True, pretrained=str(tmp_path / "k.ckpt"))
    assert torch.equal(tuned.encoder.blocks[0].attn.qkv.weight, source.encoder.blocks[0].attn.qkv.weight)


def test_stack_norm_eps_option() -> None:
    stack = TransformerStack(64, 1, 2, norm_eps=1e-5)
    assert stack.norm.eps == 1e-5 and stack.blocks[0].norm1.eps == 1e-5
    assert TransformerStack(64, 1, 2).norm.eps == 1e-6


def test_builtin_entries_are_real_and_unverified() -> None:
    entries = registry()
    names = {"mae-vit-base-imagenet-pretrain", "mae-vit-large-imagenet-visualize", "prithvi-eo-1-100m",
             "prithvi-eo-2-300m", "prithvi-eo-2-600m-tl", "satmae-vit-large-sentinel2", "bm-mae-brats2021"}
    assert names <= set(entries)
    for name in names:
        entry = entries[name]
        assert entry["url"].startswith("https://") and entry["licence"] and entry["domain"] in ("multispectral", "mri")
        assert entry["sha256"] is None and (entry.get("bands") or entry.get("modalities"))
    with pytest.raises(WeightsError, match="no sha256 is pinned"):
        from_pretrained("prithvi-eo-2-300m")
