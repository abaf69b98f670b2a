"""Pretrained weights: verified downloads from a real local HTTP server, export, from_pretrained."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch

from maekit.cli import main
from maekit.datasets import ChipDataModule
from maekit.domains import MultispectralAdapter
from maekit.finetune import ClassificationTask
from maekit.pretrain import MAEPretrainModule
from maekit.weights import PretrainedEncoder, WeightsError, download, export, from_pretrained


class Server:
    """A threaded HTTP server over a folder; `drop_first` requests of a path are cut half-way."""

    def __init__(self, root: Path) -> None:
        self.root, self.drop_first, self.requests = root, 0, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests += 1
                path = outer.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if outer.drop_first > 0:
                    outer.drop_first -= 1
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "srv").mkdir()
    s = Server(tmp_path / "srv")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def maekit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MAEKIT_OFFLINE", raising=False)
    return tmp_path / "home"


def cache_files(home: Path) -> list[Path]:
    return [p for p in (home / "weights").rglob("*") if p.is_file()] if (home / "weights").exists() else []


def publish(server: Server, name: str, data: bytes) -> tuple[str, str]:
    (server.root / name).write_bytes(data)
    return f"{server.url}/{name}", hashlib.sha256(data).hexdigest()


def test_good_hash_is_cached_and_reused(server: Server, maekit_home: Path) -> None:
    url, sha = publish(server, "w.bin", b"weights" * 1000)
    path = download(url, sha, progress=False)
    assert path.read_bytes() == b"weights" * 1000 and cache_files(maekit_home) == [path]
    before = server.requests
    assert download(url, sha, progress=False) == path and server.requests == before  # from the cache


def test_bad_hash_names_both_hashes_and_caches_nothing(server: Server, maekit_home: Path) -> None:
    url, sha = publish(server, "w.bin", b"abc")
    wrong = "0" * 64
    with pytest.raises(WeightsError, match=f"expected {wrong}, got {sha}"):
        download(url, wrong, progress=False)
    assert cache_files(maekit_home) == []


def test_dropped_connection_leaves_nothing_and_retry_succeeds(server: Server, maekit_home: Path) -> None:
    url, sha = publish(server, "big.bin", bytes(range(256)) * 4000)
    server.drop_first = 1
    path = download(url, sha, progress=False, backoff=0.01)
    assert path.read_bytes() == bytes(range(256)) * 4000 and server.requests == 2
    server.drop_first = 5
    (path).unlink()
    with pytest.raises(WeightsError, match="download failed after 2 attempt"):
        download(url, sha, progress=False, retries=2, backoff=0.01)
    assert cache_files(maekit_home) == []


def test_offline_uses_only_the_cache(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, sha = publish(server, "w.bin", b"x" * 10)
    path = download(url, sha, progress=False)
    monkeypatch.setenv("MAEKIT_OFFLINE", "1")
    assert download(url, sha, progress=False) == path
    other, other_sha = publish(server, "other.bin", b"y")
    with pytest.raises(WeightsError, match="not in the cache .* MAEKIT_OFFLINE"):
        download(other, other_sha, progress=False)


def test_unpinned_downloads_need_trust(server: Server) -> None:
    url, _ = publish(server, "w.bin", b"z")
    with pytest.raises(WeightsError, match="no sha256 is pinned"):
        download(url, None, progress=False)
    assert download(url, None, trust_unverified=True, progress=False).read_bytes() == b"z"


@pytest.fixture(scope="module")
def pretrained_run(naip_chips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    L.seed_everything(0)
    model = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8), size="nano", decoder_width=32,
                              decoder_depth=1, decoder_heads=2, figure_every_n_epochs=0)
    root = tmp_path_factory.mktemp("w")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    trainer.fit(model, ChipDataModule(str(naip_chips), batch_size=8))
    path = root / "pre.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_export_then_from_pretrained_gives_identical_outputs(pretrained_run: Path, tmp_path: Path) -> None:
    out = export(pretrained_run, tmp_path / "naip-nano", training_data="generated NAIP-like chips", licence="MIT")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["bands"] == ["R", "G", "B", "NIR"] and config["size"] == "nano" and config["patch_size"] == 8
    assert len(config["statistics"]["mean"]) == 4 and "R, G, B, NIR" in (out / "README.md").read_text()
    encoder = from_pretrained(out)
    assert isinstance(encoder, PretrainedEncoder) and encoder.config["bands"] == ["R", "G", "B", "NIR"]
    direct = from_pretrained(pretrained_run)
    batch = {"image": torch.randint(1, 255, (2, 4, 32, 32), dtype=torch.uint8)}
    with torch.no_grad():
        assert torch.equal(encoder(batch)[0], direct(batch)[0])
    full = from_pretrained(out, full=True)
    module = MAEPretrainModule.load_from_checkpoint(pretrained_run, adapter=MultispectralAdapter(preset="naip", patch_size=8),
                                                    weights_only=False).eval()
    torch.manual_seed(3)
    a = full(batch).pred
    torch.manual_seed(3)
    b = module.mae(batch).pred
    assert torch.equal(a, b)
    with pytest.raises(Exception, match="not empty"):
        export(pretrained_run, out)


def test_pretrained_by_url_in_a_fine_tuning_config(pretrained_run: Path, server: Server, tmp_path: Path,
                                                   maekit_home: Path) -> None:
    out = export(pretrained_run, tmp_path / "exp")
    url, sha = publish(server, "model.safetensors", (out / "model.safetensors").read_bytes())
    task = ClassificationTask(MultispectralAdapter(preset="naip", patch_size=8), num_classes=4, size="nano",
                              pretrained=f"{url}#sha256={sha}")
    reference = from_pretrained(out)
    assert torch.equal(task.encoder.blocks[0].attn.qkv.weight, reference.encoder.blocks[0].attn.qkv.weight)
    assert main(["weights", "add", "naip-nano", url, "--sha256", sha, "--domain", "multispectral",
                 "--bands", "R", "G", "B", "NIR", "--licence", "MIT"]) == 0
    task = ClassificationTask(MultispectralAdapter(preset="naip", patch_size=8), num_classes=4, size="nano",
                              pretrained="naip-nano")
    assert torch.equal(task.adapter.patch_embed[0].weight, reference.adapter.patch_embed[0].weight)


def test_weights_and_export_commands(pretrained_run: Path, server: Server, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(pretrained_run), str(tmp_path / "pub"), "--training-data", "chips"]) == 0
    url, sha = publish(server, "m.safetensors", (tmp_path / "pub" / "model.safetensors").read_bytes())
    assert main(["weights", "add", "mine", url, "--sha256", sha, "--domain", "multispectral"]) == 0
    assert main(["weights", "add", "loose", url]) == 0
    capsys.readouterr()
    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "mine" in listing and "loose" in listing and "(unverified)" in listing
    assert main(["weights", "info", "mine"]) == 0 and sha in capsys.readouterr().out
    assert main(["weights", "download", "mine"]) == 0
    assert Path(capsys.readouterr().out.strip()).read_bytes() == (tmp_path / "pub" / "model.safetensors").read_bytes()
    assert main(["weights", "download", "loose"]) == 2  # unverified without --trust-unverified
    assert "no sha256 is pinned" in capsys.readouterr().err


def test_loading_into_another_band_set_keeps_matching_groups(tmp_path: Path) -> None:
    """A Sentinel-2 model (4 groups) loaded into a model of only its 10 m bands plus SWIR: the
    shared groups keep their pretrained projections and statistics, the rest is reported."""
    torch.manual_seed(0)
    source = MAEPretrainModule(MultispectralAdapter(preset="sentinel2", patch_size=8), size="nano")
    ckpt = tmp_path / "s2.ckpt"
    checkpoint = {"state_dict": source.state_dict(), "maekit": {"adapter": source.adapter.config(), "size": "nano",
                                                                 "prefix": "mae."}}
    torch.save(checkpoint, ckpt)
    bands = ["B02", "B03", "B04", "B08", "B11", "B12", "B99"]
    groups = [["B02", "B03", "B04", "B08"], ["B11", "B12"], ["B99"]]
    target = MultispectralAdapter(bands=bands, groups=groups, patch_size=8, mean=[0.0] * 7, std=[1.0] * 7)
    with pytest.warns(UserWarning, match=r"groups kept .*newly initialised \[\['B99'\]\].*dropped"):
        task = ClassificationTask(target, num_classes=3, size="nano", pretrained=str(ckpt))
    src = source.mae.adapter
    assert torch.equal(task.adapter.patch_embed[0].weight, src.patch_embed[0].weight)  # the 10 m group
    assert torch.equal(task.adapter.patch_embed[1].weight, src.patch_embed[2].weight)  # SWIR
    assert torch.equal(task.adapter.group_embed.weight[1], src.group_embed.weight[2])
    assert task.adapter.mean[0] == src.mean[1] and task.adapter.mean[6] == 0.0  # by band name; B99 keeps its own


def test_learned_position_table_is_interpolated_to_a_new_grid(tmp_path: Path) -> None:
    source = MAEPretrainModule(MultispectralAdapter(preset="naip", patch_size=8, position="learned", max_grid=4),
                               size="nano")
    ckpt = tmp_path / "p.ckpt"
    with torch.no_grad():
        source.adapter.pos_table.table.normal_()  # a table with structure to interpolate
    torch.save({"state_dict": source.state_dict(), "maekit": {"adapter": source.adapter.config(), "size": "nano",
                                                               "prefix": "mae."}}, ckpt)
    message = r"position table interpolated \(bicubic.*from \(16, 64\) entries to \(64, 64\)"
    with pytest.warns(UserWarning, match=message):
        task = ClassificationTask(MultispectralAdapter(preset="naip", patch_size=8, position="learned", max_grid=8),
                                  num_classes=2, size="nano", pretrained=str(ckpt))
    table = task.adapter.pos_table.table
    grid = source.adapter.pos_table.table.detach().T.reshape(1, 64, 4, 4)  # (width, rows, cols), as MAE's helper
    expected = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    assert torch.allclose(table, expected.reshape(64, 64).T, atol=1e-6)


def test_timm_vit_converter_matches_timm_features(tmp_path: Path) -> None:
    """timm's ViT with random weights everywhere (biases and norms too) and the converted maekit
    encoder give the same features."""
    from functools import partial

    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5,
                            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    with pytest.warns(UserWarning, match=r"loaded .*vit.safetensors: kept \d+ tensors, dropped 2 \(head\)"):
        encoder = from_pretrained(path)
    encoder.adapter.mean.zero_()  # compare on the same normalised input
    encoder.adapter.std.fill_(1.0)
    encoder.adapter.scale.fill_(1.0)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, _ = encoder({"image": image}, return_prefix=True)
        theirs = vit.forward_features(image)
    assert ours.shape == theirs.shape == (2, 17, 64)
    assert (ours - theirs).abs().max() < 1e-5


def test_loading_into_a_task_is_reported_in_one_line(pretrained_run: Path) -> None:
    """kept / new / dropped counts with module names, one warning (not one per tensor)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ClassificationTask(MultispectralAdapter(preset="naip", patch_size=8), num_classes=4, size="nano",
                           class_token=True, pretrained=str(pretrained_run))
    lines = [str(w.message) for w in caught if str(w.message).startswith("loaded ")]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert re.fullmatch(rf"loaded {re.escape(str(pretrained_run))}: kept \d+ tensors, new 2 \(the file has no weights "
                        r"for encoder.cls_pos, encoder.cls_token: fresh init\), dropped \d+ \(mask_token, decoder.*\)",
                        lines[0])


# ------------------------------------------------------------------------------ hf:// sources
def hf_publish(server: Server, monkeypatch: pytest.MonkeyPatch, revision: str, data: bytes) -> str:
    """Serve `org/repo` file `w.pt` at `revision` the way the Hub resolves it; HF_ENDPOINT points at it."""
    folder = server.root / "org" / "repo" / "resolve" / revision
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w.pt").write_bytes(data)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    return hashlib.sha256(data).hexdigest()


def test_hf_sources_follow_the_pinning_rules(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """hf:// like every remote source: refused unpinned without trust, accepted with trust or a
    matching sha256, refused (nothing cached) with a wrong one; a revision is the one fetched."""
    from maekit.weights import resolve

    commit = "0123456789abcdef0123456789abcdef01234567"
    sha = hf_publish(server, monkeypatch, commit, b"pinned bytes")
    main_sha = hf_publish(server, monkeypatch, "main", b"moving bytes")
    with pytest.raises(WeightsError, match=f"sha256 mismatch: expected {main_sha}, got {sha}"):
        resolve(f"hf://org/repo@{commit}/w.pt#sha256={main_sha}")  # the commit's file, not main's
    with pytest.raises(WeightsError, match=r"hf://org/repo/w.pt: no sha256 is pinned.*#sha256=<hex> and a commit"):
        resolve("hf://org/repo/w.pt")
    assert resolve("hf://org/repo/w.pt", trust_unverified=True).read_bytes() == b"moving bytes"
    assert resolve(f"hf://org/repo@{commit}/w.pt#sha256={sha}").read_bytes() == b"pinned bytes"
    assert resolve(f"hf://org/repo/w.pt#sha256={main_sha}").read_bytes() == b"moving bytes"
    with pytest.raises(WeightsError, match="no sha256 is pinned"):
        from_pretrained(f"hf://org/repo@{commit}/w.pt")
    with pytest.raises(Exception, match="sha256=<64 hex digits>"):
        resolve("hf://org/repo/w.pt#sha256=abc")


def test_builtin_registry_entry_is_marked_unverified() -> None:
    from maekit.weights import registry

    entry = registry()["mae-vit-base-imagenet"]
    assert entry["url"].startswith("https://huggingface.co/timm/vit_base_patch16_224.mae/")
    with pytest.raises(WeightsError, match="no sha256 is pinned"):
        from_pretrained("mae-vit-base-imagenet")


def test_fine_tuned_checkpoint_with_a_class_token_loads_with_it(tmp_path: Path) -> None:
    """A fine-tuning task's checkpoint records its class token, so `from_pretrained` rebuilds the
    encoder with it (it used to be built without one and the load failed)."""
    import maekit

    torch.manual_seed(int(torch.randint(0, 10_000, ())))
    task = ClassificationTask(MultispectralAdapter(preset="naip", patch_size=8), num_classes=3, size="nano",
                              class_token=True)
    with torch.no_grad():
        for p in task.parameters():
            p.normal_(0, 0.2)
    record: dict = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(record)
    assert record["maekit"]["class_token"] is True
    torch.save(record, tmp_path / "task.ckpt")
    loaded = maekit.from_pretrained(tmp_path / "task.ckpt")  # the top-level front door
    assert loaded.encoder.num_prefix == 1
    assert torch.equal(loaded.encoder.state_dict()["cls_token"], task.encoder.state_dict()["cls_token"])
