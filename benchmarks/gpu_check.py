"""The GPU check: the kit's training steps on one GPU, measured in one prepared run.

Parts, each guarded (a failure is recorded with its error text and the run goes on) and held to
a share of one global time budget:

- matmul: the bf16 matmul rate of this GPU, measured in this process (the MFU denominator);
- mae: ViT-B/16 MAE pretraining step, bf16 autocast, batch 256 of 224x224x3: images/s and
  model-FLOP utilisation (FLOPs counted by torch's FlopCounterMode on the eager step), eager and
  with `torch.compile` of the encoder and decoder stacks;
- mri: the 4-modality 128^3 MRI pretraining step, built by benchmarks/mri_step.py (maekit, and
  MONAI's `MaskedAutoEncoderViT` when MONAI is installed): ms/step and `max_memory_allocated`;
- pointmae: the Point-MAE pretraining step of configs/pointcloud/pretrain.yaml at batch 128;
- chips: chips/s that the kit's GeoTIFF window loader (`RasterDataModule`) delivers to the GPU
  with 0/4/8/16 workers, against the MAE step's demand in images/s;
- ddp: a 2-process DistributedDataParallel MAE step (NCCL), when the machine has 2 GPUs or more.

Writes OUT/gpu_check.json (updated after every part, so a killed run keeps what it measured)
and OUT/gpu_check.md; the last stdout line is a JSON object with `targets` and `markdown`.

    bash benchmarks/gpu_check.sh                    # on a GPU machine, <= 8 minutes
    bash benchmarks/gpu_check.sh --dry-run --out /tmp/gc   # every part on CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("matmul", "mae", "mri", "pointmae", "chips", "ddp")


@dataclass
class Plan:
    """Sizes and limits of one run: `real()` for the GPU, `dry()` for the CPU smoke run."""

    device: str
    precision: str = "bf16"
    matmul_n: int = 8192
    mae_size: str = "base"
    mae_image: int = 224
    mae_patch: int = 16
    mae_batch: int = 256
    mae_warmup: int = 3
    mae_steps: int = 30
    compile_backend: str = "inductor"
    mri_size: str = "base"
    mri_batch: int = 4
    mri_image: int = 128
    mri_steps: int = 10
    point_batch: int = 128
    point_size: str | None = None  # None: the config's
    point_points: int = 1024
    point_groups: int | None = None  # None: the config's
    point_group_size: int | None = None
    point_steps: int = 20
    raster: int = 4096
    raster_tile: int = 512
    chip_workers: list[int] = field(default_factory=lambda: [0, 4, 8, 16])
    chip_batch: int = 256
    chips_per_run: int = 32768
    chip_seconds: float = 12.0
    gdal_cache_mb: int = 16
    ddp_steps: int = 10
    caps: dict[str, float] = field(default_factory=lambda: {
        "matmul": 30, "mae": 220, "mri": 70, "pointmae": 50, "chips": 110, "ddp": 120})

    @classmethod
    def real(cls) -> Plan:
        return cls(device="cuda")

    @classmethod
    def dry(cls) -> Plan:
        """Every part on CPU at toy sizes: proves the code paths, measures nothing of interest
        (fp32: bf16 autocast on a CPU without bf16 units is emulated and many times slower)."""
        return cls(device="cpu", precision="fp32", matmul_n=256, mae_size="nano", mae_image=32, mae_patch=8,
                   mae_batch=2, mae_warmup=1, mae_steps=2, compile_backend="eager", mri_size="tiny", mri_batch=1,
                   mri_image=32, mri_steps=2, point_batch=2, point_size="nano", point_points=64, point_groups=8,
                   point_group_size=8, point_steps=2, raster=512, raster_tile=256, chip_workers=[0, 1],
                   chip_batch=8, chips_per_run=32, chip_seconds=5.0, ddp_steps=2,
                   caps={"matmul": 30, "mae": 120, "mri": 120, "pointmae": 60, "chips": 60, "ddp": 90})


# ----------------------------------------------------------------------------- plumbing
class PartTimeout(Exception):
    """A part ran past its share of the time budget."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `PartTimeout` in this (main) thread after `seconds`, and again every second after
    that: an exception raised while Python runs a finaliser or weakref callback is printed and
    dropped, so a single alarm could be lost."""
    def handler(signum: int, frame: Any) -> None:
        raise PartTimeout(f"ran past its time share of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01), 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def error_text(err: BaseException) -> str:
    """The error and the last frames of its traceback (enough to find it, short enough to read)."""
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    text = "".join(lines)
    return text if len(text) < 3000 else "..." + text[-3000:]


def script_args(module: ModuleType, **overrides: Any) -> argparse.Namespace:
    """A benchmark script's own command-line defaults with `overrides` applied, so its build
    functions get every option they read (options added to the script later included).

    Uses the script's `parser()` when it has one; otherwise runs its `main()` up to its
    `parse_args` call and takes the parser from there. An override the script does not know is
    an error (a renamed option must not be silently ignored)."""
    if hasattr(module, "parser"):
        parser = module.parser()
    else:
        class Captured(Exception):
            pass

        original = argparse.ArgumentParser.parse_args
        seen: list[argparse.ArgumentParser] = []

        def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
            seen.append(self)
            raise Captured

        argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
        try:
            module.main()
        except Captured:
            pass
        finally:
            argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
        if not seen:
            raise RuntimeError(f"{module.__name__}.main() did not parse a command line")
        parser = seen[0]
    namespace = parser.parse_args([])
    unknown = sorted(set(overrides) - set(vars(namespace)))
    if unknown:
        raise KeyError(f"{module.__file__} has no options {unknown}")
    vars(namespace).update(overrides)
    return namespace


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def time_steps(step: Callable[[], Any], device: str, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def peak_mib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def held_mib(device: str) -> float | None:
    """Memory still allocated before a model is built (anything an earlier part left behind is
    part of the next peak)."""
    import torch

    return torch.cuda.memory_allocated() / 2**20 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    import gc

    import torch

    torch._dynamo.reset()  # compiled graphs keep their modules (and their memory) alive
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ----------------------------------------------------------------------------- steps
def training_step(model: Any, batch: dict[str, Any], device: str, precision: str, lr: float = 1.5e-4,
                  betas: tuple[float, float] = (0.9, 0.95)) -> Callable[[], Any]:
    """forward + backward + the kit's AdamW (fused, no decay on norms/biases/tokens) on `batch`."""
    import torch

    from maekit.optim import build_adamw, param_groups

    module = getattr(model, "module", model)  # DDP wraps the model
    opt = build_adamw(param_groups(module, 0.05, module.no_weight_decay()), lr, betas)

    def step() -> Any:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def image_mae(plan: Plan, device: str) -> tuple[Any, dict[str, Any]]:
    """The ViT MAE of the kit on RGB images (MAE's recipe: mask 0.75, normalised-pixel loss, the
    size's default decoder: 512 x 8 for ViT-B) and a batch of random images."""
    import torch

    from maekit.domains.multispectral.adapter import MultispectralAdapter
    from maekit.pretrain import MaskedAutoencoder, RandomMasking

    model = MaskedAutoencoder(MultispectralAdapter(preset="rgb", patch_size=plan.mae_patch), plan.mae_size,
                              masking=RandomMasking(0.75)).to(device)
    images = torch.rand(plan.mae_batch, 3, plan.mae_image, plan.mae_image, device=device)
    return model, {"image": images}


def count_flops(step: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- parts
def part_matmul(plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    import torch

    n, dtype = plan.matmul_n, torch.bfloat16 if plan.precision == "bf16" else torch.float32
    x = torch.randn(n, n, device=plan.device, dtype=dtype)
    y = torch.randn(n, n, device=plan.device, dtype=dtype)
    times = time_steps(lambda: x @ y, plan.device, 3, 10)
    rate = 2 * n**3 / statistics.median(times)
    return {"n": n, "dtype": plan.precision, "tflops": rate / 1e12}


def part_mae(plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    import torch

    matmul = results["parts"].get("matmul", {}).get("tflops")
    out: dict[str, Any] = {"size": plan.mae_size, "image": plan.mae_image, "patch": plan.mae_patch,
                           "batch": plan.mae_batch, "precision": plan.precision, "mask_ratio": 0.75,
                           "steps": plan.mae_steps}
    flops = None
    for variant in ("eager", "compiled"):
        say(f"mae: {variant}")
        reset_peak(plan.device)
        try:
            torch.manual_seed(0)
            model, batch = image_mae(plan, plan.device)
            step = training_step(model, batch, plan.device, plan.precision)
            row: dict[str, Any] = {}
            if flops is None:
                flops = count_flops(step)
                out["gflop_per_step"] = flops / 1e9
            if variant == "compiled":
                row["backend"] = plan.compile_backend
                model.encoder = torch.compile(model.encoder, backend=plan.compile_backend)
                model.decoder = torch.compile(model.decoder, backend=plan.compile_backend)
                start = time.perf_counter()
                step()
                sync(plan.device)
                row["first_step_s"] = time.perf_counter() - start  # compilation included
            times = time_steps(step, plan.device, plan.mae_warmup, plan.mae_steps)
            seconds = statistics.median(times)
            row.update(ms=seconds * 1e3, images_per_s=plan.mae_batch / seconds,
                       achieved_tflops=flops / seconds / 1e12, peak_mib=peak_mib(plan.device))
            row["mfu"] = row["achieved_tflops"] / matmul if matmul else None
            out[variant] = row
        except PartTimeout:
            raise
        except Exception as err:  # noqa: BLE001 - recorded, and the other variant still runs
            out[variant] = {"error": error_text(err)}
        finally:
            model = batch = step = None  # free before the next variant
    rates = [out[v]["images_per_s"] for v in ("eager", "compiled") if "images_per_s" in out[v]]
    if not rates:
        raise RuntimeError("neither the eager nor the compiled MAE step ran: " + out["eager"].get("error", ""))
    out["best_images_per_s"] = max(rates)
    return out


def part_mri(plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    import torch

    mri_step = importlib.import_module("mri_step")
    a = script_args(mri_step, device=plan.device, size=plan.mri_size, precision=plan.precision,
                    batch=plan.mri_batch, image=plan.mri_image, steps=plan.mri_steps)
    out: dict[str, Any] = {"size": a.size, "batch": a.batch, "volume": f"4x{a.image}^3", "patch": a.patch,
                           "precision": a.precision, "steps": a.steps}
    names = ["maekit"]
    if importlib.util.find_spec("monai") is not None:
        names.append("monai")
    else:
        out["monai"] = {"skipped": "MONAI is not installed (pip install 'maekit[medical]')"}
    for name in names:
        say(f"mri: {name}")
        reset_peak(plan.device)
        held = held_mib(plan.device)
        try:
            torch.manual_seed(0)
            step = mri_step.build(name, a)
            volume, present = mri_step.inputs(a)
            times = time_steps(lambda: step(volume, present), plan.device, 2, a.steps)
            out[name] = {"ms": median_ms(times), "peak_mib": peak_mib(plan.device), "held_before_mib": held}
        except PartTimeout:
            raise
        except Exception as err:  # noqa: BLE001
            if name == "maekit":
                raise
            out[name] = {"error": error_text(err)}
        finally:
            step = volume = present = None
    if "ms" in out.get("monai", {}):
        out["time_vs_monai"] = out["maekit"]["ms"] / out["monai"]["ms"]
        if out["maekit"]["peak_mib"] is not None:
            out["memory_vs_monai"] = out["maekit"]["peak_mib"] / out["monai"]["peak_mib"]
    if out["maekit"]["peak_mib"] is None:
        out["memory_note"] = "CPU: max_memory_allocated is CUDA's; benchmarks/mri_step.py measures CPU memory"
    return out


def point_config(plan: Plan) -> dict[str, Any]:
    """configs/pointcloud/pretrain.yaml's model, with the plan's overrides (dry run: toy sizes)."""
    import yaml

    path = ROOT / "configs" / "pointcloud" / "pretrain.yaml"
    model = yaml.safe_load(path.read_text())["model"]["init_args"]
    adapter = dict(model["adapter"].get("init_args", {}))
    if plan.point_groups is not None:
        adapter.update(groups=plan.point_groups, group_size=plan.point_group_size)
    masking = model["masking"]
    same_size = plan.point_size is None
    return {"config": str(path.relative_to(ROOT)), "adapter_class": model["adapter"]["class_path"], "adapter": adapter,
            "size": model["size"] if same_size else plan.point_size,
            "decoder": [model.get("decoder_width"), model.get("decoder_depth"), model.get("decoder_heads")]
            if same_size else [None, None, None],
            "masking_class": masking["class_path"], "masking": masking.get("init_args", {}),
            "lr": float(model.get("lr", 1e-3)), "betas": tuple(model.get("betas", (0.9, 0.999)))}


def instantiate(class_path: str, kwargs: dict[str, Any]) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def part_pointmae(plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    import torch

    from maekit.pretrain import MaskedAutoencoder

    cfg = point_config(plan)
    torch.manual_seed(0)
    adapter = instantiate(cfg["adapter_class"], cfg["adapter"])
    model = MaskedAutoencoder(adapter, cfg["size"], *cfg["decoder"],
                              masking=instantiate(cfg["masking_class"], cfg["masking"])).to(plan.device)
    points = torch.rand(plan.point_batch, plan.point_points, 3, device=plan.device) * 2 - 1
    step = training_step(model, {"points": points}, plan.device, plan.precision, cfg["lr"], cfg["betas"])
    reset_peak(plan.device)
    times = time_steps(step, plan.device, 2, plan.point_steps)
    grouping = time_steps(lambda: adapter.tokenize({"points": points}), plan.device, 1, plan.point_steps)
    seconds = statistics.median(times)
    return {"config": cfg["config"], "size": cfg["size"], "batch": plan.point_batch, "points": plan.point_points,
            "groups": cfg["adapter"].get("groups"), "group_size": cfg["adapter"].get("group_size"),
            "precision": plan.precision, "ms": seconds * 1e3, "clouds_per_s": plan.point_batch / seconds,
            "grouping_ms": median_ms(grouping), "peak_mib": peak_mib(plan.device)}


def part_chips(plan: Plan, results: dict[str, Any]) -> dict[str, Any]:
    # a small GDAL block cache, set before the first read, so most chips decode their tiles as an
    # epoch over a corpus larger than memory does (a warm cache would flatter the loader)
    os.environ["GDAL_CACHEMAX"] = str(plan.gdal_cache_mb)
    from maekit.data.base import worker_count
    from maekit.domains.multispectral.samples import make_large_raster
    from maekit.domains.multispectral.windows import RasterDataModule

    demand = results["parts"].get("mae", {}).get("best_images_per_s")
    chip = plan.mae_image
    work = Path(tempfile.mkdtemp(prefix="gpu_check_chips_"))
    out: dict[str, Any] = {"raster": f"{plan.raster}x{plan.raster}x4 uint8, {plan.raster_tile}-pixel tiles, deflate",
                           "chip": chip, "bands": "R,G,B", "loader_batch": plan.chip_batch,
                           "gdal_cache_mib": plan.gdal_cache_mb, "demand_images_per_s": demand, "runs": []}
    try:
        start = time.perf_counter()
        path = make_large_raster(work / "scene.tif", size=plan.raster, tile=plan.raster_tile)
        out["write_s"] = time.perf_counter() - start
        for requested in plan.chip_workers:
            say(f"chips: {requested} workers")
            used = worker_count(requested)
            # the batches the workers prefetch while the first one is made come out at once:
            # timing starts after them, so the rate is the loader's steady state
            warm = max(1, 2 * used)
            dm = RasterDataModule(str(path), preset="naip", bands=["R", "G", "B"], size=chip,
                                  samples_per_epoch=warm * plan.chip_batch + plan.chips_per_run,
                                  batch_size=plan.chip_batch, num_workers=requested)
            dm.setup("fit")
            loader = dm.train_dataloader()
            start = time.perf_counter()
            batches = iter(loader)
            for _ in range(warm):
                next(batches)["image"].to(plan.device)
            startup = time.perf_counter() - start
            count, start = 0, time.perf_counter()
            for batch in batches:
                batch["image"].to(plan.device, non_blocking=True)
                count += len(batch["image"])
                if time.perf_counter() - start > plan.chip_seconds:
                    break
            sync(plan.device)
            elapsed = time.perf_counter() - start
            del batches, loader
            rate = count / elapsed if count else None
            out["runs"].append({"workers": requested, "workers_used": used, "chips": count,
                                "chips_per_s": rate, "warmup_batches": warm, "startup_s": startup,
                                "vs_demand": rate / demand if rate and demand else None})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = [r["chips_per_s"] for r in out["runs"] if r["chips_per_s"]]
    out["best_chips_per_s"] = max(rates) if rates else None
    if demand and out["best_chips_per_s"]:
        out["best_vs_demand"] = out["best_chips_per_s"] / demand
    else:
        out["demand_note"] = "the MAE part measured no images/s, so there is no demand to compare with"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_ddp(plan: Plan, results: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """Two ranks of the MAE step under DDP: NCCL over two GPUs in fresh processes; in the dry run,
    gloo over two CPU processes forked from this one (no second import of torch and the kit)."""
    import multiprocessing

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not dry_run and gpus < 2:
        return {"skipped": f"torch.cuda.device_count() is {gpus}: a 2-process DDP step needs 2 GPUs"}
    backend = "gloo" if dry_run else "nccl"
    port = free_port()
    if backend == "gloo":
        ctx = multiprocessing.get_context("fork")
        queue = ctx.SimpleQueue()
        forked = [ctx.Process(target=ddp_worker, args=(rank, backend, plan, port, queue)) for rank in range(2)]
        try:
            for proc in forked:
                proc.start()
            for proc in forked:
                proc.join()
        finally:
            for proc in forked:
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        codes = [proc.exitcode for proc in forked]
        if any(codes) or queue.empty():
            raise RuntimeError(f"DDP ranks exited with {codes} (their errors are on stderr above)")
        row = queue.get()
    else:
        procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--ddp-worker", str(rank),
                                   "--backend", backend, "--port", str(port), "--plan", json.dumps(asdict(plan))],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
        outputs = []
        try:
            for proc in procs:
                stdout, stderr = proc.communicate()
                outputs.append((proc.returncode, stdout, stderr))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for rank, (code, stdout, stderr) in enumerate(outputs):
            if code != 0:
                raise RuntimeError(f"DDP rank {rank} exited with {code}: {stderr[-2000:]}")
        row = json.loads(outputs[0][1].strip().splitlines()[-1])
    row["backend"] = backend
    if dry_run:
        row["note"] = "dry run: 2 CPU processes over gloo (proves the code path only)"
    single = results["parts"].get("mae", {}).get("eager", {}).get("images_per_s")
    if single:
        row["scaling_vs_one_process"] = row["images_per_s"] / (2 * single)
    return row


def ddp_worker(rank: int, backend: str, plan: Plan, port: int, queue: Any = None) -> None:
    """One rank of the DDP part: the MAE step (eager) under DistributedDataParallel. Rank 0
    reports the step time (the slower rank's) and the images/s of both ranks together: put on
    `queue`, or printed as the last stdout line."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if backend == "gloo":
        torch.set_num_threads(1)
    # a rank whose peer died gives up instead of waiting for it forever
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=plan.caps["ddp"]))
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    torch.manual_seed(rank)
    model, batch = image_mae(plan, device)
    ddp = DistributedDataParallel(model, device_ids=[rank] if backend == "nccl" else None)
    step = training_step(ddp, batch, device, plan.precision)
    times = time_steps(step, device, plan.mae_warmup, plan.ddp_steps)
    seconds = torch.tensor(statistics.median(times), device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the slower rank paces the step
    dist.destroy_process_group()
    if rank == 0:
        row = {"world_size": 2, "batch_per_rank": plan.mae_batch, "ms": float(seconds) * 1e3,
               "images_per_s": 2 * plan.mae_batch / float(seconds)}
        if queue is not None:
            queue.put(row)
        else:
            print(json.dumps(row))


# ----------------------------------------------------------------------------- report
def environment(plan: Plan, dry_run: bool) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
        else None, "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda_available": torch.cuda.is_available(), "gpu_count": torch.cuda.device_count(),
        "device": plan.device, "dry_run": dry_run,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                   compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(Exception):
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    with contextlib.suppress(Exception):
        env["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True, timeout=10).stdout.strip() or None
    return env


def fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def status_of(part: dict[str, Any]) -> str | None:
    """'error: ...' or 'skipped: ...' for a part that did not measure, else None."""
    if "error" in part:
        return "error: " + part["error"].strip().splitlines()[-1][:200]
    if "skipped" in part:
        return "skipped: " + part["skipped"]
    return None


def markdown(results: dict[str, Any]) -> str:
    env, parts, plan = results["env"], results["parts"], results["plan"]
    rows: list[tuple[str, str, str]] = []
    where = env.get("gpu") or f"CPU ({env['cpus_usable']} usable cores)"
    rows.append(("environment", where, f"torch {env['torch']}, CUDA {env['cuda']}, {env['cpu_count']} CPUs"
                 + (", DRY RUN (toy sizes on CPU)" if env["dry_run"] else "")))

    def add(name: str, config: str, render: Callable[[dict[str, Any]], str]) -> None:
        part = parts.get(name)
        if part is None:
            rows.append((name, config, "not run"))
            return
        note = status_of(part)
        if note is None:
            try:
                note = render(part)
            except (KeyError, TypeError) as err:
                note = f"incomplete result ({err})"
        rows.append((name, config, note))

    add("matmul", f"{plan['precision']} square matmul",
        lambda p: f"{p['tflops']:.2f} TFLOP/s (n = {p['n']})")
    for variant in ("eager", "compiled"):
        def mae_row(p: dict[str, Any], variant: str = variant) -> str:
            r = p[variant]
            if "error" in r:
                return "error: " + r["error"].strip().splitlines()[-1][:200]
            text = (f"{r['images_per_s']:.0f} images/s, {r['ms']:.1f} ms/step, {r['achieved_tflops']:.1f} TFLOP/s, "
                    f"MFU {fmt(r['mfu'] and 100 * r['mfu'], '.1f', ' %')}, peak {fmt(r['peak_mib'], '.0f', ' MiB')}")
            if "first_step_s" in r:
                text += f", first step (compiling, {r['backend']}) {r['first_step_s']:.0f} s"
            return text
        add("mae", f"ViT-{plan['mae_size']}/{plan['mae_patch']} MAE {variant}, {plan['precision']}, "
            f"batch {plan['mae_batch']} x 3x{plan['mae_image']}^2", mae_row)

    def mri_row(p: dict[str, Any]) -> str:
        text = []
        for name in ("maekit", "monai"):
            r = p.get(name, {})
            if "ms" in r:
                text.append(f"{name} {r['ms']:.0f} ms, peak {fmt(r['peak_mib'], '.0f', ' MiB')}")
            elif r:
                text.append(f"{name} " + (status_of(r) or "?"))
        if "time_vs_monai" in p:
            text.append(f"time {p['time_vs_monai']:.2f}x MONAI's")
        if "memory_vs_monai" in p:
            text.append(f"memory {p['memory_vs_monai']:.2f}x MONAI's")
        return "; ".join(text)

    add("mri", f"4 modalities x {plan['mri_image']}^3, {plan['mri_size']}, batch {plan['mri_batch']}, "
        f"{plan['precision']}", mri_row)
    add("pointmae", f"Point-MAE ({plan['point_size'] or 'the config size'}), batch {plan['point_batch']} x "
        f"{plan['point_points']} points, {plan['precision']}",
        lambda p: f"{p['ms']:.1f} ms/step, {p['clouds_per_s']:.0f} clouds/s, grouping (FPS + kNN) "
                  f"{p['grouping_ms']:.1f} ms, peak {fmt(p['peak_mib'], '.0f', ' MiB')}")

    def chips_row(p: dict[str, Any]) -> str:
        runs = ", ".join(f"{r['workers']} workers ({r['workers_used']} used) {fmt(r['chips_per_s'], '.0f')}"
                         for r in p["runs"])
        return (f"chips/s: {runs}; MAE step demand {fmt(p['demand_images_per_s'], '.0f')} images/s; "
                f"best {fmt(p.get('best_vs_demand'), '.2f', 'x')} the demand")

    add("chips", f"RasterDataModule, {plan['mae_image']}^2 RGB windows of a {plan['raster']}^2 GeoTIFF, "
        f"batch {plan['chip_batch']}, GDAL cache {plan['gdal_cache_mb']} MiB", chips_row)
    add("ddp", f"2 processes x batch {plan['mae_batch']}, MAE step eager",
        lambda p: f"{p['images_per_s']:.0f} images/s, {p['ms']:.1f} ms/step ({p['backend']})"
                  + (f", {100 * p['scaling_vs_one_process']:.0f} % of 2x one process"
                     if "scaling_vs_one_process" in p else ""))
    lines = ["| part | configuration | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c.replace('|', '/')} |" for a, b, c in rows]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's GPU-side goals: the check fits its 8 minutes; the loader keeps up with the step."""
    rows = [{"target": "GPU check wall time (s)", "value": round(results["wall_s"], 1), "goal": "<= 480",
             "met": results["wall_s"] <= 480 and not results["env"]["dry_run"]}]
    chips = results["parts"].get("chips", {})
    if chips.get("best_vs_demand") is not None:
        rows.append({"target": "chip loader vs MAE step demand", "value": round(chips["best_vs_demand"], 2),
                     "goal": ">= 1.0x", "met": chips["best_vs_demand"] >= 1.0})
    return rows


def write_json(path: Path, results: dict[str, Any]) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=1))
    partial.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "gpu_results"), help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--dry-run", action="store_true", help="every part on CPU at toy sizes, in well under a minute")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all parts together (default 450; dry run 400: the caps only stop a hang)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a size of the plan, e.g. --set mae_batch=128 (repeatable)")
    p.add_argument("--ddp-worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--backend", default="nccl", help=argparse.SUPPRESS)
    p.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's maekit; the other benchmark scripts by name
    if a.ddp_worker is not None:
        ddp_worker(a.ddp_worker, a.backend, Plan(**json.loads(a.plan)), a.port)
        return
    parts = [s.strip() for s in a.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; the parts are {', '.join(PARTS)}")
    plan = Plan.dry() if a.dry_run else Plan.real()
    apply_overrides(plan, a.set, p)
    import torch

    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible to torch (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or with --dry-run for the CPU smoke run", file=sys.stderr)
        sys.exit(2)
    if a.dry_run:
        torch.set_num_threads(1)  # toy kernels on a shared CPU: more threads only spin and wait
    budget = a.budget if a.budget is not None else (400.0 if a.dry_run else 450.0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    started = time.perf_counter()
    deadline = started + budget
    results: dict[str, Any] = {"tool": "benchmarks/gpu_check.py", "started": datetime.datetime.now().isoformat(
        timespec="seconds"), "budget_s": budget, "plan": asdict(plan), "env": environment(plan, a.dry_run),
        "parts": {}}
    say(f"{results['env'].get('gpu', 'CPU')}, torch {torch.__version__}, budget {budget:.0f} s"
        + (" (dry run)" if a.dry_run else ""))
    for name in PARTS:
        if name not in parts:
            continue
        left = deadline - time.perf_counter()
        share = min(plan.caps[name], left)
        if share < 5:
            results["parts"][name] = {"skipped": f"time budget spent ({budget:.0f} s)"}
            say(f"{name}: skipped, time budget spent")
            continue
        say(f"{name}: start (up to {share:.0f} s)")
        start = time.perf_counter()
        try:
            with time_limit(share):
                if name == "ddp":
                    row = part_ddp(plan, results, a.dry_run)
                else:
                    row = PART_FUNCTIONS[name](plan, results)
        except Exception as err:  # noqa: BLE001 - one part's failure is recorded; the next part runs
            row = {"error": error_text(err)}
            say(f"{name}: FAILED: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
        row["seconds"] = time.perf_counter() - start
        results["parts"][name] = row
        results["wall_s"] = time.perf_counter() - started
        write_json(json_path, results)
        if "error" not in row:
            say(f"{name}: done in {row['seconds']:.1f} s" + (f" ({row['skipped']})" if "skipped" in row else ""))
    results["wall_s"] = time.perf_counter() - started
    results["markdown"] = markdown(results)
    results["targets"] = targets(results)
    write_json(json_path, results)
    md_path.write_text(f"# GPU check ({results['started']})\n\n{results['markdown']}\n")
    print(results["markdown"])
    print(f"wrote {json_path} and {md_path}")
    failed = [n for n, r in results["parts"].items() if "error" in r]
    print(json.dumps({"targets": results["targets"], "markdown": results["markdown"], "json": str(json_path),
                      "failed_parts": failed}))
    sys.exit(1 if failed else 0)


PART_FUNCTIONS: dict[str, Callable[[Plan, dict[str, Any]], dict[str, Any]]] = {
    "matmul": part_matmul, "mae": part_mae, "mri": part_mri, "pointmae": part_pointmae, "chips": part_chips}


def apply_overrides(plan: Plan, pairs: list[str], parser: argparse.ArgumentParser) -> None:
    """`--set FIELD=VALUE`, parsed as JSON (numbers, lists) or taken as a string."""
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(plan, key) or key == "caps":
            parser.error(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of "
                         f"{', '.join(k for k in asdict(plan) if k != 'caps')}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        setattr(plan, key, parsed)


if __name__ == "__main__":
    main()
