"""Wavelength-conditioned patch embedding vs the fixed band-group one, interleaved in one process.

Speed: chips/s and tokens/s of tokenize + embed (forward; and forward + backward, as in
training) for `MultispectralAdapter` (the sentinel2 preset's 4 fixed band groups: one token
per group per patch) and `WavelengthAdapter` with one token per patch and one per spectral
group, on the same Sentinel-2-sized chips. The generated weights cost one small network per
batch, independent of the batch size.

Quality (`--quality`): the same nano MAE pretrained for `--steps` steps with each
`tokens_per_patch` mode on generated 13-band chips (mixtures of a few materials whose spectra
are sampled at the Sentinel-2 wavelengths), then the held-out per-band reconstruction error of
masked patches (normalised units, same masks for both) and the training time per step: the
measurement behind the adapter's default.

    python benchmarks/wavelength_embed.py                 # CPU, batch 16, 64x64 chips, patch 8
    python benchmarks/wavelength_embed.py --quality --steps 150
    python benchmarks/wavelength_embed.py --device cuda --batch 256 --width 768
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from maekit.domains.multispectral import MultispectralAdapter, WavelengthAdapter, load_sensor
from maekit.pretrain import MaskedAutoencoder, RandomMasking
from maekit.pretrain.masking import Visible


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def generated_chips(count: int, size: int, seed: int) -> torch.Tensor:
    """(count, 13, size, size) raw Sentinel-2-like DN: smooth mixtures of 4 material spectra."""
    g = torch.Generator().manual_seed(seed)
    wl = torch.tensor(load_sensor("sentinel2").wavelengths)
    centres = torch.tensor([500.0, 850.0, 1600.0, 2200.0])
    spectra = 0.05 + 0.4 * torch.exp(-((wl[None] - centres[:, None]) / 400.0) ** 2)  # (4, 13) reflectance
    spectra = spectra * (0.6 + 0.8 * torch.rand(4, 1, generator=g))
    coarse = torch.rand(count, 4, size // 8, size // 8, generator=g)
    abundance = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    abundance = abundance / abundance.sum(1, keepdim=True)
    reflectance = torch.einsum("bkhw,kc->bchw", abundance, spectra)
    return (reflectance + 0.005 * torch.randn(reflectance.shape, generator=g)).clamp(min=0) * 1e4


def embedders(a: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, int]]:
    """name -> (adapter built for a.width, tokens per chip)."""
    out: dict[str, tuple[torch.nn.Module, int]] = {}
    num = (a.image // a.patch) ** 2
    fixed = MultispectralAdapter(preset="sentinel2", patch_size=a.patch)
    fixed.build(a.width)
    out["fixed band groups (4 tokens/patch)"] = (fixed, 4 * num)
    for mode, per in (("one", 1), ("group", 3)):
        adapter = WavelengthAdapter(sensor="sentinel2", patch_size=a.patch, tokens_per_patch=mode)  # type: ignore[arg-type]
        adapter.build(a.width)
        out[f"wavelength, tokens_per_patch={mode} ({per} token{'s' if per > 1 else ''}/patch)"] = (adapter, per * num)
    return {k: (m.to(a.device).eval(), n) for k, (m, n) in out.items()}


def speed(a: argparse.Namespace) -> tuple[list[dict[str, object]], str]:
    images = generated_chips(a.batch, a.image, 0).to(a.device)
    models = embedders(a)
    steps: dict[str, Callable[[], None]] = {}
    for name, (adapter, _) in models.items():
        def forward(adapter: torch.nn.Module = adapter) -> None:
            with torch.no_grad():
                adapter.embed(adapter.tokenize({"image": images}))

        def train(adapter: torch.nn.Module = adapter) -> None:
            adapter.embed(adapter.tokenize({"image": images})).float().square().mean().backward()

        steps[f"{name}|forward"] = forward
        steps[f"{name}|forward+backward"] = train
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(a.repeats):  # interleaved: every variant once per round
        for key, fn in steps.items():
            sync(a.device)
            t = time.perf_counter()
            fn()
            sync(a.device)
            times[key].append(time.perf_counter() - t)
    rows = []
    lines = ["| embedding | pass | tokens/chip | median ms | chips/s | tokens/s |", "|---|---|---|---|---|---|"]
    for key, t in times.items():
        name, kind = key.split("|")
        per_chip = models[name][1]
        med = statistics.median(t)
        rows.append({"embedding": name, "pass": kind, "tokens_per_chip": per_chip, "ms": med * 1e3,
                     "chips_per_s": a.batch / med, "tokens_per_s": a.batch * per_chip / med})
        lines.append(f"| {name} | {kind} | {per_chip} | {med * 1e3:.2f} | {a.batch / med:.0f} | "
                     f"{a.batch * per_chip / med:,.0f} |")
    return rows, "\n".join(lines)


def quality(a: argparse.Namespace) -> tuple[list[dict[str, object]], str]:
    train = generated_chips(a.train_chips, 32, 1)
    held = generated_chips(32, 32, 2)
    rows, lines = [], ["| tokens_per_patch | held-out per-band MSE (masked, normalised) | ms/train step | "
                       "encoder tokens/chip |", "|---|---|---|---|"]
    for mode in ("one", "group"):
        torch.manual_seed(0)
        adapter = WavelengthAdapter(sensor="sentinel2", patch_size=8, tokens_per_patch=mode, code_width=64,  # type: ignore[arg-type]
                                    decoder_rank=8, norm_pix_loss=False, bandwidth_dropout=0.0)
        mae = MaskedAutoencoder(adapter, size="nano", decoder_width=64, decoder_depth=1, decoder_heads=2,
                                masking=RandomMasking(0.75))
        opt = torch.optim.AdamW(mae.parameters(), lr=2e-3, weight_decay=0.05)
        g = torch.Generator().manual_seed(3)
        start = time.perf_counter()
        for step in range(a.steps):
            idx = torch.randint(0, train.shape[0], (16,), generator=g)
            torch.manual_seed(100 + step)
            loss = mae({"image": train[idx]}).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        per_step = (time.perf_counter() - start) / a.steps
        mae.eval()
        with torch.no_grad():
            torch.manual_seed(7)  # the same patches hidden for both modes: mask per patch, shared by its groups
            tokens = adapter.tokenize({"image": held})
            num = 16
            groups = tokens.num_tokens // num
            shown = torch.rand(held.shape[0], num).argsort(1) < 4  # 4 of the 16 patches visible
            keep = shown.repeat(1, groups)
            order = torch.argsort(keep.float(), dim=1, descending=True, stable=True)
            visible = Visible(index=order[:, :4 * groups], valid=None, mask=keep)
            latent, _ = mae.forward_encoder(tokens, visible)
            pred = mae.forward_decoder(latent, tokens, visible)
            per_token = adapter.loss(pred, adapter.target(tokens), tokens)
            mse = float(per_token[~keep].mean())
        count = tokens.num_tokens
        rows.append({"tokens_per_patch": mode, "heldout_mse": mse, "ms_per_step": per_step * 1e3,
                     "encoder_tokens_per_chip": count})
        lines.append(f"| {mode} | {mse:.4f} | {per_step * 1e3:.0f} | {count} |")
    return rows, "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--quality", action="store_true", help="also pretrain both modes and compare reconstruction")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--train-chips", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows, table = speed(a)
    print(f"device={a.device} batch={a.batch} image={a.image} patch={a.patch} width={a.width} bands=13 (Sentinel-2)")
    print(table)
    result: dict[str, object] = {"config": vars(a), "speed": rows}
    markdown = table
    if a.quality:
        q_rows, q_table = quality(a)
        print()
        print(q_table)
        result["quality"] = q_rows
        markdown += "\n\n" + q_table
    result["markdown"] = markdown
    print(json.dumps(result))


if __name__ == "__main__":
    main()
