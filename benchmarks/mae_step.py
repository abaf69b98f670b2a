"""One MAE training step: maekit vs MONAI's MaskedAutoEncoderViT, interleaved in one process.

Both models get the same configuration (image size, patch, widths, depths, heads, mask ratio,
batch) and the same loss (MSE on masked patches); a step is forward + backward + AdamW. maekit
is timed twice: with the optimiser its Lightning module uses (fused AdamW) and with torch's
default AdamW, the one the MONAI step uses, so the model-only difference shows too, and once
more in the other precision (bf16 autocast, as Lightning's `bf16-mixed`, vs fp32) for the
bf16 / fp32 step ratio. Also reports achieved FLOP/s against a plain matmul measured on the
same machine. The last stdout line is one JSON object with the issue-15 `targets` and the
`markdown` table; `--profile` prints torch.profiler's top ops instead.

    python benchmarks/mae_step.py                     # CPU, ViT-Tiny-sized, batch 8
    python benchmarks/mae_step.py --device cuda --size base --precision bf16 --batch 256
    python benchmarks/mae_step.py --profile --threads 1 --steps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from maekit.backbones import SIZES
from maekit.optim import build_adamw, param_groups
from maekit.domains import MultispectralAdapter
from maekit.pretrain import MaskedAutoencoder, RandomMasking


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build_maekit(a: argparse.Namespace, kit_optimizer: bool = True, precision: str | None = None,
                 compiled: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """maekit's step; with `kit_optimizer` the optimiser the Lightning module configures (fused
    AdamW, no decay on norms/biases/tokens), else torch's default AdamW like the MONAI step.
    `precision` (default the benchmark's) is fp32 or bf16 autocast, as Lightning's bf16-mixed.
    `compiled`: the encoder and decoder through torch.compile (inductor), by the same call the
    Lightning module's `compile: true` makes (`MaskedAutoencoder.compile_stacks`)."""
    precision = precision or a.precision
    adapter = MultispectralAdapter(bands=[f"c{i}" for i in range(a.channels)],
                                   groups=[[f"c{i}" for i in range(a.channels)]], patch_size=a.patch,
                                   norm_pix_loss=False)
    model = MaskedAutoencoder(adapter, a.size, a.decoder_width, a.decoder_depth, a.decoder_heads,
                              RandomMasking(a.mask_ratio)).to(a.device)
    if compiled:
        model.compile_stacks("inductor")
    if kit_optimizer:
        opt = build_adamw(param_groups(model, 0.05, model.no_weight_decay()), 1e-4, (0.9, 0.95))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))

    def step(images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model({"image": images}, scored_only=True).loss  # as the Lightning module's training step
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def build_monai(a: argparse.Namespace, compiled: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """MONAI's MaskedAutoEncoderViT step; `compiled`: its encoder and decoder block stacks through
    torch.compile (inductor), the counterpart of maekit's `compile: true`."""
    from monai.networks.nets import MaskedAutoEncoderViT

    spec = SIZES[a.size]
    model = MaskedAutoEncoderViT(
        in_channels=a.channels, img_size=a.image, patch_size=a.patch, hidden_size=spec.width,
        mlp_dim=4 * spec.width, num_layers=spec.depth, num_heads=spec.heads, masking_ratio=a.mask_ratio,
        decoder_hidden_size=a.decoder_width, decoder_mlp_dim=4 * a.decoder_width,
        decoder_num_layers=a.decoder_depth, decoder_num_heads=a.decoder_heads, spatial_dims=2,
        qkv_bias=True).to(a.device)
    if compiled:
        model.blocks = torch.compile(model.blocks)
        model.decoder_blocks = torch.compile(model.decoder_blocks)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    p, c = a.patch, a.channels

    def step(images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        target = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            pred, mask = model(images)
        loss = (((pred.float() - target) ** 2).mean(-1) * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _cpu_flash_flops(query: torch.Size, key: torch.Size, value: torch.Size, *args: object,
                     out_shape: object = None, **kwargs: object) -> int:
    """FLOPs of the CPU flash-attention kernel: the same count torch gives the CUDA kernels."""
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward_flops(grad_out: torch.Size, query: torch.Size, key: torch.Size, value: torch.Size,
                              *args: object, out_shape: object = None, **kwargs: object) -> int:
    """Model FLOPs of its backward: the four matmuls of attention's gradient (torch's own formula
    for the CUDA kernels adds a fifth, the scores recomputed, which a plain-matmul attention
    such as MONAI's does not do; counting it would flatter the fused kernel)."""
    return 2 * sdpa_flop_count(query, key, value)


#: torch's FlopCounterMode counts the CUDA attention kernels but not the CPU flash kernel that
#: `scaled_dot_product_attention` runs on CPU (it would count the step's attention as 0 FLOPs,
#: while MONAI's attention, plain matmuls, is counted)
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward_flops,
}


def step_flops(step: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> int:
    """FLOPs of one step (forward, backward; the optimiser's elementwise work is not counted)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        step(images)
    return counter.get_total_flops()


def matmul_timer(device: str, precision: str, n: int) -> Callable[[], float]:
    """A function that times one plain n x n matmul in the benchmark's precision (seconds); the
    benchmark calls it in every round of steps, so the rate it compares with saw the same load."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(n, n, device=device, dtype=dtype)
    y = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        x @ y
    sync(device)

    def timed() -> float:
        sync(device)
        t = time.perf_counter()
        x @ y
        sync(device)
        return time.perf_counter() - t

    return timed


def profile_step(step: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, steps: int,
                 rows: int = 15) -> str:
    """torch.profiler's table of the ops that take most self time over `steps` steps (after one
    untimed step), with each op's share of the total."""
    from torch.profiler import ProfilerActivity, profile

    step(images)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if images.is_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(images)
    key = "self_device_time_total" if images.is_cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    lines = ["| op | calls/step | self ms/step | share |", "|---|---|---|---|"]
    for e in events[:rows]:
        lines.append(f"| {e.key} | {e.count / steps:.0f} | {getattr(e, key) / steps / 1e3:.1f} | "
                     f"{getattr(e, key) / total:.1%} |")
    lines.append(f"| (all ops) | | {total / steps / 1e3:.1f} | 100% |")
    return "\n".join(lines)


def _target(name: str, value: float, goal: float, unit: str) -> dict[str, object]:
    """One issue-15 target in the benchmarks' JSON convention."""
    text = f">= {goal:.0%}" if unit == "%" else f">= {goal}x"
    return {"target": name, "value": value, "goal": text, "met": bool(value >= goal)}


def _verdicts(targets: list[dict[str, object]]) -> str:
    """One plain sentence per target that eager maekit and `compile: true` do not meet alike."""
    by_name = {str(t["target"]): t for t in targets}
    said = []
    for name, t in by_name.items():
        c = by_name.get(f"{name}, compile: true") if not name.endswith("compile: true") else None
        if c is None:
            continue
        who = {(True, True): "met by eager maekit and with compile: true",
               (False, True): "met only with compile: true, not by eager maekit",
               (True, False): "met by eager maekit, not with compile: true",
               (False, False): "met neither by eager maekit nor with compile: true"}[(bool(t["met"]), bool(c["met"]))]
        said.append(f"- target {name} ({t['goal']}): {who} ({t['value']:.3g} eager, {c['value']:.3g} compiled)")
    return "\n".join(said)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--decoder-width", type=int, default=128)
    p.add_argument("--decoder-depth", type=int, default=4)
    p.add_argument("--decoder-heads", type=int, default=4)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--steps", type=int, default=15, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="also time maekit with `compile: true` (and MONAI with its block stacks compiled); "
                        "inductor's first, uncached compile takes minutes on a small CPU")
    p.add_argument("--no-monai", action="store_true")
    p.add_argument("--no-precision-ratio", action="store_true",
                   help="skip the maekit step in the other precision (bf16 autocast vs fp32)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler's top ops of maekit's step (and MONAI's unless --no-monai), then exit")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    images = torch.rand(a.batch, a.channels, a.image, a.image, device=a.device)
    if a.profile:
        profiled = {"maekit": build_maekit(a)}
        if a.compile:
            profiled["maekit, compiled"] = build_maekit(a, compiled=True)
        if not a.no_monai:
            profiled["monai"] = build_monai(a)
        tables = {}
        for name, fn in profiled.items():
            tables[name] = profile_step(fn, images, a.steps)
            print(f"top ops of {name}'s step ({a.steps} steps, self time):\n{tables[name]}\n")
        print(json.dumps({"config": vars(a), "profile": tables}))
        return
    other = "fp32" if a.precision == "bf16" else "bf16"
    steps = {"maekit": build_maekit(a)}
    if not a.no_monai:
        steps["maekit, plain AdamW"] = build_maekit(a, kit_optimizer=False)
        steps["monai"] = build_monai(a)
    if not a.no_precision_ratio:
        steps[f"maekit, {other}"] = build_maekit(a, precision=other)
    # the compiled steps do the same arithmetic as their eager rows, which count it (the counter
    # is a dispatch mode, which compiled graphs do not run under)
    flops = {name: step_flops(fn, images) for name, fn in steps.items()}
    compile_s: dict[str, float] = {}
    if a.compile:
        compiled_of = {"maekit, compiled": "maekit"} | ({} if a.no_monai else {"monai, compiled": "monai"})
        for name, eager in compiled_of.items():
            steps[name] = build_maekit(a, compiled=True) if eager == "maekit" else build_monai(a, compiled=True)
            sync(a.device)
            t = time.perf_counter()
            steps[name](images)  # compiles forward and backward
            sync(a.device)
            compile_s[name] = time.perf_counter() - t
            flops[name] = flops[eager]
    for _ in range(a.warmup):
        for fn in steps.values():
            fn(images)
    sync(a.device)
    n = 4096 if a.device == "cuda" else 1024
    matmul = matmul_timer(a.device, a.precision, n)
    times: dict[str, list[float]] = {name: [] for name in steps}
    matmul_times = []
    for _ in range(a.steps):  # interleaved, so drifts in machine load hit every row alike
        matmul_times += [matmul(), matmul()]
        for name, fn in steps.items():
            sync(a.device)
            t = time.perf_counter()
            fn(images)
            sync(a.device)
            times[name].append(time.perf_counter() - t)
    peak = 2 * n**3 / statistics.median(matmul_times)
    med = {name: statistics.median(t) for name, t in times.items()}
    result: dict[str, object] = {"config": {k: v for k, v in vars(a).items()}, "matmul_gflops": peak / 1e9,
                                 "torch_threads": torch.get_num_threads()}
    lines = [f"device={a.device} size={a.size} precision={a.precision} batch={a.batch} image={a.image} "
             f"patch={a.patch} decoder={a.decoder_width}x{a.decoder_depth} mask={a.mask_ratio} "
             f"threads={torch.get_num_threads()}",
             "",
             f"plain {a.precision} matmul ({n}^2, timed between the steps): {peak / 1e9:.1f} GFLOP/s",
             "",
             "| model | median ms/step | images/s | GFLOP/step | achieved GFLOP/s | of matmul |",
             "|---|---|---|---|---|---|"]
    for name in steps:
        rate = flops[name] / med[name]
        result[name] = {"ms": med[name] * 1e3, "images_per_s": a.batch / med[name],
                        "gflop_per_step": flops[name] / 1e9, "gflops": rate / 1e9, "fraction_of_matmul": rate / peak}
        if name in compile_s:
            result[name]["compile_s"] = compile_s[name]
        lines.append(f"| {name} | {med[name] * 1e3:.1f} | {a.batch / med[name]:.1f} | {flops[name] / 1e9:.1f} | "
                     f"{rate / 1e9:.1f} | {rate / peak:.1%} |")
    lines.append("")
    if compile_s:
        lines.append("compiled rows: encoder and decoder stacks through torch.compile (inductor), as `compile: true` "
                     "of the Lightning module; first step (compiling forward and backward): "
                     + ", ".join(f"{name} {s:.0f} s" for name, s in compile_s.items()))
        lines.append("")
    targets = []
    suffix = "" if a.precision == "fp32" else f" ({a.precision})"
    if "monai" in steps:
        for name in ("maekit", "maekit, plain AdamW"):
            ratio = med["monai"] / med[name]
            result[f"speedup_vs_monai ({name})"] = ratio
            lines.append(f"- {name}: {ratio:.2f}x the speed of MONAI MaskedAutoEncoderViT (median step-time ratio)")
        targets.append(_target("MAE step vs MONAI" + suffix, med["monai"] / med["maekit"], 1.4, "x"))
    fraction = flops["maekit"] / med["maekit"] / peak
    targets.append(_target(f"MAE step of {a.precision} matmul", fraction, 0.5, "%"))
    if "maekit, compiled" in steps:
        if "monai" in steps:
            ratio = med["monai"] / med["maekit, compiled"]
            lines.append(f"- maekit, compile: true: {ratio:.2f}x the speed of MONAI MaskedAutoEncoderViT (eager)")
            targets.append(_target("MAE step vs MONAI, compile: true" + suffix, ratio, 1.4, "x"))
            both = med["monai, compiled"] / med["maekit, compiled"]
            result["speedup_vs_monai (both compiled)"] = both
            lines.append(f"- maekit, compile: true: {both:.2f}x the speed of MONAI with its block stacks compiled too "
                         f"(compiling speeds MONAI up {med['monai'] / med['monai, compiled']:.2f}x, "
                         f"maekit {med['maekit'] / med['maekit, compiled']:.2f}x)")
        fraction = flops["maekit, compiled"] / med["maekit, compiled"] / peak
        targets.append(_target(f"MAE step of {a.precision} matmul, compile: true", fraction, 0.5, "%"))
        lines.append(_verdicts(targets))
    if f"maekit, {other}" in steps:
        bf16, fp32 = ("maekit", f"maekit, {other}") if a.precision == "bf16" else (f"maekit, {other}", "maekit")
        ratio = med[fp32] / med[bf16]
        lines.append(f"- maekit bf16-autocast step: {ratio:.2f}x the speed of its fp32 step")
        targets.append(_target(f"bf16 / fp32 step on {a.device.upper()}", ratio, 1.6, "x"))
    markdown = "\n".join(lines)
    print(markdown)
    result["targets"] = targets
    result["markdown"] = markdown
    print(json.dumps(result))


if __name__ == "__main__":
    main()
