"""A 4-modality 128^3 MRI pretraining step: maekit (one token per modality per patch, Dirichlet
budget split, missing modalities absent) vs MONAI's `MaskedAutoEncoderViT` fed the 4 modalities
as channels (one token per patch). Speed interleaved in one process; peak memory per model
(CUDA: `max_memory_allocated`; CPU: peak resident memory of a fresh subprocess per model).

    python benchmarks/mri_step.py                    # CPU, small width
    python benchmarks/mri_step.py --device cuda --size base --batch 4 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from maekit.backbones import SIZES
from maekit.domains import VolumeAdapter
from maekit.optim import build_adamw, param_groups
from maekit.pretrain import GroupDirichletMasking, MaskedAutoencoder


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(name: str, a: argparse.Namespace) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    autocast = dict(device_type=a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    spec = SIZES[a.size]
    if name == "maekit":
        model = MaskedAutoencoder(VolumeAdapter(patch_size=a.patch, norm_pix_loss=False), a.size, a.decoder_width,
                                  a.decoder_depth, a.decoder_heads, GroupDirichletMasking(0.75, 4)).to(a.device)
        opt = build_adamw(param_groups(model, 0.05, model.no_weight_decay()), 1e-4, (0.9, 0.95))

        def step(volume: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
            with torch.autocast(**autocast):
                loss = model({"image": volume, "modality_present": present}).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        return step
    from monai.networks.nets import MaskedAutoEncoderViT

    model = MaskedAutoEncoderViT(in_channels=4, img_size=a.image, patch_size=a.patch, hidden_size=spec.width,
                                 mlp_dim=4 * spec.width, num_layers=spec.depth, num_heads=spec.heads,
                                 masking_ratio=0.75, decoder_hidden_size=a.decoder_width,
                                 decoder_mlp_dim=4 * a.decoder_width, decoder_num_layers=a.decoder_depth,
                                 decoder_num_heads=a.decoder_heads, spatial_dims=3, qkv_bias=True).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    p = a.patch

    def step(volume: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        b, c, x, y, z = volume.shape
        target = volume.reshape(b, c, x // p, p, y // p, p, z // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        target = target.reshape(b, -1, p**3 * c)
        with torch.autocast(**autocast):
            pred, mask = model(volume)
        loss = (((pred.float() - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def inputs(a: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    volume = torch.randn(a.batch, 4, a.image, a.image, a.image, device=a.device)
    present = torch.ones(a.batch, 4, dtype=torch.bool, device=a.device)
    present[0, 0] = False  # one case lacks T1 (MONAI sees zeros there)
    volume[0, 0] = 0
    return volume, present


def peak_memory_mb(name: str, a: argparse.Namespace) -> float:
    """Peak memory of `steps` training steps of one model."""
    if a.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = build(name, a)
        volume, present = inputs(a)
        for _ in range(2):
            step(volume, present)
        sync(a.device)
        return torch.cuda.max_memory_allocated() / 2**20
    cmd = [sys.executable, __file__, "--memory-of", name] + [f"--{k.replace('_', '-')}={v}" for k, v in
                                                             vars(a).items() if k not in ("memory_of", "steps")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--image", type=int, default=128)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--decoder-width", type=int, default=96)  # MONAI: divisible by 6 in 3D
    p.add_argument("--decoder-depth", type=int, default=2)
    p.add_argument("--decoder-heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.memory_of:  # child process: build, run two steps, print peak RSS growth in MiB
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        volume, present = inputs(a)
        step = build(a.memory_of, a)
        for _ in range(2):
            step(volume, present)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
        return
    # memory first: a child's peak-RSS counter starts at its parent's, so the parent stays small
    memory = {name: peak_memory_mb(name, a) for name in ("maekit", "monai")}
    volume, present = inputs(a)
    steps = {name: build(name, a) for name in ("maekit", "monai")}
    for fn in steps.values():
        fn(volume, present)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(a.steps):
        for name, fn in steps.items():
            sync(a.device)
            t = time.perf_counter()
            fn(volume, present)
            sync(a.device)
            times[name].append(time.perf_counter() - t)
    tokens = (a.image // a.patch) ** 3
    print(f"device={a.device} size={a.size} precision={a.precision} batch={a.batch} volume=4x{a.image}^3 "
          f"patch={a.patch} decoder={a.decoder_width}x{a.decoder_depth}")
    print("| model | tokens per case | median ms/step | peak memory MiB |")
    print("|---|---|---|---|")
    result = {}
    for name, count in (("maekit", 4 * tokens), ("monai", tokens)):
        med = statistics.median(times[name]) * 1e3
        result[name] = {"ms": med, "peak_mib": memory[name], "tokens": count}
        print(f"| {name} | {count} | {med:.0f} | {memory[name]:.0f} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
