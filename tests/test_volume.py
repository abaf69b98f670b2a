"""The 3D volume adapter: multimodal MRI with missing modalities, and the MAE on top of it."""

from __future__ import annotations

import pytest
import torch

from maekit.domains import VolumeAdapter
from maekit.domains.patches import _embed_slice, _TokenError
from maekit.pretrain import GroupDirichletMasking, MaskedAutoencoder


def mri_batch(batch: int = 2, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    present = torch.tensor([[True, True, True, True], [False, True, False, True]])[:batch]
    return {"image": torch.randn(batch, 4, size, size, size, generator=g), "modality_present": present}


def test_volume_round_trip_and_modality_presence() -> None:
    adapter = VolumeAdapter(patch_size=8)
    batch = mri_batch()
    tokens = adapter.tokenize(batch)
    assert tokens.grid == (2, 2, 2) and tokens.values.shape == (2, 4 * 8, 512)
    assert torch.allclose(adapter.untokenize(tokens.values, tokens), batch["image"])
    per_modality = tokens.present.reshape(2, 4, 8)
    assert per_modality[0].all()
    assert per_modality[1].all(1).tolist() == [False, True, False, True]
    assert not per_modality[1, [0, 2]].any()
    assert tokens.may_be_absent


def test_subset_of_modalities_keeps_the_model_layout() -> None:
    adapter = VolumeAdapter(patch_size=8, input_modalities=["t1ce", "flair"])
    batch = {"image": torch.randn(1, 2, 16, 16, 16), "modality_present": torch.tensor([[True, False]])}
    tokens = adapter.tokenize(batch)
    assert sorted(tokens.group[0].unique().tolist()) == [1, 3]
    assert tokens.present.reshape(1, 2, 8)[0].all(1).tolist() == [True, False]
    back = adapter.untokenize(tokens.values, tokens)
    assert torch.allclose(back[:, [1, 3]], batch["image"]) and back[:, [0, 2]].abs().sum() == 0


def test_missing_modalities_never_visible_and_loss_finite() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(VolumeAdapter(patch_size=8), size="nano", decoder_width=32, decoder_depth=1,
                            decoder_heads=2, masking=GroupDirichletMasking(0.75, num_groups=4))
    batch = mri_batch()
    out = mae(batch)
    assert not (out.visible.mask & ~out.tokens.present).any()
    assert not (out.scored & ~out.tokens.present).any()
    assert torch.isfinite(out.loss)
    # a case with a single present modality still trains (no NaN), as does a fully absent one
    batch["modality_present"] = torch.tensor([[False, False, True, False], [False, False, False, False]])
    out = mae(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # the decoder still predicts every position, missing modalities included
    assert out.pred.shape == (2, 32, 512) and torch.isfinite(out.pred).all()


def test_ct_single_channel_and_errors() -> None:
    adapter = VolumeAdapter(modalities=["ct"], patch_size=4)
    tokens = adapter.tokenize({"image": torch.randn(1, 1, 8, 12, 16)})
    assert tokens.grid == (2, 3, 4) and not tokens.may_be_absent
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        adapter.tokenize({"image": torch.randn(1, 1, 8, 12, 15)})
    with pytest.raises(ValueError, match="expected 3-D data"):
        adapter.tokenize({"image": torch.randn(1, 1, 8, 12)})
    with pytest.raises(ValueError, match="unknown modality 'pet'"):
        VolumeAdapter(modalities=["ct"], input_modalities=["pet"])


def test_hierarchical_decoder_reads_several_encoder_depths() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(VolumeAdapter(modalities=["ct"], patch_size=4), size="micro", decoder_width=32,
                            decoder_depth=2, decoder_heads=2, decoder_reads=[1, 2, 4])
    batch = {"image": torch.randn(2, 1, 16, 16, 16)}
    torch.manual_seed(1)
    out = mae(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert mae.decoder.cross[0].kv.weight.grad.abs().sum() > 0  # the cross-attention is used
    with pytest.raises(ValueError, match="decoder_reads"):
        MaskedAutoencoder(VolumeAdapter(modalities=["ct"], patch_size=4), size="nano", decoder_reads=[5])


def _reference_tokens(full: torch.Tensor, groups: list[list[int]], p: int, width: int) -> torch.Tensor:
    """Token values cut patch by patch: group-major, patches row-major, (channel, x, y, z) inside."""
    b, _, *spatial = full.shape
    out = []
    for channels in groups:
        for i in range(spatial[0] // p):
            for j in range(spatial[1] // p):
                for k in range(spatial[2] // p):
                    cube = full[:, channels, i * p:(i + 1) * p, j * p:(j + 1) * p, k * p:(k + 1) * p].reshape(b, -1)
                    out.append(torch.nn.functional.pad(cube, (0, width - cube.shape[1])))
    return torch.stack(out, 1)


@pytest.mark.parametrize("seed", range(4))
def test_patchify_in_one_copy_gives_the_patch_by_patch_tokens(seed: int) -> None:
    """Stacked single-modality groups take the one-reshape path, a subset of input modalities
    (group 0 or a middle one missing) the per-group path; both cut the same tokens."""
    g = torch.Generator().manual_seed(seed)
    names = ["t1", "t1ce", "t2", "flair"]
    inputs = [names, names[1:], ["t1", "t2", "flair"], ["flair", "t1"]][seed]
    adapter = VolumeAdapter(modalities=names, patch_size=4, input_modalities=inputs, norm_pix_loss=False)
    shape = [int(v) for v in torch.randint(1, 4, (3,), generator=g) * 4]
    image = torch.randn(2, len(inputs), *shape, generator=g)
    tokens = adapter.tokenize({"image": image})
    full = adapter.scatter_input(image)
    expected = _reference_tokens(full, [[c] for c in adapter.present_groups], 4, adapter.token_size)
    assert torch.equal(tokens.values, expected)
    assert (adapter._stacked_groups() is not None) == (seed in (0, 1))


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_token_loss_equals_the_plain_formula_with_gradients(loss: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(7)
    adapter = VolumeAdapter(modalities=["t1", "t2"], patch_size=4, loss=loss)
    tokens = adapter.tokenize({"image": torch.randn(2, 2, 8, 4, 12)})
    monkeypatch.setattr(_TokenError, "BLOCK", 200)  # several blocks of tokens (64 values each)
    pred = torch.randn(*tokens.values.shape, dtype=torch.float64, requires_grad=True)
    target = torch.randn(*tokens.values.shape, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(tokens.values.shape[:2], dtype=torch.float64)
    got = adapter.loss(pred, target, tokens)
    grads = torch.autograd.grad((got * weights).sum(), (pred, target))
    error = (pred - target).abs() if loss == "l1" else (pred - target) ** 2
    expected = error.mean(-1)
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)
    for a, b in zip(grads, torch.autograd.grad((expected * weights).sum(), (pred, target))):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    small = target.detach()[:1, :3, :5]
    assert torch.autograd.gradcheck(lambda p: adapter.loss(p, small, tokens), (pred.detach()[:1, :3, :5].requires_grad_(),))


def test_group_embedding_reads_token_slices_in_place_with_the_linear_s_values_and_gradients() -> None:
    torch.manual_seed(4)
    layer = torch.nn.Linear(64, 24)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(24))
    values = torch.randn(3, 40, 64, requires_grad=True)
    part = values[:, 10:25]  # one group's tokens of every sample: no (B * num, P) view
    got, expected = _embed_slice(layer, part), layer(part)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad((got * weights).sum(), (layer.weight, layer.bias, values)),
                    torch.autograd.grad((expected * weights).sum(), (layer.weight, layer.bias, values))):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_labelled_cases_keeps_a_seeded_few_training_cases_and_the_same_validation(tmp_path) -> None:
    import numpy as np

    from maekit.domains.volume import VolumeDataModule
    from maekit.domains.volume.samples import make_pairs_dataset
    from maekit.errors import ConfigError
    from maekit.finetune.probe import labelled_subset

    rng = np.random.default_rng()
    cases, keep, seed, draw = int(rng.integers(8, 12)), int(rng.integers(1, 5)), int(rng.integers(100)), int(rng.integers(100))
    root = make_pairs_dataset(tmp_path / "set", cases=cases, unlabelled=0, seed=seed)

    def module(**kw: object) -> VolumeDataModule:
        dm = VolumeDataModule(str(root), kind="mri", roi_size=[16, 16, 16], labels=[0, 1, 2], val_fraction=0.25,
                              seed=seed, **kw)
        dm.setup("fit")
        return dm

    full, few = module(), module(labelled_cases=keep, labelled_seed=draw)
    names = lambda dm, part: [c.name for c in dm.datasets[part].cases]  # noqa: E731
    assert names(few, "val") == names(full, "val")  # the held-out cases do not move
    # the kept cases are `maekit probe`'s draw of as many cases with that seed
    expected = labelled_subset(np.zeros(len(full.datasets["train"]), np.int64), keep, draw, "case")
    assert names(few, "train") == [names(full, "train")[i] for i in expected]
    assert len(set(names(few, "train"))) == keep
    assert names(module(labelled_cases=keep, labelled_seed=draw), "train") == names(few, "train")
    others = {tuple(names(module(labelled_cases=keep, labelled_seed=draw + k), "train")) for k in range(1, 6)}
    assert others - {tuple(names(few, "train"))}  # another seed, another draw
    with pytest.raises(ConfigError, match="only .* training case"):
        module(labelled_cases=cases)
    with pytest.raises(ConfigError, match="at least 1"):
        VolumeDataModule(str(root), labels=[0, 1, 2], labelled_cases=0)
    with pytest.raises(ConfigError, match="declare the labels"):
        VolumeDataModule(str(root), kind="mri", roi_size=[16, 16, 16], labelled_cases=keep).setup("fit")
