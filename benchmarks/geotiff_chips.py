"""Random 256x256 chips per second from one large NAIP-like GeoTIFF: maekit's windowed reader
vs torchgeo's `NAIP` + `RandomGeoSampler`, interleaved in one process, warm and cold GDAL cache.

The raster (8192x8192, 4 bands, uint8, 512-pixel tiles, deflate) is generated once under
benchmarks/_data. "Cold": each pass starts from freshly opened files (an empty GDAL block cache)
and reads new random windows, as an epoch over a large corpus does: a tile is decompressed the
first time a chip touches it. "Warm": the same chips are read a second time with handles open
and a 4 GB block cache, so reads are served from decompressed tiles.

    python benchmarks/geotiff_chips.py [--size 8192] [--chips 200] [--data DIR]

The last stdout line is a JSON object: the rates, `targets` (maekit's reader at least as fast as
torchgeo's, cold and warm) and `markdown` (the table printed above it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import rasterio
import torch

from maekit.domains.multispectral import RandomWindowDataset
from maekit.domains.multispectral.samples import make_large_raster

DATA = Path(__file__).resolve().parent / "_data"


def chips_per_second(read_all, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        count = read_all()
        rates.append(count / (time.perf_counter() - t))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--chip", type=int, default=256)
    p.add_argument("--chips", type=int, default=200, help="chips per timed pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", default=str(DATA), help="folder for the generated raster (kept for the next run)")
    a = p.parse_args()
    # GDAL sizes its block cache at its first read, so the size is set before any read
    with rasterio.Env(GDAL_CACHEMAX=4 * 1024**3):  # bytes, as rasterio passes it
        run(a)


def run(a: argparse.Namespace) -> None:
    from torchgeo.datasets import NAIP
    from torchgeo.samplers import RandomGeoSampler

    folder = Path(a.data) / f"naip_{a.size}"
    path = folder / "m_3809701_ne_14_060_20190811.tif"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        make_large_raster(path.with_suffix(".partial.tif"), size=a.size)
        path.with_suffix(".partial.tif").rename(path)

    bands = ["R", "G", "B", "NIR"]

    def passes(seed: int) -> tuple[RandomWindowDataset, NAIP, list]:
        """Fresh handles (empty block cache) and new random windows for both readers."""
        ours = RandomWindowDataset([path], bands, None, a.chip, a.chips, seed=seed)
        naip = NAIP(paths=str(folder))
        sampler = RandomGeoSampler(naip, size=a.chip, length=a.chips,
                                   generator=torch.Generator().manual_seed(seed))
        return ours, naip, list(sampler)

    def read_ours(ours: RandomWindowDataset) -> int:
        for i in range(len(ours)):
            ours[i]
        return len(ours)

    def read_torchgeo(naip: NAIP, queries: list) -> int:
        for q in queries:
            naip[q]
        return len(queries)

    ours, naip, queries = passes(0)
    # sanity: both deliver a (4, chip, chip) image
    assert ours[0]["image"].shape == (4, a.chip, a.chip)
    assert naip[queries[0]]["image"].shape == (4, a.chip, a.chip)
    results: dict[str, dict[str, float]] = {}
    rates: dict[str, list[float]] = {"maekit": [], "torchgeo": []}
    for rep in range(a.repeats):  # cold, interleaved
        ours, naip, queries = passes(100 + rep)
        rates["maekit"] += chips_per_second(lambda: read_ours(ours), 1)
        rates["torchgeo"] += chips_per_second(lambda: read_torchgeo(naip, queries), 1)
    results["cold"] = {k: statistics.median(v) for k, v in rates.items()}
    rates = {"maekit": [], "torchgeo": []}
    ours, naip, queries = passes(1)
    read_ours(ours), read_torchgeo(naip, queries)  # decompress these chips' tiles into the cache
    for rep in range(a.repeats):  # warm, interleaved
        rates["maekit"] += chips_per_second(lambda: read_ours(ours), 1)
        rates["torchgeo"] += chips_per_second(lambda: read_torchgeo(naip, queries), 1)
    results["warm"] = {k: statistics.median(v) for k, v in rates.items()}
    for r in results.values():
        r["ratio"] = r["maekit"] / r["torchgeo"]
    title = (f"{a.size}x{a.size} 4-band uint8 tiled deflate GeoTIFF, random {a.chip}x{a.chip} chips, "
             f"{a.chips} chips x {a.repeats} passes, median")
    lines = ["| GDAL cache | maekit chips/s | torchgeo NAIP + RandomGeoSampler chips/s | ratio |", "|---|---|---|---|"]
    lines += [f"| {cache} | {r['maekit']:.1f} | {r['torchgeo']:.1f} | {r['ratio']:.1f}x |"
              for cache, r in results.items()]
    table = "\n".join(lines)
    print(title)
    print(table)
    targets = [{"target": f"GeoTIFF chips/s vs torchgeo ({cache} cache)", "value": round(r["ratio"], 2),
                "goal": ">= 1.0x", "met": r["ratio"] >= 1.0} for cache, r in results.items()]
    print(json.dumps({**results, "targets": targets, "markdown": table}))


if __name__ == "__main__":
    main()
