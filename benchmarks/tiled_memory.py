"""Peak memory of tiled whole-scene prediction as the scene grows (it should stay flat).

    .venv/bin/python benchmarks/tiled_memory.py                 # 2048^2 and 8192^2, nano ViT
    .venv/bin/python benchmarks/tiled_memory.py --sizes 1024 4096 --model conv

Each size runs in a fresh subprocess (so peaks do not carry over) that builds the model, records
its peak RSS (`ru_maxrss`) before predicting, predicts the whole generated scene with
`maekit.domains.multispectral.scenes.predict_raster`, and records the peak again. The scene itself is never
loaded whole: a 8192^2 4-band uint8 scene is 256 MiB raw and its float32 class probabilities
would be 1 GiB; the predictor holds one strip of tile rows.

The last stdout line is a JSON object: the rows, `targets` (peak memory of the largest scene at
most 1.25x the smallest's) and `markdown` (the table).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(scene: str, out: str, model_kind: str, tile: int, batch: int, device: str) -> None:
    """Predict one scene and print a JSON line of peaks and timing."""
    import torch

    from maekit.domains.multispectral.scenes import predict_raster

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if model_kind == "conv":
        model: torch.nn.Module = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.ReLU(),
                                                     torch.nn.Conv2d(16, 4, 3, padding=1))
        forward = lambda b: model(b["image"].float() / 255.0)  # noqa: E731
        patch = 1
    else:
        from maekit.domains.multispectral import MultispectralAdapter
        from maekit.finetune.tasks import SegmentationTask

        model = SegmentationTask(MultispectralAdapter(preset="naip", patch_size=16), num_classes=4, size="nano")
        forward = model
        patch = 16
    model.to(device).eval()
    before = _peak_mib()
    start = time.perf_counter()
    result = predict_raster(forward, scene, out, num_classes=4, tile=tile, batch_size=batch, device=device,
                            multiple_of=patch, probabilities=True)
    print(json.dumps({"peak_before_mib": before, "peak_after_mib": _peak_mib(), "tiles": result.tiles,
                      "seconds": time.perf_counter() - start, "height": result.height, "width": result.width}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--model", choices=["nano", "conv"], default="nano")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", default=None, help="where scenes are generated (default a temporary folder)")
    p.add_argument("--child", nargs=2, metavar=("SCENE", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.model, a.tile, a.batch_size, a.device)
        return
    if len(a.sizes) < 2:
        p.error("--sizes needs at least two scene sizes to compare")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="tiled_memory_"))
    try:
        rows = measure(a, work)
    finally:
        if a.workdir is None:  # generated scenes and predictions are large: not left behind
            shutil.rmtree(work, ignore_errors=True)
    first, last = rows[0], rows[-1]
    growth = last["peak_after_mib"] / first["peak_after_mib"]
    pixels = (last["height"] * last["width"]) / (first["height"] * first["width"])
    print(f"scene pixels x{pixels:.0f}, peak RSS x{growth:.2f}")
    lines = ["| scene | tiles | seconds | peak resident memory |", "|---|---|---|---|"]
    lines += [f"| {r['width']} x {r['height']} x 4 | {r['tiles']} | {r['seconds']:.1f} | "
              f"{r['peak_after_mib']:.1f} MiB |" for r in rows]
    table = "\n".join(lines)
    print(table)
    targets = [{"target": f"tiled prediction peak memory, {pixels:.0f}x the pixels", "value": round(growth, 2),
                "goal": "<= 1.25x", "met": growth <= 1.25}]
    print(json.dumps({"model": a.model, "tile": a.tile, "rows": rows, "pixels_ratio": pixels, "peak_ratio": growth,
                      "targets": targets, "markdown": table}))


def measure(a: argparse.Namespace, work: Path) -> list[dict]:
    """One fresh child process per scene size; its JSON row, printed as it comes."""
    from maekit.domains.multispectral.samples import make_large_raster

    rows = []
    for size in a.sizes:
        scene = work / f"scene_{size}.tif"
        if not scene.exists():
            make_large_raster(scene, size=size, tile=512)
        cmd = [sys.executable, __file__, "--child", str(scene), str(work / f"out_{size}"), "--model", a.model,
               "--tile", str(a.tile), "--batch-size", str(a.batch_size), "--device", a.device]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"tiled_memory: the {size}^2 scene's child process failed ({done.returncode}):\n"
                     f"{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        raw_mib = 4 * size * size / 2**20
        print(f"{size:6d}^2  tiles {row['tiles']:6d}  {row['seconds']:7.1f} s  peak RSS after model "
              f"{row['peak_before_mib']:7.1f} MiB  after prediction {row['peak_after_mib']:7.1f} MiB "
              f"(+{row['peak_after_mib'] - row['peak_before_mib']:.1f})  [scene raw {raw_mib:.0f} MiB, "
              f"float32 probabilities {4 * raw_mib:.0f} MiB]", flush=True)
    return rows


if __name__ == "__main__":
    main()
