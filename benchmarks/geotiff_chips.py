"""Random 256x256 chips per second from one large NAIP-like GeoTIFF: maekit's windowed reader
vs torchgeo's `NAIP` + `RandomGeoSampler`, interleaved in one process, warm and cold GDAL cache.

The raster (8192x8192, 4 bands, uint8, 512-pixel tiles, deflate) is generated once under
benchmarks/_data. "Cold": every chip is read through a freshly opened file (ours closes its
handle after each chip; torchgeo runs with `cache=False`), so nothing of it is in GDAL's block
cache and its tiles are decompressed. "Warm": handles stay open and the same chips are read a
second time with a 4 GB block cache, so reads are served from decompressed tiles.

    python benchmarks/geotiff_chips.py [--size 8192] [--chips 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import rasterio
import torch

from maekit.datasets import RandomWindowDataset
from maekit.datasets.samples import make_large_raster

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
    a = p.parse_args()
    # GDAL sizes its block cache at its first read, so the size is set before any read
    with rasterio.Env(GDAL_CACHEMAX=4 * 1024**3):  # bytes, as rasterio passes it
        run(a)


def run(a: argparse.Namespace) -> None:
    from torchgeo.datasets import NAIP
    from torchgeo.samplers import RandomGeoSampler

    folder = DATA / f"naip_{a.size}"
    path = folder / "m_3809701_ne_14_060_20190811.tif"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        make_large_raster(path.with_suffix(".partial.tif"), size=a.size)
        path.with_suffix(".partial.tif").rename(path)

    ours = RandomWindowDataset([path], ["R", "G", "B", "NIR"], None, a.chip, a.chips, seed=0)
    naip = {cache: NAIP(paths=str(folder), cache=cache == "warm") for cache in ("cold", "warm")}
    sampler = RandomGeoSampler(naip["warm"], size=a.chip, length=a.chips, generator=torch.Generator().manual_seed(0))
    queries = list(sampler)

    def read_ours(cold: bool) -> int:
        for i in range(len(ours)):
            ours[i]
            if cold:
                ours.close()
        return len(ours)

    def read_torchgeo(cold: bool) -> int:
        dataset = naip["cold" if cold else "warm"]
        for q in queries:
            dataset[q]
        return len(queries)

    # sanity: both deliver a (4, chip, chip) image
    assert ours[0]["image"].shape == (4, a.chip, a.chip)
    assert naip["warm"][queries[0]]["image"].shape == (4, a.chip, a.chip)
    results: dict[str, dict[str, float]] = {}
    for cache in ("cold", "warm"):
        cold = cache == "cold"
        rates: dict[str, list[float]] = {"maekit": [], "torchgeo": []}
        if not cold:
            read_ours(False), read_torchgeo(False)  # decompress these chips' tiles into the cache
        for _ in range(a.repeats):  # interleaved
            rates["maekit"] += chips_per_second(lambda: read_ours(cold), 1)
            rates["torchgeo"] += chips_per_second(lambda: read_torchgeo(cold), 1)
        results[cache] = {k: statistics.median(v) for k, v in rates.items()}
        results[cache]["ratio"] = results[cache]["maekit"] / results[cache]["torchgeo"]
    print(f"{a.size}x{a.size} 4-band uint8 tiled deflate GeoTIFF, random {a.chip}x{a.chip} chips, "
          f"{a.chips} chips x {a.repeats} passes, median")
    print("| GDAL cache | maekit chips/s | torchgeo NAIP + RandomGeoSampler chips/s | ratio |")
    print("|---|---|---|---|")
    for cache, r in results.items():
        print(f"| {cache} | {r['maekit']:.1f} | {r['torchgeo']:.1f} | {r['ratio']:.1f}x |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
