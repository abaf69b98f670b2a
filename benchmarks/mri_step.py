"""A 4-modality 128^3 MRI pretraining step: maekit (one token per modality per patch, Dirichlet
budget split, missing modalities absent) vs MONAI's `MaskedAutoEncoderViT` fed the 4 modalities
as channels (one token per patch). Speed interleaved in one process; peak memory per model
(CUDA: `max_memory_allocated`; CPU: peak resident memory of a fresh subprocess per model).
maekit runs without and with `checkpoint_blocks` (activation checkpointing of its blocks), each
as the Lightning module's training step runs it (`scored_only`); issue 15's targets (memory
<= 0.6x MONAI's at time <= 1.3x, one configuration for both) are read off the fastest of the two
that is within the memory goal.

    python benchmarks/mri_step.py                    # CPU, small width
    python benchmarks/mri_step.py --checkpoint-blocks off --mask-ratio 0.9375   # MONAI's visible count
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


#: the maekit run with activation checkpointing of its blocks
CHECKPOINTED = "maekit checkpoint_blocks"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(name: str, a: argparse.Namespace) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    autocast = dict(device_type=a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    spec = SIZES[a.size]
    if name.startswith("maekit"):
        model = MaskedAutoencoder(VolumeAdapter(patch_size=a.patch, norm_pix_loss=False), a.size, a.decoder_width,
                                  a.decoder_depth, a.decoder_heads, GroupDirichletMasking(a.mask_ratio, 4),
                                  checkpoint_blocks=name == CHECKPOINTED).to(a.device)
        opt = build_adamw(param_groups(model, 0.05, model.no_weight_decay()), 1e-4, (0.9, 0.95))

        def step(volume: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
            with torch.autocast(**autocast):
                # as the Lightning module's training step: decode only what the loss needs
                loss = model({"image": volume, "modality_present": present}, scored_only=True).loss
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
    p.add_argument("--checkpoint-blocks", default="both", choices=["off", "on", "both"],
                   help="maekit without / with activation checkpointing of its blocks, or both (default)")
    p.add_argument("--mask-ratio", type=float, default=0.75,
                   help="maekit's masking ratio (its visible budget is split over the 4 modalities; MONAI keeps "
                        "0.75 of one token per patch, so 0.9375 gives maekit MONAI's visible token count)")
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
    ours = {"off": ["maekit"], "on": [CHECKPOINTED], "both": ["maekit", CHECKPOINTED]}[a.checkpoint_blocks]
    names = ours + ["monai"]
    # memory first: a child's peak-RSS counter starts at its parent's, so the parent stays small
    memory = {name: peak_memory_mb(name, a) for name in names}
    volume, present = inputs(a)
    steps = {name: build(name, a) for name in names}
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
    ms = {name: statistics.median(times[name]) * 1e3 for name in names}
    lines = [f"device={a.device} size={a.size} precision={a.precision} batch={a.batch} volume=4x{a.image}^3 "
             f"patch={a.patch} decoder={a.decoder_width}x{a.decoder_depth} maekit mask ratio={a.mask_ratio} "
             f"threads={torch.get_num_threads()}", "",
             "| model | tokens per case | visible per case | median ms/step | x MONAI time | peak memory MiB | "
             "x MONAI memory |", "|---|---|---|---|---|---|---|"]
    result: dict[str, object] = {}
    for name in names:
        count = tokens if name == "monai" else 4 * tokens
        kept = round(count * (0.25 if name == "monai" else 1 - a.mask_ratio))
        result[name] = {"ms": ms[name], "peak_mib": memory[name], "tokens": count, "visible": kept}
        lines.append(f"| {name} | {count} | {kept} | {ms[name]:.0f} | {ms[name] / ms['monai']:.2f} | "
                     f"{memory[name]:.0f} | {memory[name] / memory['monai']:.2f} |")
    # one configuration must meet both goals: the fastest of maekit's runs within the memory
    # goal (checkpointing only where it is needed for that), else the one with least memory
    within = [name for name in ours if memory[name] / memory["monai"] <= 0.6]
    judged = min(within, key=ms.__getitem__) if within else min(ours, key=memory.__getitem__)
    memory_ratio, time_ratio = memory[judged] / memory["monai"], ms[judged] / ms["monai"]
    why = "the fastest run within the memory goal" if within else "no run within the memory goal; least memory"
    lines += ["", f"targets judged on `{judged}` ({why}): memory {memory_ratio:.2f}x MONAI's (goal <= 0.6x), "
                  f"time {time_ratio:.2f}x (goal <= 1.3x)"]
    markdown = "\n".join(lines)
    print(markdown)
    result["targets"] = [
        {"target": "MRI step memory vs MONAI", "value": round(memory_ratio, 3), "goal": "<= 0.6x",
         "met": bool(memory_ratio <= 0.6)},
        {"target": "MRI step time vs MONAI", "value": round(time_ratio, 3), "goal": "<= 1.3x",
         "met": bool(time_ratio <= 1.3)},
    ]
    result["markdown"] = markdown
    print(json.dumps(result))


if __name__ == "__main__":
    main()
