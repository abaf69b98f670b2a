"""Generated time series with seasonal change and cloud gaps: crop types told apart only by when
they green up.

Every location is a field (the same striped texture for every class) observed on T dates of one
growing season. Its greenness follows a bell-shaped phenology curve whose *timing* is the class
(`early`, `mid`, `late` green-up); the field's base brightness, the curve's height and width, and
the acquisition dates are drawn per location from the same distributions for every class. So one
acquisition, even with its date, says little (a green field on day 150 may be an early crop
with a low peak or a mid crop); the change across dates says which curve it is. Some dates are
fully clouded (written as nodata) and some carry a cloud blob (nodata pixels): the cloud gaps a
model has to cope with.

Written as NAIP-like 4-band (R, G, B, NIR) uint8 GeoTIFFs, 0 = nodata, either a folder of dated
chips per location (`folders`) or one stack per location with a `.json` dates sidecar (`stacks`).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from rasterio.transform import from_origin

from maekit.domains.multispectral.samples import structure_field
from maekit.domains.multispectral.spec import NAIP
from maekit.domains.registry import SampleOptions

CROP_CLASSES = ("early", "mid", "late")
#: day of year of peak greenness of each class
PEAK_DOY = {"early": 130.0, "mid": 185.0, "late": 240.0}


def greenness(doy: np.ndarray, peak: float, width: float, height: float) -> np.ndarray:
    """Phenology curve: 0 (bare soil) .. `height` at `peak`, Gaussian in time of std `width` days."""
    return height * np.exp(-0.5 * ((doy - peak) / width) ** 2)


def field_frame(texture: np.ndarray, base: np.ndarray, green: float, rng: np.random.Generator) -> np.ndarray:
    """(4, H, W) uint8 R, G, B, NIR of a field at one date: vegetation lowers red and blue, raises NIR."""
    effect = np.array([-45.0, 10.0, -25.0, 90.0])  # full canopy vs bare soil, per band
    mean = base + effect * green
    frame = mean[:, None, None] + 10.0 * texture[None] * (0.5 + green) + rng.normal(0, 4, (4, *texture.shape))
    return np.clip(np.round(frame), 1, 255).astype(np.uint8)


def series_of(label: int, size: int, frames: int, rng: np.random.Generator, cloud_fraction: float
              ) -> tuple[np.ndarray, list[dt.date]]:
    """(T, 4, size, size) uint8 frames of a field of class `label` and their dates."""
    year = int(rng.integers(2018, 2024))
    doys = np.sort(rng.uniform(90, 290, size=frames)).round()
    peak = PEAK_DOY[CROP_CLASSES[label]] + rng.normal(0, 6)
    height, width = rng.uniform(0.4, 1.0), rng.uniform(22, 34)
    base = rng.uniform(90, 150, size=4)
    texture = structure_field("stripes", size, rng)
    out = []
    for doy in doys:
        frame = field_frame(texture, base, float(greenness(doy, peak, width, height)), rng)
        if rng.random() < cloud_fraction:  # fully clouded: nothing usable
            frame[:] = 0
        elif rng.random() < cloud_fraction:  # a cloud blob
            y, x = np.mgrid[0:size, 0:size]
            cy, cx, r = *rng.uniform(0, size, 2), rng.uniform(size / 6, size / 3)
            frame[:, (y - cy) ** 2 + (x - cx) ** 2 < r * r] = 0
        out.append(frame)
    dates = [dt.date(year, 1, 1) + dt.timedelta(days=int(d) - 1) for d in doys]
    return np.stack(out), dates


def make_time_series_dataset(
    root: str | Path,
    per_class: int = 32,
    val_per_class: int = 16,
    size: int = 16,
    frames: int = 6,
    layout: Literal["folders", "stacks"] = "folders",
    cloud_fraction: float = 0.15,
    seed: int = 0,
) -> Path:
    """Write `root/{train,val}/<crop class>/<location>` series (see the module docstring); returns `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    counter = 0
    for split, count in (("train", per_class), ("val", val_per_class)):
        for i in range(count * len(CROP_CLASSES)):
            label = i % len(CROP_CLASSES)
            stack, dates = series_of(label, size, frames, rng, cloud_fraction)
            # fields spread over UTM zone 14N, so every location has its own latitude/longitude
            transform = from_origin(400000 + 3000 * (counter % 50), 4300000 - 3000 * (counter // 50), 10.0, 10.0)
            counter += 1
            name = f"field_{i:05d}"
            folder = root / split / CROP_CLASSES[label]
            profile = dict(driver="GTiff", height=size, width=size, dtype="uint8", crs="EPSG:32614",
                           transform=transform, nodata=0)
            if layout == "folders":
                for frame, d in zip(stack, dates):
                    path = folder / name / f"{name}_{d.isoformat()}.tif"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with rasterio.open(path, "w", count=4, **profile) as dst:
                        dst.write(frame)
                        dst.descriptions = NAIP.bands
            else:
                folder.mkdir(parents=True, exist_ok=True)
                with rasterio.open(folder / f"{name}.tif", "w", count=4 * frames, **profile) as dst:
                    dst.write(stack.reshape(4 * frames, size, size))
                (folder / f"{name}.json").write_text(json.dumps({"dates": [d.isoformat() for d in dates]}))
    return root


def sample_data(out: Path, preset: str, options: SampleOptions) -> Path:
    """`maekit sample-data --preset timeseries`: crop-type time series (32 per class, 16x16, 6 dates)."""
    return make_time_series_dataset(out, 32 if options.per_class is None else options.per_class,
                                    options.val_per_class, 16 if options.size is None else options.size,
                                    seed=options.seed)


def _pick_single_dates(batch: dict, train: bool, generator: "torch.Generator") -> dict:
    """One present date per sample (random in training, the middle present one otherwise)."""
    import torch

    present = batch["date_present"]
    if train:
        score = torch.rand(present.shape, generator=generator) + (~present).float() * 2
        pick = score.argmin(1)
    else:
        count = present.sum(1)
        rank = present.long().cumsum(1) - 1
        pick = ((rank == (count // 2)[:, None]) & present).float().argmax(1)
    rows = torch.arange(len(pick))
    return {"image": batch["image"][rows, pick][:, None], "valid": batch["valid"][rows, pick][:, None],
            "dates": batch["dates"][rows, pick][:, None], "date_present": present[rows, pick][:, None]}


def phenology_experiment(root: str | Path, mode: Literal["temporal", "single"], epochs: int = 40,
                         shuffle_labels: bool = False, num_frames: int = 6, seed: int = 0,
                         size: str = "nano", lr: float = 1e-3, batch_size: int = 24,
                         layout: Literal["folders", "stacks"] = "folders") -> dict[str, float]:
    """Crop type from a generated time series (`make_time_series_dataset`): a randomly initialised
    temporal encoder (band groups + date code) with a linear head, trained briefly end to end on
    every date (`temporal`) or on one date per sample (`single`, with its date), then scored on
    the validation split. `shuffle_labels` permutes the training labels (must give chance).
    Returns train/val accuracy and the chance level."""
    import torch

    from maekit.backbones import TransformerStack
    from maekit.domains.multispectral.temporal import TemporalMultispectralAdapter
    from maekit.domains.multispectral.timeseries import TimeSeriesDataModule

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    dm = TimeSeriesDataModule(str(root), layout=layout, num_frames=num_frames, task="classification",
                              batch_size=batch_size)
    dm.setup()

    def load(name: str) -> dict:
        items = [dm.datasets[name][i] for i in range(len(dm.datasets[name]))]
        return {k: torch.stack([it[k] for it in items]) for k in ("image", "valid", "dates", "date_present", "label")}

    train, val = load("train"), load("val")
    if shuffle_labels:
        train["label"] = train["label"][torch.randperm(len(train["label"]), generator=generator)]
    adapter = TemporalMultispectralAdapter(preset="naip", patch_size=8)
    encoder = TransformerStack.from_size(size)  # type: ignore[arg-type]
    adapter.build(encoder.width)
    head = torch.nn.Linear(encoder.width, len(dm.classes))
    params = [*adapter.parameters(), *encoder.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)

    def logits(batch: dict, training: bool) -> "torch.Tensor":
        if mode == "single":
            batch = _pick_single_dates(batch, training, generator)
        tokens = adapter.tokenize(batch)
        x = encoder(adapter.embed(tokens), tokens.present)
        w = tokens.present[..., None].float()
        return head((x * w).sum(1) / w.sum(1).clamp(min=1.0))

    n = len(train["label"])
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            batch = {k: v[idx] for k, v in train.items()}
            loss = torch.nn.functional.cross_entropy(logits(batch, True), batch["label"])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    @torch.no_grad()
    def accuracy(data: dict) -> float:
        return float((logits(data, False).argmax(1) == data["label"]).float().mean())

    return {"train_acc": accuracy(train), "val_acc": accuracy(val), "chance": 1.0 / len(dm.classes)}
