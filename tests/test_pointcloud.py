"""Point clouds: batched FPS / kNN / Chamfer against brute force, the Point-MAE tokenizer, the
readers on every format and layout (and on real PCD files), bad inputs, and the CLI end to end."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from maekit.cli import main
from maekit.datasets.pointcloud import (PointCloudDataModule, PointCloudDataset, PointSource, augment_points,
                                        find_point_samples, open3d_module, read_points)
from maekit.datasets.pointcloud_samples import make_pointcloud_dataset, write_h5_collection
from maekit.domains.point_ops import chamfer_l2, farthest_point_sample, group_points, knn
from maekit.domains.pointcloud import PointCloudAdapter
from maekit.errors import ConfigError, DataError
from maekit.finetune.frozen import few_shot_folds, linear_svm_accuracy
from maekit.pretrain.mae import MaskedAutoencoder
from maekit.pretrain.masking import RandomMasking

from .conftest import CPU_TRAINER, REALDATA, REPO

POINTS_TINY = ["--model.size", "nano", "--model.adapter.init_args.groups", "8",
               "--model.adapter.init_args.group_size", "16", "--data.num_points", "128", "--data.mesh_points",
               "512", "--data.batch_size", "6", "--data.num_workers", "0"]


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 shape classes, 5 training and 2 test samples each: meshes (PLY, OFF) and partial scans."""
    return make_pointcloud_dataset(tmp_path_factory.mktemp("shapes"), classes=("box", "sphere", "cone", "torus"),
                                   per_class=5, test_per_class=2, points=512, seed=0)


# ----------------------------------------------------------------------------- operations
def test_subsampling_modes() -> None:
    """random: any rows; fps: the farthest-point picks in order; fps_random (Point-MAE): a
    varying subset of the first ~1.17x farthest-point picks."""
    from maekit.datasets.pointcloud import choose_points

    torch.manual_seed(0)
    cloud = torch.rand(3000, 4).numpy()
    fps = choose_points(cloud, 256, "fps")
    head = {tuple(r) for r in choose_points(cloud, 300, "fps").tolist()}
    assert np.array_equal(fps, choose_points(cloud, 300, "fps")[:256])  # picks are in order
    draws = [choose_points(cloud, 256, "fps_random") for _ in range(2)]
    for draw in draws:
        rows = {tuple(r) for r in draw.tolist()}
        assert len(rows) == 256 and rows <= head  # from FPS's first round(256 * 1200 / 1024) = 300
    assert not np.array_equal(draws[0], draws[1])
    random = choose_points(cloud, 256, "random")
    assert len({tuple(r) for r in random.tolist()}) == 256 and not {tuple(r) for r in random.tolist()} <= head
    for how in ("random", "fps", "fps_random"):  # never fewer rows than asked for
        with pytest.raises(ValueError, match="cannot choose 3001"):
            choose_points(cloud, 3001, how)  # type: ignore[arg-type]


def test_sample_generator_is_reproducible_and_scans_are_full_size(tmp_path: Path) -> None:
    """A seed always writes the same files, and a partial scan never has fewer points than asked for."""
    from maekit.datasets.pointcloud_samples import partial_scan, shape_mesh

    def contents(root: Path) -> dict[str, bytes]:
        return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}

    first = make_pointcloud_dataset(tmp_path / "a", classes=("cone", "torus"), per_class=2, test_per_class=1,
                                    partial_fraction=0.5, points=128, seed=3)
    again = make_pointcloud_dataset(tmp_path / "b", classes=("cone", "torus"), per_class=2, test_per_class=1,
                                    partial_fraction=0.5, points=128, seed=3)
    assert contents(first) == contents(again)
    rng = np.random.default_rng(0)
    for kind in ("cone", "box", "table", "torus") * 5:
        scan = partial_scan(shape_mesh(kind, rng), rng, 200)
        assert len(scan.points) == 200 and scan.has_normals()
    mesh = next(first.rglob("*.off"))
    for sampling in ("uniform", "poisson"):
        same = [read_points(mesh, 300, sampling, mesh_seed=7).xyz for _ in range(2)]
        assert np.array_equal(*same)
        assert not np.array_equal(same[0], read_points(mesh, 300, sampling, mesh_seed=8).xyz)


def test_fps_returns_distinct_indices_that_cover_the_cloud() -> None:
    torch.manual_seed(0)
    points = torch.rand(4, 500, 3)
    index = farthest_point_sample(points, 32)
    assert all(len(set(row.tolist())) == 32 for row in index)

    def coverage(centres: torch.Tensor) -> torch.Tensor:  # farthest any point is from its nearest centre
        return torch.cdist(points, centres).amin(-1).amax(-1)

    fps = coverage(torch.gather(points, 1, index[..., None].expand(-1, -1, 3)))
    random = coverage(points[:, torch.randperm(500)[:32]])
    assert (fps < random).all()
    assert fps.mean() < 0.75 * random.mean()


def test_numpy_fps_order_makes_the_same_picks_as_the_batched_fps() -> None:
    from maekit.domains.point_ops import farthest_point_order

    torch.manual_seed(3)
    points = torch.randn(3, 700, 3)
    batched = farthest_point_sample(points, 90)
    for cloud, picks in zip(points, batched):
        assert np.array_equal(farthest_point_order(cloud.numpy(), 90), picks.numpy())
    with pytest.raises(ValueError, match="cannot sample 701"):
        farthest_point_order(points[0].numpy(), 701)


def _reference_fps(points: torch.Tensor, count: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """The plain loop FPS used to be: fresh tensors each step, (dx² + dy²) + dz², argmax."""
    batch = points.shape[0]
    chosen, current = [], torch.zeros(batch, dtype=torch.long) if start is None else start.long()
    nearest = torch.full(points.shape[:2], float("inf"))
    if count == 0:
        return torch.zeros(batch, 0, dtype=torch.long)
    for _ in range(count):
        chosen.append(current)
        d = points - points[torch.arange(batch), current][:, None]
        nearest = torch.minimum(nearest, d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2])
        current = nearest.argmax(-1)
    return torch.stack(chosen, 1)


@pytest.mark.parametrize("seed", range(4))
def test_fps_makes_the_reference_picks_and_open3d_s(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    batch, num = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(2, 700, (1,), generator=g))
    count = int(torch.randint(1, min(num, 80) + 1, (1,), generator=g))
    points = torch.randn(batch, num, 3, generator=g) * float(torch.rand(1, generator=g) * 10 + 0.1)
    if seed % 2:  # a coarse lattice: many equally far points, decided by index
        points = (points * 2).round() / 2
    picks = farthest_point_sample(points.requires_grad_(), count)
    assert torch.equal(picks, _reference_fps(points.detach(), count))
    if seed % 2 == 0:  # open3d (C++, double) starts at point 0 too and returns its picks in index order
        o3d = open3d_module()
        theirs = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[0].detach().double().numpy()))
        kept = np.asarray(theirs.farthest_point_down_sample(count).points)
        assert np.allclose(kept, points[0, picks[0].sort().values].detach().double().numpy(), atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_both_fps_paths_make_the_reference_picks_from_any_start(seed: int) -> None:
    """The NumPy-assisted CPU loop and the torch loop (other devices, `torch.compile`) pick the
    reference's points in its order, from random starts, on random and on tie-ridden clouds."""
    from maekit.domains.pointcloud.ops import _farthest_point_sample_cpu, _farthest_point_sample_torch

    g = torch.Generator().manual_seed(100 + seed)
    batch, num = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 1200, (1,), generator=g))
    count = num if seed == 4 else int(torch.randint(0, min(num, 100) + 1, (1,), generator=g))
    points = torch.randn(batch, num, 3, generator=g) * float(torch.rand(1, generator=g) * 10 + 0.01)
    if seed % 2:  # a coarse lattice: many equally far points, decided by index
        points = (points * float(torch.rand(1, generator=g) * 3 + 0.2)).round()
    start = torch.randint(0, num, (batch,), generator=g) if seed % 3 else None
    expected = _reference_fps(points, count, start)
    for path in (_farthest_point_sample_cpu, _farthest_point_sample_torch):
        assert torch.equal(path(points, count, start), expected), path.__name__
    assert torch.equal(farthest_point_sample(points.double(), count, start), expected)
    if seed == 4:  # all of distinct points: every point once
        assert torch.equal(expected.sort(1).values, torch.arange(num).expand(batch, -1))


def test_fps_sums_squares_in_the_reference_order() -> None:
    """(dx² + dy²) + dz² in fp32, the order open3d's picks were checked with: two points whose
    squared distances from the start differ by one rounding, and swap order if summed otherwise."""
    from maekit.domains.pointcloud.ops import _farthest_point_sample_cpu, _farthest_point_sample_torch

    far = np.array([0.0236432496458292, 0.9009273648262024, -0.7116807699203491], np.float32)
    near = far[[1, 2, 0]]  # the same squares, summed in another order
    squares = lambda p: [np.float32(v) * np.float32(v) for v in p]  # noqa: E731
    (a, b, c), (d, e, f) = squares(far), squares(near)
    assert (a + b) + c > (d + e) + f and a + (b + c) < d + (e + f)  # the premise: the order decides
    for first in (0, 1):  # the farther point first or second in the cloud
        cloud = [np.zeros(3, np.float32), far, near] if first == 0 else [np.zeros(3, np.float32), near, far]
        points = torch.from_numpy(np.stack(cloud))[None]
        for path in (_farthest_point_sample_cpu, _farthest_point_sample_torch):
            assert path(points, 2, None).tolist() == [[0, 1 + first]], path.__name__


def test_fps_takes_the_torch_loop_off_cpu_and_when_compiled() -> None:
    """Meta tensors (no data, so no NumPy) and `torch.compile` tracing go through the torch loop."""
    g = torch.Generator().manual_seed(7)
    points = torch.randn(3, 200, 3, generator=g)
    on_meta = farthest_point_sample(points.to("meta"), 9)
    assert on_meta.shape == (3, 9) and on_meta.device.type == "meta"
    compiled = torch.compile(lambda p: farthest_point_sample(p, 9), backend="eager", fullgraph=True)
    assert torch.equal(compiled(points), _reference_fps(points, 9))


def test_fps_rejects_bad_shapes_counts_and_starts() -> None:
    points = torch.rand(2, 10, 3)
    with pytest.raises(ValueError, match=r"shape \(B, N, 3\), got \(2, 10\)"):
        farthest_point_sample(points[..., 0], 3)
    with pytest.raises(ValueError, match="cannot sample 11 points from clouds of 10"):
        farthest_point_sample(points, 11)
    with pytest.raises(ValueError, match="cannot sample -1"):
        farthest_point_sample(points, -1)
    with pytest.raises(ValueError, match=r"one index per cloud, shape \(2,\), got \(3,\)"):
        farthest_point_sample(points, 3, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"start indices must lie in \[0, 10\), got \[0, 10\]"):
        farthest_point_sample(points, 3, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="start indices must lie"):
        farthest_point_sample(points, 3, torch.tensor([-1, 0]))


@pytest.mark.parametrize("seed", range(6))
def test_blockwise_knn_equals_the_whole_matrix_and_breaks_ties_by_index(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    batch, num, queries = (int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 300, (1,), generator=g)),
                           int(torch.randint(1, 40, (1,), generator=g)))
    k, block = int(torch.randint(1, num + 1, (1,), generator=g)), int(torch.randint(1, num + 1, (1,), generator=g))
    points, query = torch.randn(batch, num, 3, generator=g), torch.randn(batch, queries, 3, generator=g)
    if seed % 2:  # half-integer lattice: exact distances, many ties
        points, query = (points * 2).round() / 2, (query * 2).round() / 2
    whole = knn(query, points, k, block=num)
    assert torch.equal(knn(query, points, k, block=block), whole)
    assert torch.equal(knn(query, points, k), whole)
    distance = ((query[:, :, None] - points[:, None]) ** 2).sum(-1)
    assert torch.equal(whole, torch.sort(distance, dim=-1, stable=True).indices[..., :k])  # nearest, then index
    with pytest.raises(ValueError, match="block"):
        knn(query, points, k, block=0)


def test_knn_matches_brute_force() -> None:
    torch.manual_seed(1)
    points, queries = torch.randn(2, 200, 3), torch.randn(2, 7, 3)
    found = knn(queries, points, 5)
    for b, q in itertools.product(range(2), range(7)):
        distances = ((points[b] - queries[b, q]) ** 2).sum(-1).numpy()
        assert found[b, q].tolist() == np.argsort(distances)[:5].tolist()


def test_chamfer_matches_brute_force_and_is_zero_for_identical_sets() -> None:
    torch.manual_seed(2)
    a, b = torch.randn(3, 5, 16, 3), torch.randn(3, 5, 12, 3)
    got = chamfer_l2(a, b)
    assert got.shape == (3, 5)
    for i, j in itertools.product(range(3), range(5)):
        x, y = a[i, j].numpy().astype(np.float64), b[i, j].numpy().astype(np.float64)
        d = ((x[:, None] - y[None]) ** 2).sum(-1)
        assert got[i, j].item() == pytest.approx(d.min(1).mean() + d.min(0).mean(), rel=1e-5)
    assert torch.count_nonzero(chamfer_l2(a, a[..., torch.randperm(16), :])) == 0  # order-free


def test_groups_are_offsets_from_their_centres() -> None:
    torch.manual_seed(3)
    points = torch.randn(2, 300, 6)  # xyz + 3 extra channels
    hoods, centres = group_points(points, 10, 8)
    assert hoods.shape == (2, 10, 8, 6) and centres.shape == (2, 10, 3)
    assert torch.allclose(hoods[:, :, 0, :3], torch.zeros(2, 10, 3), atol=1e-6)  # nearest = the centre
    absolute = hoods[..., :3] + centres[:, :, None]
    for b in range(2):  # every grouped point (with its extras) is a point of the cloud
        match = torch.cdist(absolute[b].reshape(-1, 3), points[b, :, :3]).argmin(-1)
        assert torch.allclose(points[b, match, 3:], hoods[b, ..., 3:].reshape(-1, 3))


# ------------------------------------------------------------------------------ tokenizer
def test_tokenizer_shapes_masking_and_loss() -> None:
    torch.manual_seed(4)
    adapter = PointCloudAdapter(groups=16, group_size=8)
    mae = MaskedAutoencoder(adapter, "nano", 32, 1, 2, RandomMasking(0.6))
    batch = {"points": torch.randn(3, 200, 3) * 0.4}
    out = mae(batch)
    assert out.tokens.values.shape == (3, 16, 24) and out.pred.shape == (3, 16, 24)
    assert out.visible.index.shape == (3, 16 - round(16 * 0.6))
    assert (out.visible.mask.sum(1) == 16 - round(16 * 0.6)).all()  # mask: True where visible
    # untokenize puts every point back where it was
    xyz = adapter.untokenize(out.tokens.values, out.tokens)
    assert ((xyz[:, :, None] - batch["points"][:, None]) ** 2).sum(-1).amin(-1).max() < 1e-10
    # the loss is the Chamfer distance of the masked groups only
    target = adapter.target(out.tokens)
    per_group = chamfer_l2(out.pred.reshape(3, 16, 8, 3), target.reshape(3, 16, 8, 3))
    assert torch.allclose(out.loss, per_group[~out.visible.mask].mean(), rtol=1e-5)
    out.loss.backward()
    assert adapter.point_embed.first_conv[0].weight.grad is not None


def test_position_every_block_differs_from_position_once() -> None:
    torch.manual_seed(5)
    every, once = PointCloudAdapter(8, 8), PointCloudAdapter(8, 8, position_every_block=False)
    for a in (every, once):
        a.build(32)
    once.load_state_dict(every.state_dict())
    tokens = every.tokenize({"points": torch.randn(2, 64, 3)})
    content, pos = every.embed_parts(tokens)
    joined, none = once.embed_parts(tokens)
    assert none is None and torch.allclose(joined, content + pos)
    from maekit.backbones import TransformerStack

    stack = TransformerStack(32, 2, 2).eval()
    manual = content
    for block in stack.blocks:
        manual = block(manual + pos)
    assert torch.allclose(stack(content, pos=pos), stack.norm(manual), atol=1e-5)
    assert not torch.allclose(stack(content, pos=pos), stack(joined), atol=1e-3)


def test_too_few_points_for_the_groups_names_the_minimum() -> None:
    adapter = PointCloudAdapter(groups=64, group_size=32)
    adapter.build(16)
    with pytest.raises(ConfigError, match="at least 64 points"):
        adapter.tokenize({"points": torch.randn(1, 40, 3)})


# -------------------------------------------------------------------------------- readers
def test_reads_every_format(tmp_path: Path, shapes: Path) -> None:
    o3d = open3d_module()
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(300, 3)).astype(np.float32)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    cloud.colors = o3d.utility.Vector3dVector(rng.uniform(size=(300, 3)))
    for suffix in (".pcd", ".ply", ".xyz", ".xyzrgb"):
        o3d.io.write_point_cloud(str(tmp_path / f"c{suffix}"), cloud)
        got = read_points(tmp_path / f"c{suffix}")
        assert np.allclose(got.xyz, xyz, atol=1e-4), suffix
    assert set(read_points(tmp_path / "c.pcd").channels) == {"r", "g", "b"}
    kitti = np.concatenate([xyz, rng.uniform(size=(300, 1)).astype(np.float32)], 1)
    kitti.tofile(tmp_path / "scan.bin")
    got = read_points(tmp_path / "scan.bin")
    assert np.array_equal(got.xyz, xyz) and np.array_equal(got.channels["intensity"], kitti[:, 3])
    np.save(tmp_path / "shape.npy", xyz)
    assert np.array_equal(read_points(tmp_path / "shape.npy").xyz, xyz)
    rows = np.concatenate([xyz, xyz / np.linalg.norm(xyz, axis=1, keepdims=True)], 1)
    (tmp_path / "airplane_0001.txt").write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in rows))
    got = read_points(tmp_path / "airplane_0001.txt")
    assert np.allclose(got.xyz, xyz, atol=1e-5) and {"nx", "ny", "nz"} <= set(got.channels)
    import laspy

    las = laspy.create(point_format=3, file_version="1.2")
    las.header.scales = [0.001] * 3
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    las.intensity = np.arange(300, dtype=np.uint16)
    las.write(str(tmp_path / "tile.las"))
    got = read_points(tmp_path / "tile.las")
    assert np.allclose(got.xyz, xyz, atol=1e-3) and "intensity" in got.channels
    meshes = sorted(shapes.glob("train/*/*.off")) + sorted(shapes.glob("train/*/*0001.ply"))
    assert meshes
    for mesh in meshes[:2]:  # meshes are sampled to the asked number of points
        assert len(read_points(mesh, mesh_points=777)) == 777


def test_public_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    h5 = tmp_path / "modelnet40_ply_hdf5_2048"
    write_h5_collection(h5 / "ply_data_train0.h5", rng.normal(size=(6, 300, 3)), np.array([0, 1, 2, 0, 1, 2]))
    write_h5_collection(h5 / "ply_data_test0.h5", rng.normal(size=(3, 300, 3)), np.array([2, 1, 0]))
    (h5 / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    sources, labels, classes = find_point_samples(h5, "auto", "train")
    assert len(sources) == 6 and labels == [0, 1, 2, 0, 1, 2] and classes == ["airplane", "bathtub", "bed"]
    sonn = tmp_path / "h5_files"
    for folder in ("main_split", "main_split_nobg"):
        for name in ("training_objectdataset_augmentedrot_scale75.h5", "training_objectdataset.h5",
                     "test_objectdataset_augmentedrot_scale75.h5", "test_objectdataset.h5"):
            n = 4 if "augmentedrot" in name else 2
            write_h5_collection(sonn / folder / name, rng.normal(size=(n, 300, 3)), np.arange(n) % 15)
    assert len(find_point_samples(sonn, "auto", "train", "hardest")[0]) == 4
    only, _, names = find_point_samples(sonn, "scanobjectnn", "test", "obj_only")
    assert len(only) == 2 and only[0].path.parent.name == "main_split_nobg" and names[0] == "bag"
    shapenet = tmp_path / "ShapeNet55"
    (shapenet / "shapenet_pc").mkdir(parents=True)
    for name in ("02691156-a.npy", "02691156-b.npy", "03001627-c.npy"):
        np.save(shapenet / "shapenet_pc" / name, rng.normal(size=(400, 3)).astype(np.float32))
    (shapenet / "train.txt").write_text("02691156-a.npy\n03001627-c.npy\n")
    (shapenet / "test.txt").write_text("02691156-b.npy\n")
    dm = PointCloudDataModule(str(shapenet), num_points=256, batch_size=2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (2, 256, 3)
    assert torch.linalg.vector_norm(batch["points"], dim=-1).max() < 1.6  # unit sphere, then scale/shift
    val = dm.datasets["val"][0]["points"]
    assert torch.linalg.vector_norm(val, dim=-1).max() == pytest.approx(1.0, abs=1e-5)


def test_modelnet_text_layout_and_class_folders(tmp_path: Path) -> None:
    root = make_pointcloud_dataset(tmp_path / "mn", "modelnet40", classes=("box", "torus"), per_class=2,
                                   test_per_class=1, points=300, seed=2)
    dm = PointCloudDataModule(str(root), task="classification", num_points=128, channels=["nx", "ny", "nz"],
                              batch_size=4, resample_small=True)
    dm.setup()
    assert dm.classes == ["box", "torus"] and len(dm.datasets["train"]) == 4 and len(dm.datasets["val"]) == 2
    batch = next(iter(dm.val_dataloader()))
    assert batch["points"].shape == (2, 128, 6)
    assert torch.allclose(torch.linalg.vector_norm(batch["points"][..., 3:], dim=-1), torch.ones(2, 128), atol=1e-3)


def test_augmentations_turn_about_the_up_axis_with_the_normals() -> None:
    torch.manual_seed(6)
    xyz = torch.randn(100, 3)
    normals = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    out = augment_points(torch.cat([xyz, normals], 1), ["rotate"], up=1, normals=3)
    assert torch.allclose(out[:, 1], xyz[:, 1]) and torch.allclose(out[:, :3].norm(dim=1), xyz.norm(dim=1), atol=1e-5)
    assert torch.allclose((out[:, :3] * out[:, 3:]).sum(1), (xyz * normals).sum(1), atol=1e-5)  # angles kept
    assert not torch.allclose(out[:, 3:], normals)


def test_real_pcd_files() -> None:
    folder = REALDATA / "pointcloud"
    if not (folder / "bunny.pcd").is_file():
        pytest.skip("real sample data (../shared/realdata) not present")
    bunny = read_points(folder / "bunny.pcd")
    assert len(bunny) == 397 and np.isfinite(bunny.xyz).all()
    assert {"nx", "ny", "nz"} <= set(read_points(folder / "bun0.pcd").channels)
    milk = read_points(folder / "milk_color.pcd")  # binary_compressed, with colours
    assert len(milk) > 10000 and {"r", "g", "b"} <= set(milk.channels)
    assert 0.0 <= milk.channels["r"].min() and milk.channels["r"].max() <= 1.0
    lamp = read_points(folder / "lamppost.pcd")
    assert len(lamp) > 1000
    data = PointCloudDataset([PointSource(folder / "milk_color.pcd")], num_points=1024, channels=["r", "g", "b"],
                             subsample="fps")[0]
    assert data["points"].shape == (1024, 6)
    with pytest.raises(DataError, match="bunny.pcd: has 397 points, fewer than the 1024"):
        PointCloudDataset([PointSource(folder / "bunny.pcd")], num_points=1024)[0]


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\n"
                                        "property float y\nproperty float z\nend_header\n")
    with pytest.raises(DataError, match="empty.ply: is an empty point cloud"):
        read_points(tmp_path / "empty.ply")
    bad = np.zeros((50, 3), np.float32)
    bad[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match=r"nan.npy: has 1 points with NaN or infinite coordinates \(first at row 7\)"):
        read_points(tmp_path / "nan.npy")
    (tmp_path / "garbage.pcd").write_bytes(b"\x00\x01not a pcd at all")
    with pytest.raises(DataError, match="garbage.pcd: "):
        read_points(tmp_path / "garbage.pcd")
    (tmp_path / "cloud.foo").write_text("1 2 3\n")
    with pytest.raises(DataError, match=r"cloud.foo: unknown point-cloud extension '.foo'"):
        read_points(tmp_path / "cloud.foo")
    np.zeros(10, np.float32).tofile(tmp_path / "cut.bin")
    with pytest.raises(DataError, match="cut.bin: holds 10 float32 values, not a whole number of 4-value points"):
        read_points(tmp_path / "cut.bin")
    with pytest.raises(DataError, match="missing.ply: no such file"):
        read_points(tmp_path / "missing.ply")
    np.save(tmp_path / "small.npy", np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32))
    ds = PointCloudDataset([PointSource(tmp_path / "small.npy")], num_points=128, resample_small=True, min_points=64)
    with pytest.raises(DataError, match="small.npy: has 40 points, fewer than the 64 needed"):
        ds[0]
    with pytest.raises(DataError, match="no r, g, b channel"):
        PointCloudDataset([PointSource(tmp_path / "small.npy")], num_points=16, channels=["r", "g", "b"])[0]


# ------------------------------------------------------------------------------ evaluation
def test_svm_chooses_c_by_cross_validation_and_few_shot_folds_repeat() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    y = np.repeat(np.arange(4), 30)
    x = centres[y] + rng.normal(size=(120, 16))
    accuracy, c = linear_svm_accuracy(x[::2], y[::2], x[1::2], y[1::2], [1e-4, 1e-2, 1.0])
    assert accuracy > 0.95 and c in (1e-4, 1e-2, 1.0)
    noise = rng.normal(size=(120, 16))
    assert linear_svm_accuracy(noise[::2], y[::2], noise[1::2], y[1::2])[0] < 0.6
    folds = few_shot_folds(y, n_way=3, k_shot=5, query=10, folds=4, seed=7)
    assert [f[0].tolist() for f in folds] == [f[0].tolist() for f in few_shot_folds(y, 3, 5, 10, 4, seed=7)]
    for support, query in folds:
        assert len(support) == 15 and len(query) == 30 and not set(support) & set(query)
        assert len(set(y[support])) == 3 and set(y[support]) == set(y[query])
    with pytest.raises(ValueError, match="needs 5 classes with at least 35 examples"):
        few_shot_folds(y, n_way=5, k_shot=5, query=30, folds=1)


def test_rank_shares_are_unpadded_to_each_sample_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import maekit.datasets.resumable as resumable
    from maekit.datasets.resumable import ResumableLoader
    from maekit.finetune.frozen import unpad_rank_shares

    data = list(range(11))
    shares = []
    for rank in range(4):  # what each of 4 ranks would collect, in its own order
        monkeypatch.setattr(resumable, "_rank_and_world", lambda rank=rank: (rank, 4))
        shares.append(torch.cat(list(ResumableLoader(data, batch_size=2, seed=3))))
    gathered = torch.stack(shares)  # (world, n): what all_gather returns
    assert gathered.numel() == 12  # one padded sample
    assert sorted(unpad_rank_shares(gathered, 11).tolist()) == data


def _metrics(run: Path) -> list[dict[str, str]]:
    files = sorted(run.rglob("metrics.csv"))
    assert files, f"no metrics under {run}"
    with open(files[-1]) as f:
        return list(csv.DictReader(f))


def test_voting_redraws_points_per_view_and_evaluation_cuts_to_the_fps_sample() -> None:
    from maekit.finetune.pointcloud import PointCloudClassificationTask

    torch.manual_seed(0)
    task = PointCloudClassificationTask(PointCloudAdapter(groups=8, group_size=16), num_classes=3, size="nano",
                                        votes=4, vote_points=64).eval()
    points = torch.rand(2, 96, 3) * 2 - 1
    fps_sample = torch.gather(points, 1, farthest_point_sample(points, 64)[..., None].expand(-1, -1, 3))
    with torch.no_grad():
        assert torch.allclose(task({"points": points}), task({"points": fps_sample}), rtol=1e-4, atol=1e-9)
        voted = task.voted_logits({"points": points})
        assert torch.equal(voted, task.voted_logits({"points": points}))  # a fixed seed: repeatable
        task.hparams.vote_points = None  # the same views of all 96 points, no redraw
        unchanged = task.voted_logits({"points": points})
        assert (voted - unchanged).abs().max() > 0.01 * voted.abs().max()  # (logits of a fresh head are small)


@pytest.mark.slow
def test_cli_pretrain_classify_vote_svm_fewshot(shapes: Path, tmp_path: Path) -> None:
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert main(["fit", "-c", str(REPO / "configs/pointcloud/pretrain.yaml"), "--data.root", str(shapes),
                 *POINTS_TINY, "--model.decoder_width", "32", "--model.decoder_depth", "1", "--model.decoder_heads",
                 "2", "--trainer.max_epochs", "2", "--model.figure_every_n_epochs", "2", *CPU_TRAINER, *logs]) in (0, None)
    pretrained = next((tmp_path / "pointcloud_pretrain").rglob("last.ckpt"))
    assert list((tmp_path / "pointcloud_pretrain").rglob("reconstructions/epoch_0001.png"))
    losses = [float(r["train/loss_epoch"]) for r in _metrics(tmp_path / "pointcloud_pretrain") if r.get("train/loss_epoch")]
    assert len(losses) == 2 and all(np.isfinite(losses))

    assert main(["fit", "-c", str(REPO / "configs/pointcloud/classify.yaml"), "--data.root", str(shapes),
                 "--model.num_classes", "4", "--model.pretrained", str(pretrained), *POINTS_TINY,
                 "--trainer.max_epochs", "1", *CPU_TRAINER, *logs]) in (0, None)
    rows = _metrics(tmp_path / "pointcloud_classify")
    assert any(r.get("val/acc") for r in rows)
    tuned = next((tmp_path / "pointcloud_classify").rglob("last.ckpt"))
    assert main(["test", "-c", str(REPO / "configs/pointcloud/classify.yaml"), "--data.root", str(shapes),
                 "--model.num_classes", "4", "--model.votes", "3", "--ckpt_path", str(tuned), *POINTS_TINY,
                 "--data.eval_points", "150", "--model.vote_points", "128",  # each vote redraws 128 of 150
                 *CPU_TRAINER, *logs]) in (0, None)

    assert main(["fit", "-c", str(REPO / "configs/pointcloud/svm.yaml"), "--data.root", str(shapes),
                 "--model.pretrained", str(pretrained), *POINTS_TINY, *CPU_TRAINER, *logs]) in (0, None)
    svm = [r for r in _metrics(tmp_path / "pointcloud_svm") if r.get("val/svm_acc")]
    assert svm and 0.0 <= float(svm[0]["val/svm_acc"]) <= 1.0 and float(svm[0]["val/svm_c"]) > 0

    assert main(["fit", "-c", str(REPO / "configs/pointcloud/fewshot.yaml"), "--data.root", str(shapes),
                 "--model.pretrained", str(pretrained), "--model.n_way", "3", "--model.k_shot", "2",
                 "--model.query", "2", "--model.folds", "3", *POINTS_TINY, *CPU_TRAINER, *logs]) in (0, None)
    few = [r for r in _metrics(tmp_path / "pointcloud_fewshot") if r.get("val/fewshot_acc")]
    assert few and 0.0 <= float(few[0]["val/fewshot_acc"]) <= 1.0 and few[0].get("val/fewshot_std")


def test_cli_refuses_mismatched_channels(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["fit", "-c", str(REPO / "configs/pointcloud/pretrain.yaml"), "--data.root", str(shapes),
                 *POINTS_TINY, "--data.channels", "[r, g, b]", "--trainer.max_epochs", "1", *CPU_TRAINER,
                 "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert code == 2
    assert "point channels ['r', 'g', 'b'] but the model takes []" in capsys.readouterr().err


# ------------------------------------------------------------------------------- Point-MAE
def _point_mae_state(width: int = 64, depth: int = 2, group_size: int = 16, finetuned: bool = False
                     ) -> dict[str, torch.Tensor]:
    """Random tensors under Point-MAE's published key names and shapes (models/Point_MAE.py)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    enc = "" if finetuned else "MAE_encoder."
    sd = {}
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
               p + "mlp.fc1.bias": r(4 * width), p + "mlp.fc2.weight": r(width, 4 * width), p + "mlp.fc2.bias": r(width)}
    sd |= {f"{enc}norm.weight": 1 + r(width), f"{enc}norm.bias": r(width)}
    if finetuned:
        sd |= {"cls_token": r(1, 1, width), "cls_pos": r(1, 1, width), "cls_head_finetune.0.weight": r(256, 2 * width)}
    else:
        sd |= {"mask_token": r(1, 1, width), "decoder_pos_embed.0.weight": r(128, 3),
               "MAE_decoder.blocks.0.norm1.weight": r(width), "increase_dim.0.weight": r(3 * group_size, width, 1)}
    return sd


def _point_mae_reference(sd: dict[str, torch.Tensor], hoods: torch.Tensor, centres: torch.Tensor, heads: int,
                         prefix: str = "MAE_encoder.") -> torch.Tensor:
    """Point-MAE's encoder forward (eval), written from the published model with functional ops."""
    F = torch.nn.functional
    b, g, k, _ = hoods.shape

    def shared_mlp(x: torch.Tensor, p: str) -> torch.Tensor:
        x = F.conv1d(x, sd[p + "0.weight"], sd[p + "0.bias"])
        x = F.batch_norm(x, sd[p + "1.running_mean"], sd[p + "1.running_var"], sd[p + "1.weight"], sd[p + "1.bias"],
                         False, 0.0, 1e-5)
        return F.conv1d(F.relu(x), sd[p + "3.weight"], sd[p + "3.bias"])

    f = shared_mlp(hoods.reshape(b * g, k, 3).transpose(1, 2), prefix + "encoder.first_conv.")
    f = torch.cat([f.amax(2, keepdim=True).expand(-1, -1, k), f], 1)
    x = shared_mlp(f, prefix + "encoder.second_conv.").amax(2).reshape(b, g, -1)
    pos = F.linear(F.gelu(F.linear(centres, sd[prefix + "pos_embed.0.weight"], sd[prefix + "pos_embed.0.bias"])),
                   sd[prefix + "pos_embed.2.weight"], sd[prefix + "pos_embed.2.bias"])
    width = x.shape[-1]
    i = 0
    while f"{prefix}blocks.blocks.{i}.norm1.weight" in sd:
        p = f"{prefix}blocks.blocks.{i}."
        x = x + pos
        h = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        q, kk, v = F.linear(h, sd[p + "attn.qkv.weight"]).reshape(b, g, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q @ kk.transpose(-2, -1)) * (width // heads) ** -0.5).softmax(-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, g, width), sd[p + "attn.proj.weight"],
                         sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                         sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        i += 1
    return F.layer_norm(x, (width,), sd[prefix + "norm.weight"], sd[prefix + "norm.bias"], 1e-5)


def test_point_mae_checkpoint_gives_the_published_encoder_features(tmp_path: Path) -> None:
    from maekit.weights.converters import convert_point_mae, detect_format
    from maekit.weights.hub import from_pretrained

    sd = _point_mae_state()
    torch.save({"base_model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 300}, tmp_path / "pretrain.pth")
    assert detect_format(torch.load(tmp_path / "pretrain.pth", weights_only=True)) == "point-mae"
    config, converted, report = convert_point_mae(sd, groups=8)
    assert config["adapter"]["init_args"]["group_size"] == 16 and config["norm_eps"] == 1e-5
    assert not report["unmatched"] and "increase_dim.0.weight" in report["dropped"]
    assert torch.equal(converted["adapter.point_embed.second_conv.0.weight"], sd["MAE_encoder.encoder.second_conv.0.weight"])
    with pytest.warns(UserWarning):
        encoder = from_pretrained(tmp_path / "pretrain.pth").eval()
    encoder.adapter.groups = 8  # the group count is not in the weights
    points = torch.rand(2, 200, 3) * 2 - 1
    with torch.no_grad():
        ours, tokens = encoder({"points": points})
        hoods, centres = group_points(points, 8, 16)
        reference = _point_mae_reference(sd, hoods, centres, heads=2)
    assert (ours - reference).abs().max() < 1e-5


def test_point_mae_finetuned_checkpoint_loads_into_the_classifier(tmp_path: Path) -> None:
    from maekit.finetune.pointcloud import PointCloudClassificationTask

    sd = _point_mae_state(finetuned=True)
    torch.save({"base_model": sd}, tmp_path / "modelnet.pth")
    with pytest.warns(UserWarning):
        task = PointCloudClassificationTask(PointCloudAdapter(8, 16), num_classes=4, size="nano",
                                            pretrained=str(tmp_path / "modelnet.pth"))
    assert torch.equal(task.encoder.cls_pos, sd["cls_pos"])
    assert task.encoder.norm.eps == 1e-5 and torch.count_nonzero(task.encoder.blocks[0].attn.qkv.bias) == 0
    task.eval()
    with torch.no_grad():
        points = torch.rand(2, 200, 3) * 2 - 1
        _, x = task.encode({"points": points}, return_prefix=True)
        hoods, centres = group_points(points, 8, 16)
        cls = sd["cls_token"].expand(2, -1, -1)
        # the reference with the class token prepended: content and position both get a slot
        F = torch.nn.functional
        pos = torch.cat([sd["cls_pos"].expand(2, -1, -1), F.linear(F.gelu(F.linear(centres, sd["pos_embed.0.weight"],
                         sd["pos_embed.0.bias"])), sd["pos_embed.2.weight"], sd["pos_embed.2.bias"])], 1)
        assert pos.shape == (2, 9, 64) and cls.shape == (2, 1, 64) and x.shape == (2, 9, 64)
