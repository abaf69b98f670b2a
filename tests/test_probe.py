"""`maekit probe`: frozen-feature kNN / linear probes and the dense Dice probe, pretrained vs random."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.cli import main
from maekit.datasets.medical_samples import make_ct_dataset
from maekit.datasets.samples import make_chip_dataset
from maekit.errors import ConfigError
from maekit.finetune.probe import (
    dense_probe_dice, dice_scores, extract, knn_accuracy, labelled_subset, logistic_accuracy, parse_budgets,
    probe_models, probe_scores, tokens_to_voxels, voxels_to_tokens,
)

from .conftest import REPO

CONFIGS = REPO / "configs"
NAIP_TINY = ["--model.size", "nano", "--model.adapter.init_args.patch_size", "8", "--data.num_workers", "0"]
CT_TINY = ["--model.size", "nano", "--model.adapter.init_args.patch_size", "8", "--data.num_workers", "0",
           "--data.roi_size", "[16,16,16]"]


def _separable(rng: np.random.Generator, classes: int, per_class: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(classes, dim)) * 4
    y = np.repeat(np.arange(classes), per_class)
    return centres[y] + rng.normal(size=(len(y), dim)), y


def _checkpoint(model: torch.nn.Module, path: Path, seed: int) -> Path:
    """A maekit-style checkpoint of `model` with every weight moved away from its initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


# ----------------------------------------------------------------------------- classifiers
@pytest.mark.parametrize("seed", [int(np.random.default_rng().integers(1000))])
def test_knn_and_linear_probe_score_structure_and_fall_to_chance_on_shuffled_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes, dim = int(rng.integers(3, 6)), int(rng.integers(8, 24))
    x, y = _separable(rng, classes, 60, dim)
    train = rng.permutation(len(y))[: len(y) // 2]
    test = np.setdiff1d(np.arange(len(y)), train)
    chance = 1 / classes
    assert knn_accuracy(x[train], y[train], x[test], y[test], k=20) > 0.9
    assert logistic_accuracy(x[train], y[train], x[test], y[test]) > 0.9
    # features no longer go with their labels; one shuffle of ~100 clustered points swings far from
    # chance (a cluster's neighbours share one drawn label), so the mean over several shuffles is tested
    shuffles = [rng.permutation(y[train]) for _ in range(32)]
    assert np.mean([knn_accuracy(x[train], s, x[test], y[test], k=20) for s in shuffles]) < chance + 0.2
    assert np.mean([logistic_accuracy(x[train], s, x[test], y[test]) for s in shuffles[:8]]) < chance + 0.2
    # one labelled example per class: k capped, C fixed without cross-validation, still above chance
    one = labelled_subset(y[train], 1, seed)
    assert knn_accuracy(x[train][one], y[train][one], x[test], y[test], k=20) > chance + 0.3
    assert logistic_accuracy(x[train][one], y[train][one], x[test], y[test]) > chance + 0.3


def test_knn_votes_by_cosine_similarity_not_distance() -> None:
    """Scaled copies of a direction are the same point to a cosine kNN."""
    rng = np.random.default_rng(3)
    directions = rng.normal(size=(2, 6))
    train_x = np.concatenate([directions[0] * rng.uniform(0.1, 10, (5, 1)), directions[1] * rng.uniform(0.1, 10, (5, 1))])
    train_y = np.repeat([0, 1], 5)
    test_x = directions * np.array([[100.0], [0.01]])
    assert knn_accuracy(train_x, train_y, test_x, np.array([0, 1]), k=3) == 1.0


@pytest.mark.parametrize("seed", [int(np.random.default_rng().integers(1000))])
def test_knn_standardise_removes_a_shared_direction_and_still_fails_on_shuffled_labels(seed: int) -> None:
    """A few feature dimensions of large variance unrelated to the class (as MAE features have)
    drown a cosine kNN's class signal; standardising by the training samples' statistics recovers it."""
    rng = np.random.default_rng(seed)
    classes, dim = int(rng.integers(3, 6)), int(rng.integers(8, 24))
    x, y = _separable(rng, classes, 60, dim)
    nuisance = rng.normal(size=(len(y), int(rng.integers(3, 6)))) * rng.uniform(50, 200)
    x = np.concatenate([x * 0.01, nuisance], 1)[:, rng.permutation(dim + nuisance.shape[1])]
    train = rng.permutation(len(y))[: len(y) // 2]
    test = np.setdiff1d(np.arange(len(y)), train)
    chance = 1 / classes
    plain = knn_accuracy(x[train], y[train], x[test], y[test], k=20)
    standardised = knn_accuracy(x[train], y[train], x[test], y[test], k=20, standardise=True)
    assert standardised > 0.9 and standardised > plain + 0.2
    wrong = (y[train] + 1) % classes  # every feature with another class's label
    assert knn_accuracy(x[train], wrong, x[test], y[test], k=20, standardise=True) < chance / 2


def test_probe_scores_pool_random_initialisations() -> None:
    """`random#i` models are pooled into `random`: mean and std over every initialisation and draw."""
    rng = np.random.default_rng(int(np.random.default_rng().integers(1000)))
    classes, dim = 3, int(rng.integers(6, 12))
    feats = {}
    for name in ("pretrained", "random", "random#1"):
        x, y = _separable(rng, classes, 30, dim)
        feats[name] = (torch.from_numpy(x).float(), torch.from_numpy(y), None)
    test = {name: (f[0][::2], f[1][::2], None) for name, f in feats.items()}
    pooled = probe_scores(feats, test, [5], seeds=2)["5"]
    assert set(pooled) == {"pretrained", "random"}
    alone = [probe_scores({"m": feats[n]}, {"m": test[n]}, [5], seeds=2)["5"]["m"] for n in ("random", "random#1")]
    assert pooled["random"]["knn"] == pytest.approx(np.mean([a["knn"] for a in alone]))
    assert pooled["random"]["linear"] == pytest.approx(np.mean([a["linear"] for a in alone]))


def test_budgets_draw_exactly_n_per_class_and_differ_by_seed() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, 300)
    n = int(rng.integers(2, 8))
    draws = [labelled_subset(labels, n, seed) for seed in range(3)]
    for idx in draws:
        assert np.bincount(labels[idx], minlength=5).tolist() == [n] * 5 and len(set(idx)) == len(idx)
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])
    assert np.array_equal(draws[0], labelled_subset(labels, n, 0))
    assert np.array_equal(labelled_subset(labels, None, 0), np.arange(300))
    with pytest.raises(ConfigError, match="class 2 has only 1 training sample"):
        labelled_subset(np.array([0, 0, 1, 1, 2]), 2, 0)
    assert parse_budgets("1, 5,all") == [1, 5, None]
    with pytest.raises(ConfigError, match="'0' is neither"):
        parse_budgets("0,5")


# ----------------------------------------------------------------------------- dense probe
def test_tokens_to_voxels_puts_each_token_on_its_patch() -> None:
    rng = np.random.default_rng(5)
    grid, patch, classes = tuple(int(g) for g in rng.integers(1, 4, 3)), int(rng.integers(2, 4)), 2
    index = torch.arange(int(np.prod(grid)), dtype=torch.float32).reshape(1, *grid, 1)
    logits = index.expand(1, *grid, classes * patch**3)
    voxels = tokens_to_voxels(logits, patch, classes)
    assert voxels.shape == (1, classes, *(g * patch for g in grid))
    z, y, x = (int(v) for v in rng.integers(0, [g * patch for g in grid]))
    assert voxels[0, 1, z, y, x] == index[0, z // patch, y // patch, x // patch, 0]


def test_voxels_to_tokens_inverts_tokens_to_voxels() -> None:
    rng = np.random.default_rng(int(np.random.default_rng().integers(1000)))
    patch, grid = int(rng.integers(1, 4)), [int(g) for g in rng.integers(1, 4, 3)]
    values = torch.from_numpy(rng.integers(0, 100, (2, *[g * patch for g in grid])))
    tokens = voxels_to_tokens(values, patch)
    assert tokens.shape == (2, *grid, patch**3)
    assert torch.equal(tokens_to_voxels(tokens, patch, 1)[:, 0], values)


def test_dice_scores_by_class_present_in_each_case() -> None:
    truth = torch.zeros(2, 4, 4, dtype=torch.long)
    truth[0, :2] = 1  # case 0: class 1 on 8 voxels; case 1: class 2 on 4 voxels
    truth[1, 0] = 2
    pred = truth.clone()
    pred[0, 0] = 0  # half of class 1 missed: Dice 2*4/(4+8)
    valid = torch.ones_like(truth, dtype=torch.bool)
    assert dice_scores(pred, truth, valid, 3) == pytest.approx(np.mean([8 / 12, 1.0]))
    assert dice_scores(torch.zeros_like(truth), torch.zeros_like(truth), valid, 3) != dice_scores(pred, truth, valid, 3)


def test_dense_probe_learns_token_labels_and_fails_on_shuffled_cases() -> None:
    rng = np.random.default_rng(6)
    cases, grid, patch, classes, dim = 12, 3, 2, 3, 16
    patch_labels = torch.from_numpy(rng.integers(0, classes, (cases, grid, grid, grid)))
    codes = torch.from_numpy(rng.normal(size=(classes, dim))).float()
    features = (codes[patch_labels] + 0.3 * torch.randn(cases, grid, grid, grid, dim)).movedim(-1, 1)
    masks = patch_labels.repeat_interleave(patch, 1).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    valid = torch.ones_like(masks, dtype=torch.bool)
    train, test = slice(0, 8), slice(8, 12)
    good = dense_probe_dice(features[train], masks[train], valid[train], features[test], masks[test], valid[test],
                            patch, classes, steps=150)
    order = torch.from_numpy(rng.permutation(8))
    shuffled = dense_probe_dice(features[train], masks[train][order], valid[train], features[test], masks[test],
                                valid[test], patch, classes, steps=150)
    assert good > 0.9 and shuffled < 0.6
    # mini-batches of tokens (the cheaper head for many cases) learn the same structure
    batched = dense_probe_dice(features[train], masks[train], valid[train], features[test], masks[test], valid[test],
                               patch, classes, steps=150, batch_tokens=int(rng.integers(32, 96)))
    assert batched > 0.9


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chip_dataset(tmp_path_factory.mktemp("probe_chips"), "naip", "classification", per_class=6,
                             val_per_class=3, size=16, seed=7)


def test_probe_cli_writes_json_for_pretrained_and_random(chips: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from maekit.domains import MultispectralAdapter
    from maekit.finetune.frozen import FrozenFeatureEvaluation

    torch.manual_seed(11)
    source = FrozenFeatureEvaluation(MultispectralAdapter(preset="naip", patch_size=8), size="nano", pooling="mean")
    ckpt = _checkpoint(source, tmp_path / "trained.ckpt", seed=12)
    args = ["-c", str(CONFIGS / "naip" / "probe.yaml"), "--data.root", str(chips), *NAIP_TINY,
            "--model.pretrained", str(ckpt)]
    out = tmp_path / "out" / "probe.json"
    assert main(["probe", *args, "--labels_per_class", "1,all", "--seeds", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "pretrained linear" in printed and "validation split" in printed
    assert set(result["labels_per_class"]) == {"1", "all"}
    for budget in result["labels_per_class"].values():
        for model in ("pretrained", "random"):
            scores = budget[model]
            assert set(scores) == {"knn", "linear", "knn_std", "linear_std"}
            assert all(0 <= scores[m] <= 1 for m in ("knn", "linear"))
    assert result["labels_per_class"]["all"]["pretrained"]["knn_std"] == 0.0  # one draw (random: 3 inits)
    assert result["n_train"] == 24 and result["n_test"] == 12 and result["test_split"] == "val"
    assert result["weights"] == str(ckpt) and result["seeds"] == 2 and result["classes"] == 4
    assert result["random_inits"] == 3 and "3 initialisation(s)" in printed

    # the "pretrained" model is the checkpoint's; the random ones are not, and differ from each other
    models, datamodule, _ = probe_models(args, random_inits=2)
    assert set(models) == {"pretrained", "random", "random#1"}
    key = "encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(models["pretrained"].state_dict()[key], source.state_dict()[key])
    assert not torch.allclose(models["random"].state_dict()[key], source.state_dict()[key])
    assert not torch.allclose(models["random"].state_dict()[key], models["random#1"].state_dict()[key])
    assert torch.equal(probe_models(args)[0]["random"].state_dict()[key], models["random"].state_dict()[key])
    from maekit.finetune.probe import evaluation_loaders

    train, _, _, _ = evaluation_loaders(datamodule)
    device = torch.device("cpu")
    loaded, again = extract(models["pretrained"], train, False, device), extract(models["pretrained"], train, False, device)
    fresh = extract(models["random"], train, False, device)
    assert torch.equal(loaded[0], again[0])  # no augmentation: the same features every pass
    assert torch.equal(loaded[1], fresh[1]) and not torch.allclose(loaded[0], fresh[0], atol=1e-3)

    with pytest.raises(ConfigError, match="give --model.pretrained"):
        probe_models(args[:-2])


def test_probe_cli_dense_dice_on_volumes(tmp_path: Path) -> None:
    from maekit.domains import VolumeAdapter
    from maekit.finetune.frozen import FrozenFeatureEvaluation

    root = make_ct_dataset(tmp_path / "ct", cases=6, size=16, seed=8)
    source = FrozenFeatureEvaluation(VolumeAdapter(modalities=["ct"], patch_size=8), size="nano")
    ckpt = _checkpoint(source, tmp_path / "ct.ckpt", seed=13)
    out = tmp_path / "dice.json"
    assert main(["probe", "-c", str(CONFIGS / "ct" / "probe.yaml"), "--data.root", str(root), *CT_TINY,
                 "--data.val_fraction", "0.34", "--model.pretrained", str(ckpt), "--labels_per_class", "2,all",
                 "--seeds", "2", "--head_steps", "30", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"] == ["dice"] and result["unit"] == "case" and result["classes"] == 4
    assert result["n_train"] == 4 and result["n_test"] == 2
    for budget in ("2", "all"):
        for model in ("pretrained", "random"):
            assert 0 <= result["labels_per_class"][budget][model]["dice"] <= 1
            assert "dice_std" in result["labels_per_class"][budget][model]


@pytest.mark.parametrize("domain", ["naip", "sentinel2", "ct", "pointcloud", "skeleton", "rgb", "mri"])
def test_shipped_probe_configs_build_a_frozen_feature_model(domain: str, tmp_path: Path) -> None:
    from maekit.cli import MaekitCLI
    from maekit.finetune.frozen import FrozenFeatureEvaluation

    cli = MaekitCLI(args=["-c", str(CONFIGS / domain / "probe.yaml"), "--data.root", str(tmp_path),
                          "--model.size", "nano"], run=False)
    assert isinstance(cli.model, FrozenFeatureEvaluation) and cli.config["model"]["init_args"]["pretrained"] is None
    assert getattr(cli.datamodule, "labels_per_class", None) is None  # the probe draws its own budgets


def test_probe_on_mixed_sensors_batches_one_sensor_at_a_time(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`maekit probe` on a MultiSensorDataModule: the training features are read one sensor per
    batch (a mixed batch is refused by the collate), every training sample once, with its label."""
    from maekit.cli import cmd_sample_data
    from maekit.domains.multispectral import WavelengthAdapter
    from maekit.finetune.frozen import FrozenFeatureEvaluation
    from maekit.finetune.probe import evaluation_loaders

    root = tmp_path / "scenes"
    assert cmd_sample_data([str(root), "--preset", "multisensor", "--per-class", "3", "--val-per-class", "1",
                            "--size", "32", "--seed", "5"]) == 0
    sources = "[{root: %s, sensor: naip}, {root: %s, sensor: sentinel2}, {root: %s, sensor: landsat8}]" % (
        root / "naip", root / "sentinel2", root / "landsat8")
    torch.manual_seed(3)
    source = FrozenFeatureEvaluation(WavelengthAdapter(sensor=None, patch_size=4), size="nano", pooling="mean")
    ckpt = _checkpoint(source, tmp_path / "w.ckpt", seed=4)
    # batch 5 does not divide a sensor's 12 training chips: a plain loader would mix sensors
    args = ["-c", str(CONFIGS / "multisensor" / "probe.yaml"), "--data.sources", sources, "--model.size", "nano",
            "--model.adapter.init_args.patch_size", "4", "--data.num_workers", "0", "--data.batch_size", "5", "--model.pretrained", str(ckpt)]
    models, datamodule, _ = probe_models(args)
    train, test, split, _ = evaluation_loaders(datamodule)
    batches = list(train)
    assert all(len(set(b["path"])) == len(b["path"]) for b in batches)
    for b in batches:  # every chip of a batch from its sensor's folder
        assert all(Path(p).is_relative_to(root / b["sensor"]) for p in b["path"]), b["path"]
    paths = [p for b in batches for p in b["path"]]
    assert sorted(paths) == sorted(datamodule.train_dataloader().dataset[i]["path"]
                                   for i in range(len(datamodule.train_dataloader().dataset)))
    assert {b["sensor"] for b in batches} == {"naip", "sentinel2", "landsat8"}
    features, labels, _ = extract(models["pretrained"], train, False, torch.device("cpu"))
    assert len(features) == len(labels) == 36
    assert labels.tolist() == [int(v) for b in batches for v in b["label"]]  # row i is sample i's label
    out = tmp_path / "probe.json"
    assert main(["probe", *args, "--labels_per_class", "1", "--seeds", "1", "--random_inits", "1",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_train"] == 36 and result["n_test"] == 12 and result["classes"] == 4 and split == "val"
