"""`maekit probe`: frozen-encoder evaluation at several label budgets, pretrained vs random init.

The protocol (as torchgeo-bench, GEO-Bench and PANGAEA evaluate frozen encoders):

1. The config's datamodule and model (adapter + encoder, as the fine-tuning tasks build them) are
   instantiated with the given weights and at random initialisation, `--random_inits` times
   (default 3; seeded by the config's `seed_everything`, then +1, +2: one random init is a noisy
   baseline, about +-1.5 points of linear-probe accuracy on EuroSAT). The random models take the
   loaded model's buffers (input normalisation statistics), so only learned weights differ.
2. Features are extracted once per model, in eval mode without gradients: every training sample
   without augmentation (random crops become centre crops, flips and point/skeleton augmentations
   are off), and the test split (the datamodule's `test` split if it has its own, else `val`).
3. Per labels-per-class budget, `seeds` seeded draws of that many training samples per class (one
   draw for `all`); the same draws for both models.
4. Classification (batches with `label`): kNN on cosine similarity of standardised features
   (per-feature mean and std of the labelled samples, as the linear probe; MAE features share a
   large common direction that otherwise dominates the cosine), k = 20, fewer when fewer
   training samples; each neighbour votes with weight exp(similarity / 0.07), as DINO's kNN; and a
   linear probe (logistic regression on standardised features, C by stratified cross-validation,
   see `linear_classifier_accuracy`), both as test accuracy.
   Dense data (batches with `mask`, e.g. volumes with label maps): a light head, one linear map
   per token to its patch's voxel logits, trained for a fixed number of full-batch AdamW steps
   (cross-entropy + soft Dice) on the frozen token features of the labelled cases; reported as
   Dice, per test case and foreground class present in its label map, averaged.
5. Mean and std (over draws, and over random initialisations for `random`) per budget, printed as a
   table and written as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from maekit.errors import ConfigError
from maekit.finetune.frozen import linear_classifier_accuracy
from maekit.progress import progress

KNN_TEMPERATURE = 0.07
ALL = "all"


# ----------------------------------------------------------------------------- budgets
def parse_budgets(text: str) -> list[int | None]:
    """`1,5,10,all` -> [1, 5, 10, None] (None: every training sample)."""
    budgets: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.lower() == ALL:
            budgets.append(None)
        elif part.isdigit() and int(part) > 0:
            budgets.append(int(part))
        else:
            raise ConfigError(f"--labels_per_class: {part!r} is neither a positive whole number nor 'all'")
    if not budgets:
        raise ConfigError("--labels_per_class names no budget (e.g. 1,5,10,all)")
    return budgets


def labelled_subset(labels: np.ndarray, per_class: int | None, seed: int, unit: str = "class") -> np.ndarray:
    """Sorted indices of `per_class` samples of every class in `labels` (all with None), drawn
    with `seed`. A class with fewer samples than asked is refused by name (`unit` "case": one
    class, the budget counts cases)."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            where = "there are" if unit == "case" else f"class {int(c)} has"
            raise ConfigError(f"labels_per_class {per_class}: {where} only {len(members)} training "
                              f"{'case' if unit == 'case' else 'sample'}(s)")
        picked.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def budget_name(per_class: int | None) -> str:
    return ALL if per_class is None else str(per_class)


# ----------------------------------------------------------------------------- classifiers
def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 k: int = 20, temperature: float = KNN_TEMPERATURE, standardise: bool = False) -> float:
    """Test accuracy of a cosine-similarity kNN (k capped at the training samples); neighbours
    vote with weight exp(similarity / temperature). With `standardise`, features are first
    centred and scaled by the training samples' per-feature mean and std (as the linear probe
    does), so a direction shared by every sample does not dominate the cosine."""
    train_t = torch.as_tensor(train_x, dtype=torch.float32)
    test_t = torch.as_tensor(test_x, dtype=torch.float32)
    if standardise:
        mean, std = train_t.mean(0), train_t.std(0, unbiased=False).clamp(min=1e-6)
        train_t, test_t = (train_t - mean) / std, (test_t - mean) / std
    train = nn.functional.normalize(train_t, dim=1)
    test = nn.functional.normalize(test_t, dim=1)
    labels = torch.as_tensor(train_y, dtype=torch.long)
    k = min(k, len(train))
    classes = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
    predictions = []
    for chunk in test.split(1024):
        sims, idx = (chunk @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), classes).scatter_add_(1, labels[idx], (sims / temperature).exp())
        predictions.append(votes.argmax(1))
    return float((torch.cat(predictions).numpy() == test_y).mean()) if len(test_y) else float("nan")


def logistic_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                      cv_folds: int = 5, seed: int = 0) -> float:
    """Test accuracy of logistic regression on standardised features, C by cross-validation."""
    return linear_classifier_accuracy(train_x, train_y, test_x, test_y, cv_folds=cv_folds, kind="logistic",
                                      seed=seed)[0]


# ----------------------------------------------------------------------------- dense head
def tokens_to_voxels(logits: Tensor, patch: int, classes: int) -> Tensor:
    """(n, *grid, classes * patch^d) per-token logits -> (n, classes, *(grid * patch)) per voxel."""
    n, *grid, _ = logits.shape
    d = len(grid)
    x = logits.reshape(n, *grid, classes, *([patch] * d))
    order = [0, d + 1] + [i for j in range(d) for i in (1 + j, d + 2 + j)]
    return x.permute(order).reshape(n, classes, *[g * patch for g in grid])


def dice_scores(pred: Tensor, truth: Tensor, valid: Tensor, classes: int) -> float:
    """Mean Dice over cases and the foreground classes present in each case's label map
    (voxels outside `valid` ignored); NaN when no test case has any foreground."""
    per_case = []
    for p, t, v in zip(pred, truth, valid):
        for c in range(1, classes):
            truth_c = (t == c) & v
            if truth_c.any():
                pred_c = (p == c) & v
                per_case.append((c, 2.0 * float((pred_c & truth_c).sum()) / float(pred_c.sum() + truth_c.sum())))
    if not per_case:
        return float("nan")
    by_class = [np.mean([s for c, s in per_case if c == k]) for k in sorted({c for c, _ in per_case})]
    return float(np.mean(by_class))


def voxels_to_tokens(values: Tensor, patch: int) -> Tensor:
    """(n, *(grid * patch)) per-voxel values -> (n, *grid, patch^d): each token's patch, its voxels
    in the order `tokens_to_voxels` reads a token's logits."""
    n, *spatial = values.shape
    d = len(spatial)
    grid = [s // patch for s in spatial]
    x = values.reshape(n, *[v for g in grid for v in (g, patch)])
    order = [0] + [1 + 2 * j for j in range(d)] + [2 + 2 * j for j in range(d)]
    return x.permute(order).reshape(n, *grid, patch**d)


def dense_probe_dice(train_f: Tensor, train_m: Tensor, train_v: Tensor, test_f: Tensor, test_m: Tensor,
                     test_v: Tensor, patch: int, classes: int, steps: int = 300, lr: float = 1e-2,
                     seed: int = 0, batch_tokens: int | None = None) -> float:
    """Dice of a linear per-token head (token -> its patch's voxel logits) trained on frozen token
    features `train_f` (n, D, *grid) against label maps `train_m` (n, *grid * patch): `steps` AdamW
    steps with cross-entropy + soft Dice over the `valid` voxels, full batch (or, with
    `batch_tokens`, that many tokens drawn at random per step). The loss is computed per token (a
    token's patch of voxels): the same loss as per voxel, without rearranging the logits each step."""
    generator = torch.Generator().manual_seed(seed)
    mean = train_f.mean(dim=[0, *range(2, train_f.ndim)], keepdim=True)
    std = train_f.std(dim=[0, *range(2, train_f.ndim)], keepdim=True).clamp(min=1e-6)
    d = train_f.ndim - 2

    def channels_last(f: Tensor) -> Tensor:
        return ((f - mean) / std).movedim(1, -1)

    x = channels_last(train_f).reshape(-1, train_f.shape[1])
    y = voxels_to_tokens(train_m.clamp(0, classes - 1), patch).reshape(len(x), -1)
    w = voxels_to_tokens(train_v.float(), patch).reshape(len(x), -1)
    keep = w.sum(1) > 0  # tokens wholly outside the valid voxels teach nothing
    x, y, w = x[keep], y[keep], w[keep]
    onehot_all = nn.functional.one_hot(y, classes).movedim(-1, 1)[:, 1:].float()  # (T, classes-1, P)
    head = nn.Linear(train_f.shape[1], classes * patch**d)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(train_f.shape[1])
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        if batch_tokens is not None and len(x) > batch_tokens:
            idx = torch.randperm(len(x), generator=generator)[:batch_tokens]
            xb, yb, wb, onehot = x[idx], y[idx], w[idx], onehot_all[idx]
        else:
            xb, yb, wb, onehot = x, y, w, onehot_all
        logits = head(xb).reshape(len(xb), classes, -1)
        ce = (nn.functional.cross_entropy(logits, yb, reduction="none") * wb).sum() / wb.sum().clamp(min=1)
        prob = logits.softmax(1)[:, 1:] * wb.unsqueeze(1)
        onehot = onehot * wb.unsqueeze(1)
        soft_dice = (2 * (prob * onehot).sum([0, 2]) + 1) / (prob.sum([0, 2]) + onehot.sum([0, 2]) + 1)
        loss = ce + (1 - soft_dice.mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = tokens_to_voxels(head(channels_last(test_f)), patch, classes).argmax(1)
    return dice_scores(pred, test_m, test_v, classes)


# ----------------------------------------------------------------------------- data
def without_augmentation(dataset: Dataset) -> tuple[Dataset, bool]:
    """A copy of a training dataset with its random steps off (random crops -> centre crops, no
    flips, no point/skeleton augmentation, deterministic FPS), and whether maekit knew how: a
    dataset may bring its own `without_augmentation()`; unknown ones are returned as they are."""
    own = getattr(dataset, "without_augmentation", None)
    if callable(own):
        return own(), True
    from maekit.datasets.chips import ChipDataset
    from maekit.datasets.medical import VolumeDataset
    from maekit.datasets.nerf import NerfGridDataset
    from maekit.datasets.pointcloud import PointCloudDataset

    plain = copy.copy(dataset)
    if isinstance(dataset, (ChipDataset, VolumeDataset, NerfGridDataset)):
        plain.random_crop, plain.flips = False, False  # type: ignore[attr-defined]
        return plain, True
    if isinstance(dataset, PointCloudDataset):
        plain.augment, plain.subsample = [], "fps"  # type: ignore[attr-defined]
        return plain, True
    try:
        from maekit.datasets.skeleton import SkeletonDataset
    except ImportError:  # pragma: no cover - the skeleton domain is optional
        return dataset, False
    if isinstance(dataset, SkeletonDataset):
        plain.train = False  # type: ignore[attr-defined]
        return plain, True
    return dataset, False


def evaluation_loaders(datamodule: Any) -> tuple[DataLoader, DataLoader, str, list[str]]:
    """(every training sample without augmentation, the test split, its name, notes) of a
    datamodule: its own `test` split when `test_dataloader` serves other samples than
    `val_dataloader`, else `val`."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    notes = []
    if getattr(datamodule, "labels_per_class", None) is not None:
        raise ConfigError(f"data.labels_per_class is {datamodule.labels_per_class}: the probe draws its own "
                          "labelled subsets from all training samples (use --labels_per_class instead)")
    datamodule.setup("fit")
    val = datamodule.val_dataloader()
    test, split = val, "val"
    if is_overridden("test_dataloader", datamodule):
        datamodule.setup("test")
        candidate = datamodule.test_dataloader()
        if getattr(candidate, "dataset", None) is not getattr(val, "dataset", None):
            test, split = candidate, "test"
    if split == "val":
        notes.append("the datamodule has no test split of its own: scored on its validation split")
    train_data, known = without_augmentation(datamodule.train_dataloader().dataset)
    if not known:
        notes.append(f"{type(train_data).__name__}: maekit cannot switch off its augmentations (if any); "
                     "training samples are read as the training loader reads them")
    batch_size = getattr(test, "batch_size", None) or getattr(getattr(test, "batch_sampler", None), "batch_size", 32)
    loader_args: dict[str, Any] = {"num_workers": getattr(datamodule, "num_workers", 0),
                                   "collate_fn": getattr(test, "collate_fn", None)}
    buckets = getattr(train_data, "buckets", None)
    if callable(buckets):
        # samples that may only be batched with their own kind (one sensor per batch): bucket by
        # bucket, in order, as the datamodule's evaluation loaders do
        from maekit.data.buckets import BucketBatchSampler

        sampler = BucketBatchSampler(buckets(), batch_size, shuffle=False, rank=0, world=1)
        train = DataLoader(train_data, batch_sampler=sampler,
                           **loader_args)
    else:
        train = DataLoader(train_data, batch_size=batch_size, shuffle=False, **loader_args)
    return train, test, split, notes


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


@torch.no_grad()
def extract(model: nn.Module, loader: DataLoader, dense: bool, device: torch.device
            ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Frozen features of every batch, in eval mode: pooled (n, F) features and labels (n,), or
    with `dense` grid features (n, D, *grid), label maps (n, *spatial) and valid voxels."""
    model.eval().to(device)
    features, targets, valid = [], [], []
    for batch in progress(loader, desc="features", unit="batch"):
        batch = _to(batch, device)
        if dense:
            tokens, x = model.encode(batch)  # type: ignore[operator]
            features.append(model.adapter.to_grid(x, tokens).float().cpu())  # type: ignore[union-attr,operator]
            targets.append(batch["mask"].long().cpu())
            ok = batch.get("valid")
            valid.append((torch.ones_like(batch["mask"], dtype=torch.bool) if ok is None else ok.bool()).cpu())
        else:
            features.append(model.features(batch).float().cpu())  # type: ignore[operator]
            targets.append(batch["label"].long().cpu())
    if not features:
        raise ConfigError("a split of the datamodule is empty: nothing to probe")
    grids = sorted({tuple(f.shape[1:]) for f in features})
    if len(grids) > 1:
        raise ConfigError(f"the samples give features of different shapes {grids}: the probe needs fixed-size "
                          "samples (e.g. data.val_whole_volumes: false)")
    return torch.cat(features), torch.cat(targets), torch.cat(valid) if dense else None


# ----------------------------------------------------------------------------- the run
def probe_scores(features: dict[str, tuple[Tensor, Tensor, Tensor | None]],
                 test: dict[str, tuple[Tensor, Tensor, Tensor | None]], budgets: Sequence[int | None],
                 seeds: int, seed: int = 0, k: int = 20, dense: bool = False, patch: int = 1, classes: int = 2,
                 head_steps: int = 300) -> dict[str, dict[str, dict[str, float]]]:
    """Scores per budget and model: {budget: {model: {metric: mean, metric_std: std}}}. The
    labelled draws of a budget are the same for every model (keyed by training-set labels).
    Models named `NAME#i` (several random initialisations) are pooled into NAME: mean and std
    over every initialisation and draw."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    first = next(iter(features.values()))
    draw_labels = first[1].numpy() if not dense else np.zeros(len(first[1]), np.int64)  # cases: one "class"
    for per_class in budgets:
        draws = [labelled_subset(draw_labels, per_class, seed + i, "case" if dense else "class")
                 for i in range(1 if per_class is None else seeds)]
        out[budget_name(per_class)] = {}
        pooled: dict[str, dict[str, list[float]]] = {}
        for name, (x, y, v) in features.items():
            tx, ty, tv = test[name]
            scores = pooled.setdefault(name.split("#")[0], {})
            for i, idx in enumerate(draws):
                if dense:
                    assert v is not None and tv is not None
                    sub = torch.as_tensor(idx)
                    scores.setdefault("dice", []).append(dense_probe_dice(
                        x[sub], y[sub], v[sub], tx, ty, tv, patch, classes, head_steps, seed=seed + i))
                else:
                    xs, ys = x.numpy()[idx], y.numpy()[idx]
                    scores.setdefault("knn", []).append(knn_accuracy(xs, ys, tx.numpy(), ty.numpy(), k,
                                                                     standardise=True))
                    scores.setdefault("linear", []).append(logistic_accuracy(xs, ys, tx.numpy(), ty.numpy(),
                                                                             seed=seed + i))
        for name, scores in pooled.items():
            summary: dict[str, float] = {}
            for metric, values in scores.items():
                summary[metric] = float(np.mean(values))
                summary[f"{metric}_std"] = float(np.std(values))
            out[budget_name(per_class)][name] = summary
    return out


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table: one row per budget, mean ± std per model and metric."""
    metrics = result["metrics"]
    models = ["pretrained", "random"]
    head = f"{'labels/' + result['unit']:>16s}" + "".join(f"  {m + ' ' + metric:>22s}" for m in models for metric in metrics)
    rows = [head]
    for budget, by_model in result["labels_per_class"].items():
        cells = [f"{by_model[m][metric]:.3f} ± {by_model[m][metric + '_std']:.3f}" for m in models for metric in metrics]
        rows.append(f"{budget:>16s}" + "".join(f"  {c:>22s}" for c in cells))
    return "\n".join(rows)


def probe_models(config_args: list[str], random_inits: int = 1) -> tuple[dict[str, nn.Module], Any, str]:
    """({"pretrained": loaded model, "random": same architecture at random init, "random#1", ...},
    datamodule, weights) from `-c CONFIG` and `--data.*` / `--model.*` overrides, as `maekit fit`
    reads them. `random_inits` random models: the first seeded by the config's `seed_everything`,
    the i-th by that seed + i."""
    if random_inits < 1:
        raise ConfigError(f"random_inits is {random_inits}: at least one random initialisation is compared")
    import warnings

    from maekit.cli import MaekitCLI

    with warnings.catch_warnings():  # `maekit probe`'s own options are in sys.argv, not in args
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        loaded = MaekitCLI(args=config_args, run=False)
        weights = loaded.config["model"]["init_args"].get("pretrained")
        if not weights:
            raise ConfigError("maekit probe compares pretrained weights with random initialisation: give "
                              "--model.pretrained WEIGHTS")
        base = loaded.config.get("seed_everything")
        base = 0 if base is None or isinstance(base, bool) else int(base)
        randoms = {}
        for i in range(random_inits):
            seeded = [] if i == 0 else [f"--seed_everything={base + i}"]
            randoms["random" if i == 0 else f"random#{i}"] = MaekitCLI(
                args=[*config_args, "--model.init_args.pretrained=null", *seeded], run=False).model
    own = dict(loaded.model.named_buffers())
    with torch.no_grad():
        for random_init in randoms.values():
            for name, buffer in random_init.named_buffers():  # the same input normalisation in all
                if name in own and own[name].shape == buffer.shape:
                    buffer.copy_(own[name])
    return {"pretrained": loaded.model, **randoms}, loaded.datamodule, str(weights)


def run_probe(models: dict[str, nn.Module], datamodule: Any, budgets: Sequence[int | None], seeds: int = 5,
              seed: int = 0, k: int = 20, head_steps: int = 300) -> dict[str, Any]:
    """Extract frozen features once per model and split, then score every budget (see the module
    doc); returns the result dict written as JSON (without `weights`)."""
    train_loader, test_loader, split, notes = evaluation_loaders(datamodule)
    sample = next(iter(test_loader))
    dense = "label" not in sample
    if dense and "mask" not in sample:
        raise ConfigError(f"the datamodule's samples carry neither 'label' nor 'mask' ({sorted(sample)}): the probe "
                          "needs labelled data (a classification or segmentation task)")
    first = next(iter(models.values()))
    needed = ("adapter", "encode") if dense else ("features",)
    if not all(hasattr(first, n) for n in needed) or (dense and not hasattr(first.adapter, "to_grid")):
        raise ConfigError(f"{type(first).__name__} cannot be probed on {'label maps' if dense else 'labels'}: use "
                          "maekit.finetune.frozen.FrozenFeatureEvaluation (or ClassificationTask) as the probe "
                          "config's model" + (", with a patch adapter that has to_grid" if dense else ""))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = {name: extract(m, train_loader, dense, device) for name, m in models.items()}
    test = {name: extract(m, test_loader, dense, device) for name, m in models.items()}
    patch, classes = 1, 0
    if dense:
        patch = getattr(first.adapter, "patch_size", None)
        if not isinstance(patch, int):
            raise ConfigError(f"{type(first.adapter).__name__} has no single patch size for a dense probe")
        f, m, _ = next(iter(train.values()))
        if tuple(m.shape[1:]) != tuple(g * patch for g in f.shape[2:]):
            raise ConfigError(f"label maps of {tuple(m.shape[1:])} voxels do not match the token grid "
                              f"{tuple(f.shape[2:])} x patch {patch}")
        ignore = dict(getattr(first, "hparams", {})).get("ignore_index")
        if ignore is not None:
            for part in (train, test):
                part.update({name: (f, m, v & (m != ignore)) for name, (f, m, v) in part.items()})
        (_, tm, tv), (_, sm, sv) = next(iter(train.values())), next(iter(test.values()))
        seen = torch.cat([tm[tv], sm[sv]])
        classes = int(seen.max()) + 1 if len(seen) else 1
        if classes < 2:
            raise ConfigError("the label maps hold no foreground class: nothing to segment")
        notes.append(f"label maps hold classes 0..{classes - 1}; Dice over 1..{classes - 1}")
    scores = probe_scores(train, test, budgets, seeds, seed, k, dense, patch, classes, head_steps)
    labels = next(iter(train.values()))[1]
    return {
        "labels_per_class": scores, "n_train": len(labels), "n_test": len(next(iter(test.values()))[1]),
        "seeds": seeds, "seed": seed, "test_split": split,
        "classes": classes if dense else len(np.unique(labels.numpy())),
        "metrics": ["dice"] if dense else ["knn", "linear"], "unit": "case" if dense else "class",
        "protocol": ({"head": "linear per token -> its patch's voxel logits", "steps": head_steps,
                      "loss": "cross-entropy + soft Dice", "dice": "mean over test cases and their foreground classes"}
                     if dense else
                     {"knn": f"cosine on standardised features, k={k} (capped at the labelled samples), "
                             f"vote weight exp(sim/{KNN_TEMPERATURE})",
                      "linear": "logistic regression on standardised features, C by stratified CV over 1e-3..1e2 "
                                "(folds <= smallest class; C=1 without CV when a class has < 2 samples)"}),
        "notes": notes}


def cmd_probe(argv: list[str]) -> int:
    """kNN and linear probes (Dice of a light head for label maps) of frozen features at several
    label budgets, for the given weights and for the same architecture at random initialisation."""
    from maekit.files import write_text_atomic

    p = argparse.ArgumentParser(
        prog="maekit probe", description=cmd_probe.__doc__,
        epilog="Any other --data.* / --model.* / --seed_everything option is applied to the config as by `maekit fit`.")
    p.add_argument("-c", "--config", required=True, help="a probe config: a path or a shipped name (e.g. naip/probe)")
    p.add_argument("--labels_per_class", default="1,5,10,all",
                   help="label budgets: labelled training samples per class (cases for label maps), or 'all'")
    p.add_argument("--seeds", type=int, default=5, help="labelled draws per budget (one for 'all')")
    p.add_argument("--seed", type=int, default=0, help="seed of the first draw (then seed+1, ...)")
    p.add_argument("--k", type=int, default=20, help="kNN neighbours (fewer when fewer labelled samples)")
    p.add_argument("--random_inits", type=int, default=3,
                   help="random initialisations compared (seeds seed_everything, +1, ...); scores pooled over all")
    p.add_argument("--head_steps", type=int, default=300, help="AdamW steps of the dense head (label maps)")
    p.add_argument("--out", help="write the results here as JSON")
    a, rest = p.parse_known_args(argv)
    budgets = parse_budgets(a.labels_per_class)
    if a.seeds < 1 or a.k < 1 or a.head_steps < 1 or a.random_inits < 1:
        raise ConfigError("--seeds, --k, --head_steps and --random_inits must be at least 1")
    models, datamodule, weights = probe_models(["-c", a.config, *rest], a.random_inits)
    result = {"weights": weights, "random_inits": a.random_inits,
              **run_probe(models, datamodule, budgets, a.seeds, a.seed, a.k, a.head_steps)}
    print(f"maekit probe: {weights} vs random init ({a.random_inits} initialisation(s), pooled); "
          f"{result['n_train']} training samples, {result['n_test']} {result['test_split']} samples; "
          f"{a.seeds} draws per budget (one for all)")
    for note in result["notes"]:
        print(f"  note: {note}")
    print(format_table(result))
    if a.out:
        write_text_atomic(Path(a.out), json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0
