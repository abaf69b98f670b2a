"""Converters of public checkpoints: MONAI models verified numerically against MONAI itself,
the others built with the published architectures' key names and shapes (from MONAI / timm
blocks where the upstream model is made of them) and checked against a forward pass written
from the published formulas."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from maekit.backbones import TransformerStack
from maekit.domains import MultispectralAdapter, VolumeAdapter
from maekit.errors import DataError
from maekit.finetune import ClassificationTask
from maekit.weights import WeightsError, from_pretrained, registry
from maekit.weights.converters import convert_monai_vit, detect_format
from maekit.weights.hub import build_pretrained

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
    with pytest.warns(UserWarning, match="left out parts the encoder does not use"):  # norm_cross_attn (+ head)
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
    with pytest.warns(UserWarning, match=r"norm_cross_attn., .decoder."):
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


# ----------------------------------------------------------------------------- Prithvi
def published_vit_blocks(width: int, depth: int, heads: int, eps: float) -> tuple[nn.ModuleList, nn.LayerNorm]:
    blocks = nn.ModuleList(Block(width, heads, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=eps))
                           for _ in range(depth))
    norm = nn.LayerNorm(width, eps=eps)
    for part in (blocks, norm):
        randomise(part)
    return blocks, norm


def prithvi_state(v2: bool, frames: int = 3, grid: int = 4, patch: int = 8) -> tuple[dict[str, Tensor], nn.ModuleList,
                                                                                        nn.LayerNorm]:
    """A Prithvi checkpoint with the published key names and shapes (Conv3d (D, 6, 1, p, p),
    `pos_embed` (1, 1 + T g^2, D), timm blocks), at nano width."""
    torch.manual_seed(2)
    blocks, norm = published_vit_blocks(64, 2, 2, 1e-5)
    state = {"patch_embed.proj.weight": torch.randn(64, 6, 1, patch, patch) * 0.1,
             "patch_embed.proj.bias": torch.randn(64) * 0.1, "cls_token": torch.randn(1, 1, 64),
             "pos_embed": torch.cat([torch.zeros(1, 1, 64), torch.randn(1, frames * grid * grid, 64)], 1),
             **{f"blocks.{k}": v for k, v in blocks.state_dict().items()},
             **{f"norm.{k}": v for k, v in norm.state_dict().items()},
             "decoder_embed.weight": torch.zeros(32, 64), "mask_token": torch.zeros(1, 1, 32)}
    if v2:
        state = {("decoder." if k.startswith(("decoder", "mask")) else "encoder.") + k: v for k, v in state.items()}
        state["encoder.temporal_embed_enc.scale"] = torch.tensor([0.1])
        state["encoder.location_embed_enc.scale"] = torch.tensor([0.1])
    return state, blocks, norm


@pytest.mark.parametrize("v2", [False, True])
def test_prithvi_single_frame_features(tmp_path: Path, v2: bool) -> None:
    state, blocks, norm = prithvi_state(v2)
    path = save({"model": state} if not v2 else state, tmp_path / "prithvi.pt")
    with pytest.warns(UserWarning, match="temporal_embed_enc" if v2 else "decoder_embed"):
        encoder = from_pretrained(path)
    assert encoder.adapter.bands == ["B02", "B03", "B04", "B05", "B06", "B07"]
    assert encoder.config["source_format"] == ("prithvi-eo-2" if v2 else "prithvi-eo-1")
    assert encoder.adapter.mean[0] == (1087.0 if v2 else 775.0)
    identity_statistics(encoder)
    get = (lambda k: state["encoder." + k]) if v2 else (lambda k: state[k])
    image = torch.randn(2, 6, 32, 32)
    with torch.no_grad():  # Prithvi for one frame (T=1): Conv3d, frame 0 positions, class token + its slot
        x = nn.functional.conv3d(image[:, :, None], get("patch_embed.proj.weight"), get("patch_embed.proj.bias"),
                                 stride=(1, 8, 8)).flatten(2).transpose(1, 2)
        pos = get("pos_embed")
        x = torch.cat([(get("cls_token") + pos[:, :1]).expand(2, -1, -1), x + pos[:, 1:17]], 1)
        for block in blocks:
            x = block(x)
        theirs = norm(x)
        ours, _ = encoder({"image": image}, return_prefix=True)
    assert (ours - theirs).abs().max() < TOL


# ------------------------------------------------------------------------------ SatMAE
def test_satmae_group_channels_match_and_remap(tmp_path: Path) -> None:
    torch.manual_seed(3)
    blocks, norm = published_vit_blocks(64, 2, 2, 1e-6)
    groups = [[0, 1, 2, 6], [3, 4, 5, 7], [8, 9]]
    state = {**{f"patch_embed.{g}.proj.weight": torch.randn(64, len(idx), 8, 8) * 0.1 for g, idx in enumerate(groups)},
             **{f"patch_embed.{g}.proj.bias": torch.randn(64) * 0.1 for g in range(3)},
             "cls_token": torch.randn(1, 1, 64), "pos_embed": torch.randn(1, 17, 48), "channel_embed": torch.randn(1, 3, 16),
             **{f"blocks.{k}": v for k, v in blocks.state_dict().items()},
             **{f"norm.{k}": v for k, v in norm.state_dict().items()},
             "decoder_embed.weight": torch.zeros(32, 64), "decoder_channel_embed": torch.zeros(1, 4, 8)}
    path = save({"model": state, "epoch": 199, "args": argparse.Namespace(model="mae_vit_large_patch16")},
                tmp_path / "satmae.pth")
    with pytest.warns(UserWarning, match="decoder_channel_embed"):
        encoder = from_pretrained(path)
    assert encoder.adapter.groups == [["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A"], ["B11", "B12"]]
    identity_statistics(encoder)
    image = torch.randn(2, 10, 32, 32)
    with torch.no_grad():  # SatMAE: per-group conv + cat(pos, channel); class token + cat(pos[0], 0)
        parts = [nn.functional.conv2d(image[:, idx], state[f"patch_embed.{g}.proj.weight"],
                                      state[f"patch_embed.{g}.proj.bias"], stride=8).flatten(2).transpose(1, 2)
                 + torch.cat([state["pos_embed"][0, 1:], state["channel_embed"][0, g].expand(16, -1)], 1)
                 for g, idx in enumerate(groups)]
        cls = state["cls_token"] + torch.cat([state["pos_embed"][:, :1], torch.zeros(1, 1, 16)], 2)
        x = torch.cat([cls.expand(2, -1, -1), *parts], 1)
        for block in blocks:
            x = block(x)
        theirs = norm(x)
        ours, _ = encoder({"image": image}, return_prefix=True)
    assert (ours - theirs).abs().max() < TOL
    target = MultispectralAdapter(bands=["B02", "B03", "B04", "B08", "B11", "B12"],
                                  groups=[["B02", "B03", "B04", "B08"], ["B11", "B12"]], patch_size=8,
                                  position="learned", max_grid=4)
    with pytest.warns(UserWarning, match=r"groups kept .*dropped \[\['B05'"):
        task = ClassificationTask(target, num_classes=2, size="nano", class_token=True, pretrained=str(path))
    assert torch.equal(task.adapter.patch_embed[1].weight, encoder.adapter.patch_embed[2].weight)
    assert torch.equal(task.adapter.group_embed.weight[1], encoder.adapter.group_embed.weight[2])
    assert task.adapter.std[4] == pytest.approx(4 * 1310.36996126)  # SatMAE's B11 statistics, by name


# -------------------------------------------------------------------- facebookresearch/mae
def test_facebook_mae_checkpoint_with_decoder(tmp_path: Path) -> None:
    torch.manual_seed(4)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0,
                            norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    with torch.no_grad():
        vit.pos_embed.normal_(std=0.1)
    decoder = {"decoder_embed.weight": torch.randn(32, 64), "mask_token": torch.randn(1, 1, 32),
               "decoder_pos_embed": torch.randn(1, 17, 32), "decoder_blocks.0.norm1.weight": torch.ones(32),
               "decoder_norm.weight": torch.ones(32), "decoder_pred.weight": torch.randn(192, 32)}
    path = save({"model": {**vit.state_dict(), **decoder}, "args": argparse.Namespace(norm_pix_loss=True)},
                tmp_path / "mae_visualize_vit_nano.pth")
    with pytest.warns(UserWarning, match=r"decoder_embed., .mask_token"):
        encoder = from_pretrained(path)
    identity_statistics(encoder)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (encoder({"image": image}, return_prefix=True)[0] - vit.forward_features(image)).abs().max() < TOL
    with pytest.warns(UserWarning), pytest.raises(DataError, match="full=True is not possible"):
        from_pretrained(path, full=True)
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"set `model.class_token: true`"):
        ClassificationTask(MultispectralAdapter(bands=["R", "G", "B"], patch_size=8, position="learned", max_grid=4),
                           num_classes=2, size="nano", pretrained=str(path))
    broken = dict(vit.state_dict(), **{"blocks.0.attn.q_norm.weight": torch.ones(32)})
    with pytest.raises(DataError, match="cannot place.*q_norm"):
        from_pretrained(save(broken, tmp_path / "broken.pth"))


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
