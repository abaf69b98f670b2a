"""A tiny 1-D signal domain, written the way README "Adding a domain" says: an adapter, a
datamodule on the `maekit.data` base class, a sample generator and one `register_domain` call.
Nothing else in the kit is edited; `tests/test_conformance.py` checks it like the shipped ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from maekit.backbones import sincos_embedding
from maekit.data.base import MaekitDataModule
from maekit.domains.registry import Example, SampleOptions, register_domain
from maekit.errors import DataError
from maekit.tokens import DomainAdapter, Tokens


class SignalAdapter(DomainAdapter):
    """(B, L) signals cut into windows of `window` samples; the loss is MSE per window."""

    num_groups = 1

    def __init__(self, window: int = 8) -> None:
        super().__init__()
        self.window = window
        self.token_size = window

    def build(self, embed_dim: int) -> None:
        self.proj = nn.Linear(self.window, embed_dim)

    def tokenize(self, batch: dict[str, Any]) -> Tokens:
        signal = batch["signal"].float()
        b, length = signal.shape
        if length % self.window:
            raise DataError("batch", f"signals of {length} samples do not split into windows of {self.window}")
        n = length // self.window
        coords = torch.arange(n, dtype=torch.float32, device=signal.device).expand(b, n)[..., None]
        return Tokens(values=signal.reshape(b, n, self.window), coords=coords,
                      group=torch.zeros(b, n, dtype=torch.long, device=signal.device),
                      present=torch.ones(b, n, dtype=torch.bool, device=signal.device), grid=(n,))

    def untokenize(self, values: Tensor, tokens: Tokens) -> Tensor:
        return values.flatten(1)

    def embed(self, tokens: Tokens) -> Tensor:
        return self.proj(tokens.values) + self.encode_position(tokens.coords, self.proj.out_features)

    def encode_position(self, coords: Tensor, dim: int) -> Tensor:
        return sincos_embedding(coords, dim)

    def target(self, tokens: Tokens) -> Tensor:
        return tokens.values

    def loss(self, pred: Tensor, target: Tensor, tokens: Tokens) -> Tensor:
        return (pred.float() - target.float()).pow(2).mean(-1)


class SignalDataset(Dataset):
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        signal = np.load(self.files[index])
        if signal.ndim != 1 or not np.isfinite(signal).all():
            raise DataError(self.files[index], "is not a finite 1-D signal")
        return {"signal": torch.from_numpy(signal.astype(np.float32)), "path": str(self.files[index])}


class SignalDataModule(MaekitDataModule):
    """`.npy` signals under `root`, a seeded `val_fraction` held out."""

    def __init__(self, root: str, batch_size: int = 2, val_fraction: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        self.root, self.batch_size, self.val_fraction, self.seed = Path(root), batch_size, val_fraction, seed

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        files = sorted(self.root.glob("*.npy"))
        if not files:
            raise DataError(self.root, "holds no .npy signals")
        val, train = self.seeded_split(files, self.val_fraction, at_least_one=True)
        self.datasets = {"train": SignalDataset(train), "val": SignalDataset(val)}


def sample_data(out: Path, preset: str, options: SampleOptions) -> Path:
    """`maekit sample-data --preset signal`: noisy sines (8 signals of 32 samples)."""
    rng = np.random.default_rng(options.seed)
    out.mkdir(parents=True, exist_ok=True)
    t = np.arange(options.size or 32)
    for i in range(options.per_class or 8):
        np.save(out / f"signal_{i:03d}.npy", np.sin(t * rng.uniform(0.1, 1.0)) + 0.1 * rng.standard_normal(len(t)))
    return out


def example(root: Path) -> Example:
    return Example(SignalAdapter(window=8), SignalDataModule(str(sample_data(root, "signal", SampleOptions()))),
                   native=lambda adapter, batch: batch["signal"])


register_domain("signal", adapter=SignalAdapter, datamodules=[SignalDataModule], samples={"signal": sample_data},
                description="1-D signals (a test domain)", example=example)
