"""Frozen-encoder evaluation: a linear SVM on pooled features (C by cross-validation) and the
N-way K-shot protocol (mean and std over reproducible folds), run as a one-epoch `maekit fit`.

The training split's features are collected in the training epoch, the validation split's in
the validation loop at its end (the few-shot protocol needs only the training split); the
classifiers are fitted when the epoch ends (scikit-learn) and their accuracies logged as
`val/svm_acc` or `val/fewshot_acc` (+ `val/fewshot_std`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from maekit.backbones import SizeName
from maekit.finetune.tasks import EncoderTask
from maekit.tokens import DomainAdapter

FeaturePooling = Literal["mean", "max", "mean+max", "cls"]


class FrozenFeatureEvaluation(EncoderTask):
    """Scores a frozen pretrained encoder with a linear classifier on its pooled features.

    Args:
        adapter, size, pretrained, class_token: the encoder, as in pretraining.
        protocol: `svm` (train split -> validation split) or `fewshot` (folds drawn from the
            training split: `n_way` classes, `k_shot` examples each, `query` test examples each).
        pooling: token features -> one vector (Point-MAE's SVM: `mean+max`).
        svm_c: the grid of C values searched by stratified cross-validation on the training
            features (default 10^-3 .. 10^2).
        cv_folds: cross-validation folds for C (fewer when a class has fewer examples).
        n_way, k_shot, query, folds, seed: the few-shot protocol.
    """

    def __init__(
        self,
        adapter: DomainAdapter,
        size: SizeName = "tiny",
        pretrained: str | None = None,
        class_token: bool = False,
        protocol: Literal["svm", "fewshot"] = "svm",
        pooling: FeaturePooling = "mean+max",
        svm_c: list[float] | None = None,
        cv_folds: int = 5,
        n_way: int = 5,
        k_shot: int = 10,
        query: int = 20,
        folds: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(adapter, size=size, pretrained=pretrained, freeze_encoder=True, class_token=class_token)
        self.save_hyperparameters(ignore=["adapter"])
        self.automatic_optimization = False
        self._features: dict[str, list[tuple[Tensor, Tensor]]] = {"train": [], "val": []}
        self.results: dict[str, float] = {}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:  # every training sample is a data point here: drop none
            datamodule.full_pass = True

    def features(self, batch: dict[str, Any]) -> Tensor:
        """(B, F) pooled features of a batch."""
        p = self.encoder.num_prefix
        tokens, x = self.encode(batch, return_prefix=p > 0)
        pooling = self.hparams.pooling
        if pooling == "cls":
            return x[:, 0]
        x, w = x[:, p:], tokens.present[..., None]
        mean = torch.where(w, x, 0.0).sum(1) / w.sum(1).clamp(min=1).to(x.dtype)
        top = torch.where(w, x, torch.finfo(x.dtype).min).amax(1)
        return {"mean": mean, "max": top, "mean+max": torch.cat([mean, top], -1)}[pooling]

    def on_train_epoch_start(self) -> None:
        self.eval()  # frozen: BatchNorm statistics and dropout as in inference
        self._features = {"train": [], "val": []}

    def _collect(self, split: str, batch: dict[str, Any]) -> None:
        with torch.no_grad():
            self._features[split].append((self.features(batch).float(), batch["label"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect("train", batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect("val", batch)

    def _gathered(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        parts = self._features[split]
        if not parts:
            return np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
        x = torch.cat([f for f, _ in parts])
        y = torch.cat([label for _, label in parts])
        if self.trainer.world_size > 1:  # every rank scores all samples, each once
            loader = self.trainer.train_dataloader if split == "train" else self.trainer.val_dataloaders
            total = len(getattr(loader, "dataset", x))
            x, y = unpad_rank_shares(self.all_gather(x), total), unpad_rank_shares(self.all_gather(y), total)
        return x.cpu().numpy(), y.cpu().numpy()

    def on_train_epoch_end(self) -> None:  # after the validation loop of the epoch
        if not self._features["train"]:
            return
        train_x, train_y = self._gathered("train")
        val_x, val_y = self._gathered("val")
        hp = self.hparams
        if hp.protocol == "svm":
            accuracy, c = linear_svm_accuracy(train_x, train_y, val_x, val_y, hp.svm_c, hp.cv_folds)
            self.results = {"svm_acc": accuracy, "svm_c": c}
        else:
            scores = few_shot_accuracies(train_x, train_y, hp.n_way, hp.k_shot, hp.query, hp.folds, hp.seed,
                                         hp.svm_c)
            self.results = {"fewshot_acc": float(np.mean(scores)), "fewshot_std": float(np.std(scores))}
        for name, value in self.results.items():
            self.log(f"val/{name}", value, rank_zero_only=True)
        if self.trainer.is_global_zero:
            print("frozen-feature evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in self.results.items()))

    def configure_optimizers(self) -> None:  # nothing is trained
        return None


def unpad_rank_shares(gathered: Tensor, total: int) -> Tensor:
    """The samples of an epoch in order, each once, from `all_gather`ed per-rank outputs
    (world, n, ...): ranks hold strided shares `order[rank::world]` of an order padded with its
    first samples to `world * n` (as `DistributedSampler` and `ResumableLoader` deal them)."""
    return gathered.transpose(0, 1).flatten(0, 1)[:total]


def linear_svm_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                        c_grid: list[float] | None = None, cv_folds: int = 5) -> tuple[float, float]:
    """Accuracy on the test features of a linear SVM fitted on the training features, with C
    chosen by stratified cross-validation over `c_grid`; returns (accuracy, chosen C)."""
    return linear_classifier_accuracy(train_x, train_y, test_x, test_y, c_grid, cv_folds, "svm")


def linear_classifier_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                               c_grid: list[float] | None = None, cv_folds: int = 5,
                               kind: Literal["svm", "logistic"] = "svm", seed: int = 0) -> tuple[float, float]:
    """Accuracy on the test features of a linear classifier (`svm`: LinearSVC, `logistic`:
    multinomial logistic regression) fitted on standardised training features, with C chosen by
    stratified cross-validation over `c_grid` (default 10^-3 .. 10^2); the folds are reduced to
    the smallest class's count, and with fewer than 2 examples in a class the middle C of the
    grid is used without cross-validation. Returns (accuracy, chosen C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    grid = list(c_grid) if c_grid else [10.0**e for e in range(-3, 3)]
    smallest = int(min(np.unique(train_y, return_counts=True)[1], default=0))
    folds = min(cv_folds, smallest)
    classifier = LinearSVC(max_iter=20000) if kind == "svm" else LogisticRegression(max_iter=2000)
    model = Pipeline([("scale", StandardScaler()), ("linear", classifier)])
    if folds >= 2 and len(grid) > 1:
        search = GridSearchCV(model, {"linear__C": grid}, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
        search.fit(train_x, train_y)
        model, c = search.best_estimator_, float(search.best_params_["linear__C"])
    else:  # too few examples per class to cross-validate: the middle of the grid
        c = grid[len(grid) // 2]
        model.set_params(linear__C=c).fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean()), c


def few_shot_folds(labels: np.ndarray, n_way: int, k_shot: int, query: int, folds: int, seed: int = 0
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Reproducible N-way K-shot folds: per fold, `n_way` classes drawn among those with at
    least `k_shot + query` examples, then `k_shot` support and `query` query indices per class.
    Returns (support indices, query indices) per fold."""
    rng = np.random.default_rng(seed)
    eligible = [c for c in np.unique(labels) if (labels == c).sum() >= k_shot + query]
    if len(eligible) < n_way:
        raise ValueError(f"{n_way}-way {k_shot}-shot with {query} queries needs {n_way} classes with at least "
                         f"{k_shot + query} examples; the data has {len(eligible)}")
    out = []
    for _ in range(folds):
        classes = rng.choice(eligible, n_way, replace=False)
        support, queries = [], []
        for c in classes:
            picked = rng.choice(np.flatnonzero(labels == c), k_shot + query, replace=False)
            support.append(picked[:k_shot])
            queries.append(picked[k_shot:])
        out.append((np.concatenate(support), np.concatenate(queries)))
    return out


def few_shot_accuracies(x: np.ndarray, y: np.ndarray, n_way: int, k_shot: int, query: int, folds: int,
                        seed: int = 0, c_grid: list[float] | None = None) -> list[float]:
    """Accuracy of a linear SVM on each few-shot fold (fitted on the support set)."""
    scores = []
    for support, queries in few_shot_folds(y, n_way, k_shot, query, folds, seed):
        accuracy, _ = linear_svm_accuracy(x[support], y[support], x[queries], y[queries], c_grid,
                                          cv_folds=min(5, k_shot))
        scores.append(accuracy)
    return scores
