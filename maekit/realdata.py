"""`make realdata`: does pretraining pay off on real labelled data nobody in this project made?

For each real set present under DATA (default `../shared/realdata-labelled` from the repository
root; see its MANIFEST), pretrain with the shipped small-data recipe, then run `maekit probe` on
the frozen encoder, pretrained vs the same architecture at random initialisation:

- `eurosat_rgb/`: `configs/rgb/pretrain_small.yaml`, then `configs/rgb/probe.yaml` (kNN and
  linear probe at 1, 5, 10 labels per class and all); goal: linear probe >= random + 10 points
  at 10 labels per class.
- `hippocampus/`: `configs/mri/pretrain_small.yaml` with `--data.labels [0,1,2]`, then
  `configs/mri/probe.yaml` (Dice of a light per-token head with 8 labelled cases and all);
  goal: Dice >= random + 0.05 at 8 cases.

With `--finetune` (slow: minutes per run on a CPU), a set that names a fine-tuning config also
fine-tunes the whole segmentation model on the headline budget of labelled training cases, once
from the pretrained encoder and once from random initialisation (same seed, steps and cases), and
reports the validation Dice of both on the probe's test cases (`hippocampus`: `configs/mri/segment.yaml`,
8 cases, 60 steps). The fine-tunes split like the probe, which is checked too.

Pretraining sees only the probe's training split: both configs of a pair split the same files
with the same seed and fraction, which is checked (`check_split`) before anything runs. Without
DATA the script prints why it skips and exits 0. Results: a table, OUT/realdata.json.

    python -m maekit.realdata [--data DIR] [--out DIR] [--threads N] [--only eurosat_rgb,hippocampus] [--finetune]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maekit.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = "../shared/realdata-labelled"


@dataclass(frozen=True)
class RealSet:
    """One real labelled set: where it is, its pretraining and probe configs, the budgets
    probed, the extra pretraining options, the headline budget and the goal (metric, margin)."""

    name: str
    pretrain: str
    probe: str
    budgets: str
    pretrain_args: tuple[str, ...] = ()
    headline: str = "10"
    metric: str = "linear"
    margin: float = 0.10
    probe_args: tuple[str, ...] = field(default_factory=tuple)
    #: the fine-tuning config (None: no fine-tuning row) and its options (budget of labelled cases, steps)
    finetune: str | None = None
    finetune_args: tuple[str, ...] = field(default_factory=tuple)


SETS = (
    RealSet("eurosat_rgb", "configs/rgb/pretrain_small.yaml", "configs/rgb/probe.yaml", "1,5,10,all"),
    # the pretraining split is over the labelled cases, as the probe's (the one unlabelled image is left out)
    # one random init for the dense probe (each adds 6 full-batch head fits, minutes on a CPU); the
    # classification probe compares with `maekit probe`'s default of 3 random inits, pooled
    RealSet("hippocampus", "configs/mri/pretrain_small.yaml", "configs/mri/probe.yaml", "8,all",
            pretrain_args=("--data.labels", "[0,1,2]"), headline="8", metric="dice", margin=0.05,
            probe_args=("--random_inits", "1"), finetune="configs/mri/segment.yaml",
            # 8 labelled cases (the probe's draw with seed 0); one step per epoch (batch 8), 60 steps,
            # validation (sliding-window Dice on the probe's test cases) every 20
            finetune_args=("--data.labelled_cases", "8", "--data.labelled_seed", "0", "--data.num_workers", "0",
                           "--trainer.max_epochs", "60", "--trainer.check_val_every_n_epoch", "20")),
)


def fit_command(real: RealSet, data: Path, out: Path, python: str = sys.executable) -> list[str]:
    """`maekit fit` of the set's pretraining config, every output under OUT/<set>/."""
    run = out / real.name
    return [python, "-m", "maekit", "fit", "-c", str(REPO / real.pretrain), "--data.root", str(data / real.name),
            "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
            "--trainer.enable_progress_bar", "false", *real.pretrain_args]


def probe_command(real: RealSet, data: Path, out: Path, weights: Path, python: str = sys.executable) -> list[str]:
    """`maekit probe` of the set's probe config on WEIGHTS, JSON to OUT/<set>_probe.json."""
    return [python, "-m", "maekit", "probe", "-c", str(REPO / real.probe), "--data.root", str(data / real.name),
            "--model.pretrained", str(weights), "--labels_per_class", real.budgets,
            "--out", str(out / f"{real.name}_probe.json"), *real.probe_args]


def finetune_command(real: RealSet, data: Path, out: Path, weights: Path | None,
                     python: str = sys.executable) -> list[str]:
    """`maekit fit` of the set's fine-tuning config from WEIGHTS (None: random initialisation),
    every output under OUT/<set>_finetune_<pretrained|scratch>/."""
    if real.finetune is None:
        raise ConfigError(f"{real.name}: no fine-tuning config")
    run = out / f"{real.name}_finetune_{'scratch' if weights is None else 'pretrained'}"
    return [python, "-m", "maekit", "fit", "-c", str(REPO / real.finetune), "--data.root", str(data / real.name),
            "--model.pretrained", "null" if weights is None else str(weights),
            "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
            "--trainer.enable_progress_bar", "false", *real.finetune_args]


def validation_curve(metrics_csv: Path, key: str = "val/dice") -> list[tuple[int, float]]:
    """(step, value) of every logged `key` in a CSVLogger's metrics file; refused if there is none."""
    import csv

    with open(metrics_csv) as f:
        curve = [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]
    if not curve:
        raise ConfigError(f"{metrics_csv}: no {key} logged (did validation run?)")
    return curve


def _option_pairs(argv: list[str]) -> list[str]:
    """The `-c` and `--data.*` options of a command (what decides the split)."""
    keep, i = [], 0
    while i < len(argv) - 1:
        if argv[i] == "-c" or argv[i].startswith("--data."):
            keep += argv[i:i + 2]
            i += 2
        else:
            i += 1
    return keep


def split_items(argv: list[str]) -> tuple[list[str], list[str]]:
    """(training items, validation/test items) of the datamodule a `maekit fit`/`probe` command
    builds: chip files or case names. Lists files only; nothing is trained."""
    import warnings

    from maekit.cli import MaekitCLI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datamodule = MaekitCLI(args=_option_pairs(argv), run=False).datamodule
        datamodule.setup("fit")

    def items(dataset: Any) -> list[str]:
        if hasattr(dataset, "files"):
            return [str(f) for f in dataset.files]
        if hasattr(dataset, "cases"):
            return [c.name for c in dataset.cases]
        raise ConfigError(f"{type(dataset).__name__}: cannot list its items to check the split")

    return items(datamodule.datasets["train"]), items(datamodule.datasets["val"])


def check_split(fit_argv: list[str], probe_argv: list[str]) -> dict[str, int]:
    """Refuse a pretraining that would see any of the probe's test items; the counts otherwise."""
    pre_train, pre_val = split_items(fit_argv)
    probe_train, probe_test = split_items(probe_argv)
    leaked = sorted(set(pre_train) & set(probe_test))
    if leaked:
        raise ConfigError(f"pretraining would train on {len(leaked)} of the probe's {len(probe_test)} test items "
                          f"(e.g. {leaked[0]}): give both configs the same split (val_fraction, seed)")
    return {"pretrain_train": len(pre_train), "pretrain_val": len(pre_val), "probe_train": len(probe_train),
            "probe_test": len(probe_test), "probe_train_in_pretraining": len(set(pre_train) & set(probe_train))}


def _run(argv: list[str], env: dict[str, str], log: Path) -> tuple[str, float]:
    """Run a command with its output teed to `log`; (its output, wall seconds). Fails loudly."""
    print("$", " ".join(argv[1:] if argv[0] == sys.executable else argv), flush=True)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise SystemExit(f"maekit.realdata: command failed (exit {done.returncode}, log {log}):\n{tail}")
    return done.stdout, wall


def headline(real: RealSet, probe: dict[str, Any]) -> dict[str, Any]:
    """Pretrained vs random at the set's headline budget, and whether the goal is met."""
    at = probe["labels_per_class"][real.headline]
    pre, rand = at["pretrained"][real.metric], at["random"][real.metric]
    return {"budget": real.headline, "metric": real.metric, "pretrained": pre, "random": rand,
            "gain": pre - rand, "goal": f"{real.metric} >= random + {real.margin:g}", "met": pre - rand >= real.margin}


def _finetune(real: RealSet, data: Path, out: Path, env: dict[str, str], weights: Path) -> dict[str, Any]:
    """Fine-tune from WEIGHTS and from random initialisation; the Dice curves, times and the goal."""
    split = check_split(finetune_command(real, data, out, weights), probe_command(real, data, out, weights))
    if split["pretrain_val"] != split["probe_test"]:
        raise ConfigError(f"{real.name}: the fine-tune validates on {split['pretrain_val']} cases, the probe tests "
                          f"{split['probe_test']}: give both the same split")
    runs: dict[str, Any] = {}
    for name, w in (("pretrained", weights), ("scratch", None)):
        argv = finetune_command(real, data, out, w)
        printed, wall = _run(argv, env, out / f"{real.name}_finetune_{name}.log")
        found = re.findall(r"maekit: checkpoint written: (\S+)", printed)
        if not found:
            raise SystemExit(f"maekit.realdata: {real.name}: the {name} fine-tune wrote no checkpoint")
        curve = validation_curve(Path(found[-1]).parent.parent / "metrics.csv")
        runs[name] = {"command": " ".join(argv[1:]), "seconds": wall, "val_dice": curve, "dice": curve[-1][1]}
    gain = runs["pretrained"]["dice"] - runs["scratch"]["dice"]
    return {**runs, "budget": real.headline, "gain": gain, "goal": f"dice >= scratch + {real.margin:g}",
            "met": gain >= real.margin}


def format_results(results: dict[str, Any]) -> str:
    """One row per set, budget and metric: pretrained, random, gain."""
    rows = [f"{'set':<12s} {'budget':>7s} {'metric':>7s} {'pretrained':>16s} {'random':>16s} {'gain':>7s}"]
    for name, r in results["sets"].items():
        for budget, by_model in r["probe"]["labels_per_class"].items():
            for metric in r["probe"]["metrics"]:
                p, q = by_model["pretrained"], by_model["random"]
                rows.append(f"{name:<12s} {budget:>7s} {metric:>7s} "
                            f"{p[metric]:>8.3f} ± {p[metric + '_std']:.3f} {q[metric]:>8.3f} ± {q[metric + '_std']:.3f} "
                            f"{p[metric] - q[metric]:>+7.3f}")
        h = r["headline"]
        rows.append(f"  {name}: pretraining {r['pretrain_seconds']:.0f} s, probe {r['probe_seconds']:.0f} s; goal "
                    f"{h['goal']} at {h['budget']}: {'MET' if h['met'] else 'MISSED'} ({h['gain']:+.3f})")
        if "finetune" in r:
            f = r["finetune"]
            rows.append(f"  {name}: fine-tune @{f['budget']} cases: Dice pretrained {f['pretrained']['dice']:.3f} "
                        f"({f['pretrained']['seconds']:.0f} s), scratch {f['scratch']['dice']:.3f} "
                        f"({f['scratch']['seconds']:.0f} s); goal {f['goal']}: {'MET' if f['met'] else 'MISSED'} "
                        f"({f['gain']:+.3f})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maekit.realdata", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="the real labelled sets (relative: to the repository root)")
    p.add_argument("--out", default="realdata_out", help="outputs (relative: to the repository root)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="torch CPU threads (OMP_NUM_THREADS); 1 is fastest on a loaded 2-core machine")
    p.add_argument("--only", default=",".join(s.name for s in SETS), help="comma-separated sets to run")
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune from the pretrained and a random encoder where a set names a fine-tuning "
                        "config (hippocampus: 8 cases, minutes per run on a CPU)")
    a = p.parse_args(argv)
    data = (REPO / a.data).resolve()
    if not data.is_dir():
        print(f"maekit.realdata: skipped: no real labelled data at {data} (see README, 'Results on real data')")
        return 0
    wanted = {s.strip() for s in a.only.split(",") if s.strip()}
    unknown = wanted - {s.name for s in SETS}
    if unknown:
        raise ConfigError(f"--only: unknown set(s) {sorted(unknown)}; known: {[s.name for s in SETS]}")
    out = (REPO / a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    results: dict[str, Any] = {"data": str(data), "threads": a.threads, "machine": f"{os.cpu_count()} CPU cores",
                               "load_average_at_start": os.getloadavg(), "sets": {}}
    for real in SETS:
        if real.name not in wanted:
            continue
        if not (data / real.name).is_dir():
            print(f"maekit.realdata: {real.name}: skipped: {data / real.name} is absent")
            continue
        fit = fit_command(real, data, out)
        split = check_split(fit, probe_command(real, data, out, Path("unused")))
        print(f"{real.name}: split checked: {split}")
        printed, fit_wall = _run(fit, env, out / f"{real.name}_fit.log")
        found = re.findall(r"maekit: checkpoint written: (\S+)", printed)
        if not found:
            raise SystemExit(f"maekit.realdata: {real.name}: the pretraining wrote no checkpoint (log in {out})")
        print(f"{real.name}: pretraining took {fit_wall:.0f} s ({a.threads} thread(s))", flush=True)
        probe_argv = probe_command(real, data, out, Path(found[-1]))
        _, probe_wall = _run(probe_argv, env, out / f"{real.name}_probe.log")
        probe = json.loads((out / f"{real.name}_probe.json").read_text())
        results["sets"][real.name] = {
            "pretrain_command": " ".join(fit[1:]), "probe_command": " ".join(probe_argv[1:]), "split": split,
            "pretrain_seconds": fit_wall, "probe_seconds": probe_wall, "checkpoint": found[-1], "probe": probe,
            "headline": headline(real, probe)}
        if a.finetune and real.finetune is not None:
            results["sets"][real.name]["finetune"] = _finetune(real, data, out, env, Path(found[-1]))
    (out / "realdata.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_results(results))
    print(f"wrote {out / 'realdata.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
