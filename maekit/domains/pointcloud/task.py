"""Point-cloud classification with Point-MAE's head and optional test-time voting."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from maekit.backbones import SizeName
from maekit.domains.pointcloud.ops import farthest_point_sample, gather_points
from maekit.finetune.heads import Pooling
from maekit.finetune.tasks import ClassificationTask
from maekit.tokens import DomainAdapter


class PointCloudClassificationTask(ClassificationTask):
    """Classification of whole clouds (ModelNet40, ScanObjectNN): class token + max-pooled
    tokens into a 2-hidden-layer head, as Point-MAE fine-tunes.

    Args:
        votes: test-time views whose logits are averaged in `test`/`predict` (Point-MAE reports
            ModelNet40 with 10): randomly scaled and shifted copies, drawn from a fixed seed so
            results repeat.
        vote_points: the points the model sees. Evaluation clouds delivered with more points
            (the datamodule's `eval_points`) are cut to their farthest-point sample of this size,
            and each vote draws a fresh random subset of this size (Point-MAE's voting: 1024 of
            1200 FPS points: `--data.eval_points 1200 --model.vote_points 1024`). None: as delivered.
        encoder: the other arguments of `ClassificationTask` and `EncoderTask`, by name.
    """

    def __init__(
        self,
        adapter: DomainAdapter,
        num_classes: int,
        size: SizeName = "small",
        lr: float = 5e-4,
        layer_decay: float = 1.0,
        warmup_epochs: float = 10.0,
        class_token: bool = True,
        pooling: Pooling = "cls+max",
        hidden: list[int] | None = None,
        dropout: float = 0.5,
        votes: int = 1,
        vote_points: int | None = None,
        **encoder: Any,
    ) -> None:
        super().__init__(adapter, num_classes, pooling=pooling, hidden=[256, 256] if hidden is None else hidden,
                         dropout=dropout, size=size, lr=lr, layer_decay=layer_decay, warmup_epochs=warmup_epochs,
                         class_token=class_token, **encoder)
        self.save_hyperparameters(ignore=["adapter"])

    def forward(self, batch: dict[str, Any]) -> Tensor:
        points, limit = batch["points"], self.hparams.get("vote_points")
        if limit is not None and points.shape[1] > limit:  # an evaluation cloud with extra points
            index = farthest_point_sample(points[..., :3], limit)
            batch = {**batch, "points": gather_points(points, index)}
        return super().forward(batch)

    def voted_logits(self, batch: dict[str, Any]) -> Tensor:
        """Logits averaged over `votes` views, each randomly scaled per axis in [2/3, 3/2] and
        shifted in [-0.2, 0.2], and a fresh `vote_points` subset when the cloud has more (Point-MAE's
        voting), drawn from a fixed seed; the cloud itself if 1."""
        votes, limit = self.hparams.votes, self.hparams.get("vote_points")
        if votes <= 1:
            return self(batch)
        points = batch["points"]
        generator = torch.Generator(device=points.device).manual_seed(0)
        shape = (points.shape[0], 1, 3)
        total = None
        for _ in range(votes):
            view_points = points
            if limit is not None and points.shape[1] > limit:
                draw = torch.rand(points.shape[:2], generator=generator, device=points.device).argsort(-1)[:, :limit]
                view_points = gather_points(points, draw)
            scale = torch.rand(shape, generator=generator, device=points.device) * (3 / 2 - 2 / 3) + 2 / 3
            shift = torch.rand(shape, generator=generator, device=points.device) * 0.4 - 0.2
            view = {**batch, "points": torch.cat([view_points[..., :3] * scale + shift, view_points[..., 3:]], -1)}
            logits = self(view).float()
            total = logits if total is None else total + logits
        return total / votes

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.voted_logits(batch)
        self.test_metrics.update(logits, batch["label"])
        self.log_dict(self.test_metrics, batch_size=logits.shape[0])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.voted_logits(batch).softmax(-1)
