"""Issue 14, evidence 1: does one wavelength-aware model pretrained across sensors transfer to
real chips and to a sensor it never saw?

1. Generate the same synthetic scenes as NAIP-, Sentinel-2-, Landsat-8-like and the held-out
   8-band `dove8` sensor see them (`maekit sample-data --preset multisensor`).
2. Pretrain, for the same number of optimiser steps and the same encoder size:
   - the wavelength-aware model on NAIP + Sentinel-2 + Landsat chips in one run
     (`MultiSensorDataModule`, one sensor per batch);
   - the band-group model (`MultispectralAdapter`, Sentinel-2 preset groups) on the
     Sentinel-2-like chips of the same scenes (it cannot take three band sets in one run).
3. Frozen-probe each, and each architecture at random initialisation, with `maekit probe`'s
   protocol (`maekit.finetune.probe.probe_scores`: kNN and logistic regression at 1, 5, 10
   labels per class and all, 5 seeded draws, the same draws for every model) on
   - real EuroSAT RGB chips (`../shared/realdata-labelled/eurosat_rgb`; skipped when absent),
     half the files for training the probe, half for testing (seeded, as `configs/rgb/probe.yaml`);
   - generated chips of the held-out `dove8` sensor (train/val folders).
   The band-group model reads EuroSAT's R, G, B as Sentinel-2 B04, B03, B02, and dove8 through
   the six dove8 bands whose nearest Sentinel-2 band (by centre wavelength) is distinct
   (coastal_blue->B01, blue->B02, green->B03, red->B04, red_edge->B05, nir->B8A): what a user
   of a band-group model would have to do by hand. Input statistics: the `rgb` preset's
   (measured on EuroSAT) for EuroSAT, computed over the probe's training chips for dove8,
   the same for both models.

Prints a markdown table; the last stdout line is one JSON object (results, timings, settings).
Sized for ~10 CPU minutes on 1 thread:

    nice -n 5 env OMP_NUM_THREADS=1 python scripts/any_sensor_evidence.py [--out DIR] [--epochs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from maekit.errors import ConfigError  # noqa: E402

#: the wavelength-aware adapter (issue 14 part 2)
WAVELENGTH_ADAPTER = "maekit.domains.multispectral.wavelength:WavelengthAdapter"
PRETRAIN_SENSORS = ("naip", "sentinel2", "landsat8")
HELD_OUT = "dove8"
#: dove8 band -> the distinct nearest Sentinel-2 band (the band-group model's only way in)
DOVE8_AS_S2 = {"coastal_blue": "B01", "blue": "B02", "green": "B03", "red": "B04", "red_edge": "B05", "nir": "B8A"}
EUROSAT_AS_S2 = {"R": "B04", "G": "B03", "B": "B02"}


def _quiet_trainer(epochs: int, root: Path) -> Any:
    import lightning as L

    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                     num_sanity_val_steps=0, limit_val_batches=0)


def wavelength_adapter_class() -> Any | None:
    """The wavelength-aware adapter class, or None (with a note) where this checkout lacks it."""
    from maekit.domains.registry import load

    try:
        return load(WAVELENGTH_ADAPTER)
    except (ConfigError, ImportError) as err:
        print(f"note: the wavelength-aware adapter {WAVELENGTH_ADAPTER} is not available ({err}): "
              "only the band-group model is measured")
        return None


def pretrain(adapter: Any, datamodule: Any, epochs: int, out: Path, size: str) -> tuple[Path, float, float]:
    """Pretrain an MAE; (checkpoint, final training loss, seconds)."""
    import lightning as L

    from maekit.pretrain import MAEPretrainModule

    L.seed_everything(0, verbose=False)
    module = MAEPretrainModule(adapter, size=size, decoder_width=64, decoder_depth=1, decoder_heads=2, lr=1.5e-3,
                               warmup_epochs=1, figure_every_n_epochs=0)
    trainer = _quiet_trainer(epochs, out)
    start = time.perf_counter()
    trainer.fit(module, datamodule)
    seconds = time.perf_counter() - start
    path = out / "pretrained.ckpt"
    trainer.save_checkpoint(path)
    return path, float(trainer.callback_metrics["train/loss_epoch"]), seconds


def frozen(adapter: Any, weights: Path | None, size: str) -> Any:
    import lightning as L

    from maekit.finetune import FrozenFeatureEvaluation

    L.seed_everything(0, verbose=False)
    return FrozenFeatureEvaluation(adapter, size=size, pretrained=str(weights) if weights else None,
                                   pooling="mean").eval()


@torch.no_grad()
def features(model: Any, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for batch in loader:
        xs.append(model.features(batch).float())
        ys.append(batch["label"].long())
    return torch.cat(xs), torch.cat(ys)


def set_inputs(model: Any, names: list[str], scale: list[float], offset: list[float], mean: list[float],
               std: list[float]) -> None:
    """Point a band-group model at input bands `names` (model band names) with these statistics."""
    adapter = model.adapter
    adapter.set_input_bands(names)
    idx = torch.tensor([adapter.bands.index(n) for n in names])
    for buffer, values in ((adapter.scale, scale), (adapter.offset, offset), (adapter.mean, mean),
                           (adapter.std, std)):
        buffer[idx] = torch.tensor(values, dtype=buffer.dtype)


def probe_set(name: str, loaders: dict[str, tuple[Any, Any]], budgets: list[int | None], seeds: int
              ) -> dict[str, Any]:
    """`loaders`: model name -> (model, (train loader, test loader)); probe_scores on their features."""
    from maekit.finetune.probe import probe_scores

    train, test = {}, {}
    for model_name, (model, (train_loader, test_loader)) in loaders.items():
        train[model_name] = (*features(model, train_loader), None)
        test[model_name] = (*features(model, test_loader), None)
    labels = {k: v[1] for k, v in train.items()}
    first = next(iter(labels.values()))
    if not all(torch.equal(first, y) for y in labels.values()):
        raise ConfigError(f"{name}: the models' training samples differ in order; the draws would not be shared")
    return {"scores": probe_scores(train, test, budgets, seeds), "n_train": len(first),
            "n_test": len(next(iter(test.values()))[1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="any_sensor_out", help="working folder (data, checkpoints, results)")
    p.add_argument("--realdata", default=str(REPO.parent / "shared" / "realdata-labelled" / "eurosat_rgb"))
    p.add_argument("--epochs", type=int, default=12, help="wavelength model epochs (band-group: 3x, same steps)")
    p.add_argument("--per-class", type=int, default=48, help="generated training scenes per class")
    p.add_argument("--size", default="micro", help="encoder size")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny data, 1 epoch, nano encoder")
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if a.quick:
        a.epochs, a.per_class, a.size, a.seeds = 1, 4, "nano", 2
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    from maekit.domains.multispectral import ChipDataModule, MultiSensorDataModule, MultispectralAdapter
    from maekit.domains.multispectral.sensor_samples import DOVE8, make_multisensor_dataset
    from maekit.domains.multispectral.sensors import load_sensor
    from maekit.domains.multispectral.stats import chip_statistics

    start = time.perf_counter()
    data = out / "data"
    if not (data / HELD_OUT / "val").is_dir():
        make_multisensor_dataset(data, (*PRETRAIN_SENSORS, DOVE8), per_class=a.per_class,
                                 val_per_class=max(2, a.per_class // 3), size=64, seed=0)
    timings["generate"] = time.perf_counter() - start

    # ---------------------------------------------------------------- pretraining
    wavelength_class = wavelength_adapter_class()

    def wavelength() -> Any:
        return wavelength_class(patch_size=a.patch, code_width=64, decoder_rank=8)  # as multisensor/pretrain_small

    wl_ckpt, wl_loss = None, float("nan")
    if wavelength_class is not None:
        mixed = MultiSensorDataModule([{"root": str(data / s), "sensor": s} for s in PRETRAIN_SENSORS],
                                      task="pretrain", batch_size=32, stats="compute", seed=0)
        wl_ckpt, wl_loss, timings["pretrain_wavelength"] = pretrain(wavelength(), mixed, a.epochs,
                                                                    out / "wavelength", a.size)
    s2 = load_sensor("sentinel2")
    s2_chips = ChipDataModule(str(data / "sentinel2"), preset="sentinel2", task="pretrain", batch_size=32,
                              val_fraction=0.0, seed=0)
    s2_chips.setup("fit")
    s2_mean, s2_std, _, _ = chip_statistics(s2_chips.datasets["train"], np.array(s2.scale), np.array(s2.offset))
    band_group = MultispectralAdapter(preset="sentinel2", patch_size=a.patch, mean=s2_mean.tolist(),
                                      std=np.maximum(s2_std, 1e-4).tolist())
    bg_ckpt, bg_loss, timings["pretrain_band_group"] = pretrain(band_group, s2_chips, a.epochs * len(PRETRAIN_SENSORS),
                                                                out / "band_group", a.size)

    def models() -> dict[str, tuple[Any, Any]]:
        built: dict[str, tuple[Any, Any]] = {}
        if wavelength_class is not None:
            built["wavelength pretrained"] = (frozen(wavelength(), wl_ckpt, a.size), None)
            built["wavelength random"] = (frozen(wavelength(), None, a.size), None)
        for name, weights in (("band-group pretrained", bg_ckpt), ("band-group random", None)):
            built[name] = (frozen(MultispectralAdapter(preset="sentinel2", patch_size=a.patch), weights, a.size), None)
        return built

    budgets: list[int | None] = [b for b in (1, 5, 10) if b <= a.per_class] + [None]
    results: dict[str, Any] = {}

    # ---------------------------------------------------------------- held-out sensor
    start = time.perf_counter()
    held = data / HELD_OUT
    dove = load_sensor(held / "sensor.yaml")
    wl_dm = MultiSensorDataModule([{"root": str(held), "sensor": str(held / "sensor.yaml"), "stats": "compute"}],
                                  task="classification", batch_size=64, flips=False, seed=0)
    wl_dm.setup("fit")
    picked = list(DOVE8_AS_S2)
    bg_dm = ChipDataModule(str(held), preset=None, file_bands=dove.band_names, bands=picked, task="classification",
                           batch_size=64, flips=False, seed=0)
    bg_dm.setup("fit")
    info = wl_dm.infos[0]
    keep = [dove.band_names.index(b) for b in picked]
    runs = models()
    for name, (model, _) in runs.items():
        if name.startswith("band-group"):
            set_inputs(model, [DOVE8_AS_S2[b] for b in picked], [1.0] * len(picked), [0.0] * len(picked),
                       [info.mean[i] for i in keep], [info.std[i] for i in keep])
            runs[name] = (model, (bg_dm.loader("train"), bg_dm.loader("val")))
        else:
            runs[name] = (model, (wl_dm.loader("train"), wl_dm.loader("val")))
    results[f"held-out {HELD_OUT} (generated)"] = probe_set(HELD_OUT, runs, budgets, a.seeds)
    timings["probe_held_out"] = time.perf_counter() - start

    # ---------------------------------------------------------------- real EuroSAT RGB
    eurosat = Path(a.realdata)
    if not eurosat.is_dir():
        print(f"EuroSAT RGB: skipped: {eurosat} is absent")
    else:
        start = time.perf_counter()
        rgb = load_sensor("rgb")
        wl_dm = MultiSensorDataModule([{"root": str(eurosat), "sensor": "rgb", "stats": "sensor"}],
                                      task="classification", batch_size=64, flips=False, val_fraction=0.5, seed=0)
        wl_dm.setup("fit")
        bg_dm = ChipDataModule(str(eurosat), preset=None, file_bands=["R", "G", "B"], task="classification",
                               batch_size=64, flips=False, val_fraction=0.5, seed=0)
        bg_dm.setup("fit")
        if wl_dm.datasets["val"].parts[0].files != bg_dm.datasets["val"].files:
            raise ConfigError("EuroSAT: the two datamodules split the files differently")
        runs = models()
        for name, (model, _) in runs.items():
            if name.startswith("band-group"):
                set_inputs(model, [EUROSAT_AS_S2[b] for b in "RGB"], list(rgb.scale), list(rgb.offset),
                           list(rgb.mean), list(rgb.std))
                runs[name] = (model, (bg_dm.loader("train"), bg_dm.loader("val")))
            else:
                runs[name] = (model, (wl_dm.loader("train"), wl_dm.loader("val")))
        results["EuroSAT RGB (real)"] = probe_set("EuroSAT", runs, budgets, a.seeds)
        timings["probe_eurosat"] = time.perf_counter() - start

    # ---------------------------------------------------------------- report
    rows = ["| set | labels/class | model | kNN | linear |", "|---|---|---|---|---|"]
    for set_name, r in results.items():
        for budget, by_model in r["scores"].items():
            for model_name, s in by_model.items():
                rows.append(f"| {set_name} | {budget} | {model_name} | {s['knn']:.3f} ± {s['knn_std']:.3f} | "
                            f"{s['linear']:.3f} ± {s['linear_std']:.3f} |")
    markdown = "\n".join(rows)
    print(markdown)
    print(f"\npretraining: wavelength {timings.get('pretrain_wavelength', float('nan')):.0f} s (final loss "
          f"{wl_loss:.3f}), band-group {timings['pretrain_band_group']:.0f} s (final loss {bg_loss:.3f}); "
          f"{torch.get_num_threads()} thread(s)")
    summary = {"results": results, "timings_s": timings, "final_loss": {"wavelength": wl_loss, "band_group": bg_loss},
               "settings": {"epochs_wavelength": a.epochs, "epochs_band_group": a.epochs * len(PRETRAIN_SENSORS),
                            "per_class": a.per_class, "size": a.size, "patch": a.patch, "seeds": a.seeds,
                            "threads": torch.get_num_threads(), "quick": a.quick},
               "markdown": markdown}
    (out / "any_sensor_evidence.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
