"""Skeleton sequences: NTU `.skeleton` parsing, NTU-style arrays, tokens and targets, maskers,
augmentations, bad inputs, and pretrain -> linear probe / fine-tune through the CLI."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.cli import main
from maekit.datasets.skeleton import (
    SkeletonDataModule, crop_resize, load_skeleton_file, random_linear_map, read_array_file, read_skeleton_file,
)
from maekit.datasets.skeleton_samples import make_skeleton_dataset, pose_sequence, write_skeleton_file
from maekit.domains.skeleton import NTU25, SkeletonAdapter, Topology
from maekit.errors import ConfigError, DataError
from maekit.pretrain.masking import GroupMasking, RandomMasking, SaliencyMasking

from .conftest import CPU_TRAINER, REPO, TINY_DECODER, TINY_MODEL


@pytest.fixture(scope="module")
def skeletons(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_skeleton_dataset(tmp_path_factory.mktemp("skel"), per_class=6, frames=32, seed=3)


def test_skeleton_file_round_trip_keeps_the_two_most_active_bodies_centred(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    actor = pose_sequence("wave", 20, rng)
    idle = pose_sequence("wave", 20, rng, idle=True) + np.float32([1.0, 0.0, 0.0])
    clutter = np.repeat(pose_sequence("wave", 1, rng, idle=True), 20, 0) - np.float32([1.0, 0.0, 0.0])
    tracked = [np.ones(20, bool), np.ones(20, bool), np.ones(20, bool)]
    tracked[1][:3] = False  # the actor is missing from the first three frames
    tracked[0][:3] = False  # and so is the clutter: frames 0-2 hold only the bystander
    path = write_skeleton_file(tmp_path / "S001C001P001R001A023.skeleton", [clutter, actor, idle], tracked,
                               body_ids=[11, 22, 33])
    raw = read_skeleton_file(path)
    assert raw.body_ids == ["33", "11", "22"]  # in order of first appearance: the bystander is alone at first
    assert raw.joints.shape == (3, 20, 25, 3) and raw.tracked.sum(1).tolist() == [20, 17, 17]
    np.testing.assert_allclose(raw.joints[2][3:], actor[3:], atol=1e-5)  # text round trip
    np.testing.assert_allclose(raw.joints[0], idle, atol=1e-5)
    assert np.all(raw.joints[2][:3] == 0)
    activity = raw.activity()
    assert activity[2] > activity[0] > activity[1]  # actor > bystander > clutter
    x, present = load_skeleton_file(path, NTU25, persons=2)
    assert x.shape == (3, 20, 25, 2) and present.tolist() == [True, True]
    # the actor (most active) comes first, centred on its spine-middle joint in its first tracked frame
    origin = actor[3, 1]
    np.testing.assert_allclose(x[:, 3:, :, 0], (actor[3:] - origin).transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(x[:, 3, 1, 0], 0.0, atol=1e-6)
    assert np.all(x[:, :3, :, 0] == 0)  # untracked frames stay zero, not -origin
    np.testing.assert_allclose(x[:, :, :, 1], (idle - origin).transpose(2, 0, 1), atol=1e-5)
    # with one person slot only the actor is kept, and frames without it are dropped
    one, _ = load_skeleton_file(path, NTU25, persons=1)
    assert one.shape == (3, 17, 25, 1)
    np.testing.assert_allclose(one[..., 0], x[:, 3:, :, 0])


def test_generated_folder_splits_cross_subject_and_labels_by_action(skeletons: Path) -> None:
    dm = SkeletonDataModule(str(skeletons / "skeletons"), frames=16, batch_size=4)
    dm.setup("fit")
    assert dm.classes == ["A023", "A027", "A059", "A080"] and dm.num_classes == 4
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 24 and len(dm.datasets["val"]) > 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["skeleton"].shape == (4, 3, 16, 25, 2) and batch["person_present"].shape == (4, 2)
    assert batch["person_present"][:, 0].all()
    absent = ~batch["person_present"][:, 1]
    assert (batch["skeleton"][absent][..., 1] == 0).all()  # an absent person is exactly zero
    for split in ("xview", "xset", "random"):
        other = SkeletonDataModule(str(skeletons / "skeletons"), frames=16, split=split)
        other.setup("fit")
        assert len(other.datasets["train"]) and len(other.datasets["val"])
        assert len(other.datasets["train"]) + len(other.datasets["val"]) == 24
    first = sorted((skeletons / "skeletons").glob("*.skeleton"))[0].stem
    (skeletons / "exclude.txt").write_text(f"{first}\n")
    fewer = SkeletonDataModule(str(skeletons / "skeletons"), frames=16, exclude=str(skeletons / "exclude.txt"))
    fewer.setup("fit")
    assert len(fewer.datasets["train"]) + len(fewer.datasets["val"]) == 23


def test_ntu_npz_loader_shapes_and_one_hot_labels(tmp_path: Path, skeletons: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 300, 150)).astype(np.float32)
    x[:, 200:] = 0  # NTU60_XSub.npz pads short sequences with zero frames
    x[:, :, 75:] = 0  # and single-person samples with a zero second person
    y = np.eye(60, dtype=np.float32)[[3, 7, 59, 0, 3]]
    np.savez(tmp_path / "NTU60_XSub.npz", x_train=x, y_train=y, x_test=x[:2], y_test=np.array([5, 9]))
    splits = read_array_file(tmp_path / "NTU60_XSub.npz", NTU25)
    assert splits["train"].x.shape == (5, 3, 300, 25, 2) and splits["val"].x.shape == (2, 3, 300, 25, 2)
    assert splits["train"].labels.tolist() == [3, 7, 59, 0, 3] and splits["train"].num_classes == 60
    # (N, T, M*V*C) is frame-major: person, joint, xyz
    np.testing.assert_array_equal(splits["train"].x[2, :, 10, 4, 0], x[2, 10, 12:15])
    dm = SkeletonDataModule(str(tmp_path / "NTU60_XSub.npz"), frames=24, batch_size=5)
    dm.setup("fit")
    assert dm.num_classes == 60
    item = dm.datasets["val"][0]
    assert item["skeleton"].shape == (3, 24, 25, 2) and item["person_present"].tolist() == [True, False]
    # the generated NTU-style and COCO-17 files read with their topologies
    gen = read_array_file(skeletons / "ntu_synthetic.npz", NTU25)
    assert gen["train"].x.shape[1:] == (3, gen["train"].x.shape[2], 25, 2) and gen["train"].num_classes == 4
    coco = read_array_file(skeletons / "coco17_synthetic.npz", Topology.resolve("coco17"), channels=2)
    assert coco["train"].x.shape[1] == 2 and coco["train"].x.shape[3] == 17
    np.save(tmp_path / "data.npy", splits["train"].x)
    np.save(tmp_path / "labels.npy", np.array([1, 2, 3, 4, 5]))
    npy = read_array_file(tmp_path / "data.npy", NTU25, labels=tmp_path / "labels.npy")
    assert npy["all"].x.shape == (5, 3, 300, 25, 2) and npy["all"].num_classes == 6


def test_motion_target_matches_a_hand_computation() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 25, 2)
    batch = {"skeleton": x, "person_present": torch.tensor([[True, True], [True, False]])}
    adapter = SkeletonAdapter(segment=4, target="motion", norm_target=False)
    tokens = adapter.tokenize(batch)
    assert tokens.values.shape == (2, 2 * 2 * 25, 12) and tokens.grid == (2, 2, 25)
    assert torch.equal(tokens.present[1], torch.arange(100) < 50)  # the absent person's tokens
    assert torch.equal(adapter.untokenize(tokens.values, tokens), x)
    target = adapter.target(tokens)
    b, person, seg, joint = 1, 1, 0, 7
    token = person * 2 * 25 + seg * 25 + joint
    by_hand = torch.stack([x[b, :, t + 1, joint, person] - x[b, :, t, joint, person] for t in range(4)])
    torch.testing.assert_close(target[b, token], by_hand.flatten())  # frame-major, xyz per frame
    last = 0 * 2 * 25 + 1 * 25 + joint  # person 0, last segment: no frame after the last one
    expected = torch.stack([x[b, :, t + 1, joint, 0] - x[b, :, t, joint, 0] for t in (4, 5, 6)] + [torch.zeros(3)])
    torch.testing.assert_close(target[b, last], expected.flatten())
    assert torch.equal(tokens.coords[b, token], torch.tensor([0.0, 7.0, 1.0]))  # segment, joint, person
    normed = SkeletonAdapter(segment=4).target(tokens)
    torch.testing.assert_close(normed[b, token], (by_hand.flatten() - by_hand.mean()) / (by_hand.var() + 1e-6).sqrt())
    # saliency = mean |motion| of the token, carried through gather
    torch.testing.assert_close(tokens.saliency[b, token], by_hand.abs().mean())
    picked = tokens.gather(torch.tensor([[token], [token]]))
    assert picked.saliency is not None and picked.saliency.shape == (2, 1)
    positions = SkeletonAdapter(segment=4, target="position", norm_target=False)
    assert torch.equal(positions.target(tokens), tokens.values)
    # integrating the true motion from each token's first frame gives the positions back
    recovered = adapter.values_from_prediction(target, tokens)
    torch.testing.assert_close(recovered, tokens.values)


def test_body_part_masking_keeps_parts_whole() -> None:
    torch.manual_seed(2)
    adapter = SkeletonAdapter(segment=4)
    present = torch.tensor([[True, True], [True, False], [True, True]])
    tokens = adapter.tokenize({"skeleton": torch.randn(3, 3, 32, 25, 2), "person_present": present})
    part = tokens.group
    for masker, unit_of in [
        (GroupMasking(0.75, within=[0, 2], cell_size=[2.0, 1.0]),
         lambda c, g: g * 1000 + (c[..., 0] // 2).long() * 10 + c[..., 2].long()),
        (GroupMasking(0.5, within=[2]), lambda c, g: g * 10 + c[..., 2].long()),
    ]:
        vis = masker(tokens)
        assert not (vis.mask & ~tokens.present).any()
        budget = masker.visible_budget(tokens.present)
        assert (vis.mask.sum(1) <= budget).all() and (vis.mask.sum(1) > 0).all()
        assert (vis.mask.sum(1) >= budget - 6 * 8).all()  # short of the budget by less than one unit
        units = unit_of(tokens.coords, part)
        for b in range(3):
            for u in units[b].unique():
                members = vis.mask[b][units[b] == u]
                assert members.all() or not members.any(), "a body part was split"
        slot_visible = torch.gather(vis.mask, 1, vis.index)
        assert torch.equal(slot_visible, vis.valid)
    with pytest.raises(ValueError, match="one value per axis"):
        GroupMasking(0.5, within=[0, 2], cell_size=[2.0])


def test_motion_aware_masking_hides_moving_tokens_more() -> None:
    torch.manual_seed(3)
    x = torch.zeros(64, 3, 16, 25, 1)
    t = torch.arange(16, dtype=torch.float32)
    x[:, :, :, 9:12] = torch.sin(t)[None, None, :, None, None]  # the right arm moves, nothing else
    tokens = SkeletonAdapter(segment=4, persons=1).tokenize({"skeleton": x})
    moving = tokens.saliency > 0.1
    assert moving.any() and (~moving).any()
    vis = SaliencyMasking(0.9, temperature=0.5)(tokens)
    assert (vis.mask.sum(1) == math.floor((1 - 0.9) * 100)).all()
    shown_moving = vis.mask[moving].float().mean()
    shown_still = vis.mask[~moving].float().mean()
    assert shown_moving < 0.5 * shown_still
    plain = SaliencyMasking(0.9)(replace(tokens, saliency=None))
    assert (plain.mask.sum(1) == math.floor((1 - 0.9) * 100)).all()  # without saliency it is random masking
    rand = RandomMasking(0.9)(tokens)
    assert abs(rand.mask[moving].float().mean() - rand.mask[~moving].float().mean()) < 0.05


def test_augmentations_keep_lengths_and_resize_time() -> None:
    torch.manual_seed(4)
    x = torch.from_numpy(pose_sequence("walk", 40, np.random.default_rng(0)).transpose(2, 0, 1)[..., None].copy())
    resized = crop_resize(x, 16, 0.5, 1.0)
    assert resized.shape == (3, 16, 25, 1)
    torch.testing.assert_close(resized[:, -1], x[:, -1], atol=0.05, rtol=0)  # the crop ends at the last frame
    rotation = random_linear_map(3, 30.0, 0.0)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), atol=1e-5, rtol=0)
    moved = torch.einsum("ij,jtvm->itvm", rotation, x)
    bone = lambda s: (s[:, :, 5] - s[:, :, 4]).norm(dim=0)  # noqa: E731  upper arm length
    torch.testing.assert_close(bone(moved), bone(x), atol=1e-5, rtol=0)
    sheared = random_linear_map(3, 0.0, 0.3)
    assert not torch.allclose(sheared, torch.eye(3)) and torch.equal(sheared.diagonal(), torch.ones(3))
    assert random_linear_map(2, 20.0, 0.0).shape == (2, 2)


def test_topology_from_config_and_its_errors() -> None:
    topo = Topology.resolve({"joints": ["a", "b", "c"], "parents": [None, "a", "b"],
                             "parts": {"top": ["a"], "rest": ["b", "c"]}, "centre": "b"})
    assert topo.edge_index() == [(1, 0), (2, 1)] and topo.part_of_joint() == [0, 1, 1] and topo.centre_index == 1
    adapter = SkeletonAdapter(topology={"joints": ["a", "b", "c"], "parts": {"top": ["a"], "rest": ["b", "c"]}},
                              channels=2, persons=1)
    assert adapter.num_groups == 2 and adapter.token_size == 8
    with pytest.raises(ConfigError, match=r"exactly once \(missing \['c'\]"):
        Topology.resolve({"joints": ["a", "b", "c"], "parts": {"p": ["a", "b"]}})
    with pytest.raises(ConfigError, match="unknown skeleton topology"):
        Topology.resolve("ntu26")
    with pytest.raises(ConfigError, match=r"expected skeletons of shape \(B, C=3, T, V=25, M=2\)"):
        SkeletonAdapter().tokenize({"skeleton": torch.zeros(1, 3, 8, 17, 2)})


def _frame_lines(count: int, joints: int = 25, value: str = "0.1 0.2 3.0") -> list[str]:
    body = ["72057594037931101 0 1 1 1 1 0 0.01 0.02 2", str(joints)]
    return [str(count)] + (body + [f"{value} 1 1 1 1 0 0 0 1 2"] * joints if count else [])


def test_bad_skeleton_inputs_name_the_file(tmp_path: Path, skeletons: Path) -> None:
    good = sorted((skeletons / "skeletons").glob("*.skeleton"))[0]
    lines = good.read_text().splitlines()
    truncated = tmp_path / "truncated.skeleton"
    truncated.write_text("\n".join(lines[:40]) + "\n")
    with pytest.raises(DataError, match=r"truncated\.skeleton: is truncated: the file ends at line 40"):
        read_skeleton_file(truncated)
    joints = tmp_path / "joints.skeleton"
    joints.write_text("\n".join(["2", *_frame_lines(1), *_frame_lines(1, joints=24)]) + "\n")
    with pytest.raises(DataError, match=r"joints\.skeleton: line 32: frame 2 has a body with 24 joints; the topology "
                                        r"has 25"):
        read_skeleton_file(joints)
    empty = tmp_path / "empty.skeleton"
    empty.write_text("\n".join(["3", "0", "0", "0"]) + "\n")
    with pytest.raises(DataError, match=r"empty\.skeleton: has no frame with a tracked body \(zero valid frames\)"):
        load_skeleton_file(empty, NTU25)
    nan = tmp_path / "nan.skeleton"
    nan.write_text("\n".join(["1", *_frame_lines(1, value="0.1 nan 3.0")]) + "\n")
    with pytest.raises(DataError, match=r"nan\.skeleton: line 5: NaN/inf coordinate \(frame 1, body 1, joint 1\)"):
        read_skeleton_file(nan)
    words = tmp_path / "words.skeleton"
    words.write_text("many\n")
    with pytest.raises(DataError, match=r"words\.skeleton: line 1: expected the frame count"):
        read_skeleton_file(words)
    x = np.zeros((2, 10, 150), np.float32)
    x[1, 3, 7] = np.nan
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=np.array([0, 1]))
    with pytest.raises(DataError, match=r"bad\.npz: x_train holds 1 NaN/inf coordinates \(first in sample 1\)"):
        read_array_file(tmp_path / "bad.npz", NTU25)
    np.savez(tmp_path / "wide.npz", x_train=np.zeros((2, 10, 149), np.float32), y_train=np.array([0, 1]))
    with pytest.raises(DataError, match=r"wide\.npz: x_train has 149 values per frame"):
        read_array_file(tmp_path / "wide.npz", NTU25)
    np.savez(tmp_path / "zeros.npz", x_train=np.zeros((2, 10, 150), np.float32), y_train=np.array([0, 1]))
    dm = SkeletonDataModule(str(tmp_path / "zeros.npz"), frames=8, val_fraction=0.0)
    with pytest.raises(DataError, match=r"zeros\.npz\[0\]: has zero valid frames"):
        dm.setup("fit")  # every sequence is checked at setup, not when its batch comes up
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(DataError, match=r"nothing_here: holds no \.skeleton files"):
        SkeletonDataModule(str(tmp_path / "nothing_here")).setup("fit")


def _metric(path: Path, key: str) -> list[float]:
    with open(path) as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def test_pretrain_linear_probe_and_finetune_through_the_cli(skeletons: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    data = ["--data.root", str(skeletons / "skeletons"), "--data.frames", "16", "--data.batch_size", "8",
            "--data.num_workers", "0"]
    assert main(["fit", "-c", str(REPO / "configs" / "skeleton" / "pretrain.yaml"), *data, *TINY_MODEL, *TINY_DECODER,
                 *CPU_TRAINER, "--trainer.max_epochs", "2", "--model.figure_every_n_epochs", "2",
                 "--trainer.logger.init_args.save_dir", str(runs)]) == 0
    version = runs / "skeleton_pretrain" / "version_0"
    losses = _metric(version / "metrics.csv", "train/loss_epoch")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert list((version / "reconstructions").glob("*.png"))
    ckpt = version / "checkpoints" / "last.ckpt"
    for config in ("linear_probe", "finetune"):
        assert main(["fit", "-c", str(REPO / "configs" / "skeleton" / f"{config}.yaml"), *data, *TINY_MODEL,
                     *CPU_TRAINER, "--model.num_classes", "4", "--model.pretrained", str(ckpt),
                     "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(runs)]) == 0
        acc = _metric(runs / f"skeleton_{config}" / "version_0" / "metrics.csv", "val/acc")
        assert acc and 0.0 <= acc[-1] <= 1.0
    # the class count is checked against the data
    assert main(["fit", "-c", str(REPO / "configs" / "skeleton" / "linear_probe.yaml"), *data, *TINY_MODEL,
                 *CPU_TRAINER, "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(runs)]) == 2


def test_coco17_keypoints_pretrain_with_body_part_masking_from_config(skeletons: Path, tmp_path: Path) -> None:
    assert main(["fit", "-c", str(REPO / "configs" / "skeleton" / "pretrain_coco17.yaml"),
                 "--data.root", str(skeletons / "coco17_synthetic.npz"), "--data.frames", "16",
                 "--data.batch_size", "8", "--data.num_workers", "0", *TINY_MODEL, *TINY_DECODER, *CPU_TRAINER,
                 "--trainer.max_epochs", "1", "--model.figure_every_n_epochs", "0",
                 "--trainer.logger.init_args.save_dir", str(tmp_path)]) == 0
    losses = _metric(tmp_path / "skeleton_coco17_pretrain" / "version_0" / "metrics.csv", "train/loss_epoch")
    assert losses and math.isfinite(losses[0])


def test_sample_generator_small_per_class_has_both_splits(tmp_path: Path) -> None:
    """Fewer than four sequences per action still give every action a training and a test sequence."""
    from maekit.domains.skeleton.samples import make_skeleton_dataset

    make_skeleton_dataset(tmp_path / "s", per_class=2, frames=16, seed=3)
    data = np.load(tmp_path / "s" / "ntu_synthetic.npz")
    assert sorted(set(data["y_train"].tolist())) == sorted(set(data["y_test"].tolist())) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="at least 2"):
        make_skeleton_dataset(tmp_path / "t", per_class=1)
