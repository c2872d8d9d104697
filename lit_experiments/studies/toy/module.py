"""A tiny classification study: the smallest complete example of a StudyModule (used by tests and bench)."""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn

from lit_experiments.core.specs import OptimSpec
from lit_experiments.core.study import StudyModule


class ToyModule(StudyModule):
    """MLP encoder with BatchNorm + dropout and a lazily built head, trained with cross-entropy.

    Batch: ``{"x": float (B, D), "y": int64 (B,)}``.
    """

    loss_lower_bounds = {"loss": 0.0, "ce": 0.0}
    headline_metrics = ["test/acc"]

    def __init__(self, hidden: int = 32, num_classes: int = 3, dropout: float = 0.1,
                 optimizer: OptimSpec | None = None) -> None:
        super().__init__(optimizer)
        self.encoder = nn.Sequential(nn.LazyLinear(hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)
        self.val_loss = torchmetrics.MeanMetric()
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(batch["x"]))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch["x"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features = self.encoder(batch["x"])
        logits = self.head(features)
        loss = nn.functional.cross_entropy(logits, batch["y"])
        self.track(representations={"features": features}, losses={"ce": loss})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        self.val_loss.update(nn.functional.cross_entropy(logits, batch["y"], reduction="none"))
        self.val_acc.update(logits, batch["y"])
        self.log("val/loss", self.val_loss, on_epoch=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_acc.update(self(batch), batch["y"])
        self.log("test/acc", self.test_acc, on_epoch=True)
