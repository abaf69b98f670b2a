"""Reading shards written by `maekit shard` (see `maekit.data.shards`): the manifest and a
datamodule that streams them with litdata, finishing each sample as its source would."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

from maekit.errors import ConfigError, DataError

MANIFEST = "maekit_shards.json"
READABLE_FORMATS = (1, 2)
#: datamodule attributes that adapters and tasks read (`connect_datamodule`, class checks, writers)
DATAMODULE_ATTRIBUTES = ("bands", "channels", "modalities", "classes", "file_bands")


# ------------------------------------------------------------------------------ finishing
class FinishAsStored:
    """Stored samples need no finishing (what a dataset without random steps uses)."""

    def __init__(self, spec: dict[str, Any], augment: bool) -> None:
        del spec, augment

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return item


def _finisher_path(spec: dict[str, Any]) -> str:
    if "finish" in spec:
        return spec["finish"]
    if spec.get("kind", "plain") == "plain":
        return f"{__name__}:FinishAsStored"
    from maekit.domains.registry import shard_kind

    return shard_kind(spec["kind"])


class FinishSample:
    """Turns a stored sample into a training/validation sample at stream time (a litdata transform).

    `augment` False switches off every random step (random crops become centre crops), which is
    what makes a stream comparable sample by sample with its source.
    """

    def __init__(self, spec: dict[str, Any], augment: bool = True) -> None:
        self.spec, self.augment = dict(spec), augment
        self._finish: Any = None

    def __getstate__(self) -> dict[str, Any]:  # the finisher is rebuilt in each worker
        return {**self.__dict__, "_finish": None}

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        strings = self.spec.get("strings", ())
        item = {k: bytes(v).decode() if k in strings and isinstance(v, (bytes, memoryview)) else v
                for k, v in item.items()}
        if self._finish is None:
            from maekit.domains.registry import load

            self._finish = load(_finisher_path(self.spec))(self.spec, self.augment)
        return self._finish(item)


# ------------------------------------------------------------------------------ reading
def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def read_manifest(root: str | Path, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a shard folder (a local path or an `s3://` URL)."""
    root = str(root).rstrip("/")
    where = f"{root}/{MANIFEST}"
    if _is_remote(root):
        if not root.startswith("s3://"):
            raise ConfigError(f"{root}: only local folders and s3:// URLs are supported for shards")
        import boto3

        bucket, _, key = where.removeprefix("s3://").partition("/")
        try:
            body = boto3.client("s3", **(storage_options or {})).get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as err:  # botocore raises many kinds (no credentials, no such key, network)
            raise DataError(where, f"cannot be fetched: {err}") from err
        text = body.decode()
    else:
        path = Path(root.removeprefix("file://")) / MANIFEST
        if not path.is_file():
            raise DataError(path, "no shard manifest here; write shards with `maekit shard -c CONFIG --out DIR`")
        text = path.read_text()
    try:
        manifest = json.loads(text)
    except ValueError as err:
        raise DataError(where, f"is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS or "splits" not in manifest:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(where, f"is not a maekit shard manifest this version reads (format {found!r}; this "
                               f"version reads formats {', '.join(map(str, READABLE_FORMATS))})")
    return manifest


def _collate(name: str) -> Callable[[list[dict[str, Any]]], Any]:
    """"default", a "module:function", or (older manifests) a stored-sample kind whose finisher
    names its collation."""
    from torch.utils.data import default_collate

    from maekit.domains.registry import load, shard_kind

    if name == "default":
        return default_collate
    if ":" in name:
        return load(name)
    return load(getattr(load(shard_kind(name)), "collate", "torch.utils.data:default_collate"))


class StreamingShardsDataModule(L.LightningDataModule):
    """Trains from shards written by `maekit shard`, streamed by litdata from a local folder or
    object storage (`s3://...`), with the attributes of the datamodule they came from.

    Args:
        root: the shard folder (holding `maekit_shards.json`).
        batch_size, num_workers: loader settings (default: the source datamodule's).
        shuffle: shuffle the training stream (litdata shuffles chunks, then samples in them).
        augment: apply the source's random training steps at stream time (see the module doc).
        cache_dir: where remote chunks are cached (default: litdata's).
        max_cache_size: the most the chunk cache may hold, e.g. "50GB".
        seed: shuffling seed.
        storage_options: passed to litdata (and boto3 for the manifest), e.g. an `endpoint_url`.
    """

    def __init__(self, root: str, batch_size: int | None = None, num_workers: int | None = None,
                 shuffle: bool = True, augment: bool = True, cache_dir: str | None = None,
                 max_cache_size: str = "50GB", seed: int = 0, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.root = str(root).rstrip("/")
        self.manifest = read_manifest(self.root, storage_options)
        attributes = self.manifest.get("attributes", {})
        for name in DATAMODULE_ATTRIBUTES:
            if name in attributes:
                setattr(self, name, attributes[name])
        self.batch_size = batch_size if batch_size is not None else int(attributes.get("batch_size", 32))
        self.num_workers = num_workers if num_workers is not None else int(attributes.get("num_workers", 0))
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.cache_dir, self.max_cache_size, self.storage_options = cache_dir, max_cache_size, storage_options
        self.datasets: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        found = self.manifest.get("attributes", {}).get("num_classes")
        return int(found) if found is not None else len(getattr(self, "classes", []) or [])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def dataset(self, split: str, shuffle: bool = False, augment: bool = False) -> Any:
        """A litdata `StreamingDataset` over one split, finishing samples as the source would."""
        from litdata import StreamingDataset

        if split not in self.manifest["splits"]:
            raise DataError(f"{self.root}/{MANIFEST}", f"has no {split!r} split (it has {self.splits})")
        spec = self.manifest["splits"][split]["finish"]
        return StreamingDataset(f"{self.root}/{split}", cache_dir=self.cache_dir, shuffle=shuffle, seed=self.seed,
                                max_cache_size=self.max_cache_size, storage_options=self.storage_options or {},
                                transform=FinishSample(spec, augment))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split in self.splits:
            train = split == "train"
            self.datasets[split] = self.dataset(split, shuffle=train and self.shuffle, augment=train and self.augment)

    def _loader(self, split: str) -> Any:
        from litdata import StreamingDataLoader

        if split not in self.datasets:
            raise DataError(self.root, f"has no {split!r} split (it has {self.splits})")
        return StreamingDataLoader(self.datasets[split], batch_size=self.batch_size, num_workers=self.num_workers,
                                   collate_fn=_collate(self.manifest.get("collate", "default")),
                                   persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> Any:
        return self._loader("train")

    def val_dataloader(self) -> Any:
        return self._loader("val")

    def test_dataloader(self) -> Any:
        return self._loader("test" if "test" in self.datasets else "val")

    def predict_dataloader(self) -> Any:
        return self.test_dataloader()
