"""A tiny classification study: the smallest complete example of a StudyModule (used by tests and bench).

Its shape is the shape of every study: the parts (``encoder``, ``head``) are constructor arguments, given in
the YAML as ``class_path`` / ``init_args`` (see ``configs/toy/fit.yaml``). A size that follows from another part
is inferred, not typed twice: the head is an ``nn.LazyLinear`` whose input size the dry run of ``LazyBuild``
fills in. ``num_classes``, which the metrics need as well, is checked against the head.

It is exportable (``lit-exp export``, ``lit-exp quantize``): ``export_parts`` names its two parts, so the core's
deploy tools are tested on it (``tests/core/test_export.py``, ``tests/core/test_quantize.py``).
"""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn
from torchvision.ops import MLP

from lit_experiments.core.specs import OptimSpec
from lit_experiments.core.study import StudyModule
from lit_experiments.deploy.export import ExportPart


def mlp_encoder(in_dim: int = 8, hidden: int = 32, dropout: float = 0.1) -> MLP:
    """The default encoder: ``Linear -> BatchNorm -> ReLU -> Dropout -> Linear -> Dropout`` (width ``hidden``)."""
    return MLP(in_dim, [hidden, hidden], norm_layer=nn.BatchNorm1d, dropout=dropout)


def predict_class(logits: torch.Tensor) -> torch.Tensor:
    """The post-processing of the exported ``head``: logits ``(B, C)`` -> class ids ``(B,)`` (outside the graph)."""
    return logits.argmax(-1)


class ToyModule(StudyModule):
    """Classifier ``head(encoder(x))`` trained with cross-entropy.

    Batch: ``{"x": float (B, D), "y": int64 (B,)}``. Test metrics: ``test/acc`` (the headline) and ``test/loss``
    (mean cross-entropy: a number that moves when the weights do, e.g. under ``lit-exp quantize``).

    Args:
        encoder: ``(B, D) -> (B, F)``; default ``mlp_encoder(in_dim, hidden, dropout)``.
        head: ``(B, F) -> (B, num_classes)``; default ``nn.LazyLinear(num_classes)`` (F inferred).
        num_classes: classes of the task (the accuracy metrics and the default head).
        in_dim, hidden, dropout: of the default encoder only (``in_dim``: the data's ``dim``).
        optimizer: the optimizer of a plain ``fit`` (a curriculum sets one per stage).
    """

    loss_lower_bounds = {"loss": 0.0, "ce": 0.0}
    headline_metrics = ["test/acc"]

    def __init__(self, encoder: nn.Module | None = None, head: nn.Module | None = None, num_classes: int = 3,
                 in_dim: int = 8, hidden: int = 32, dropout: float = 0.1, optimizer: OptimSpec | None = None) -> None:
        super().__init__(optimizer)
        self.encoder = encoder if encoder is not None else mlp_encoder(in_dim, hidden, dropout)
        self.head = head if head is not None else nn.LazyLinear(num_classes)
        if getattr(self.head, "out_features", num_classes) != num_classes:
            raise ValueError(f"ToyModule: head.out_features={self.head.out_features} but num_classes={num_classes}; "
                             "they must match")
        self.val_loss = torchmetrics.MeanMetric()
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
        self.test_loss = torchmetrics.MeanMetric()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(batch["x"]))

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch["x"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features = self.encoder(batch["x"])
        loss = nn.functional.cross_entropy(self.head(features), batch["y"])
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
        logits = self(batch)
        self.test_acc.update(logits, batch["y"])
        self.test_loss.update(nn.functional.cross_entropy(logits, batch["y"], reduction="none"))
        self.log("test/acc", self.test_acc, on_epoch=True)
        self.log("test/loss", self.test_loss, on_epoch=True)

    def export_parts(self, batch: dict[str, torch.Tensor]) -> dict[str, ExportPart]:
        """``encoder`` (``x`` -> ``features``) and ``head`` (``features`` -> ``logits``), each with a dynamic batch;
        the head's example input is the encoder's output on ``batch``; ``predict_class`` stays outside the graph."""
        x = batch["x"].cpu()
        self.eval()
        with torch.no_grad():
            features = self.encoder(x)
        return {"encoder": ExportPart(self.encoder, (x,), ["x"], ["features"], dynamic_batch=["x"]),
                "head": ExportPart(self.head, (features,), ["features"], ["logits"], dynamic_batch=["features"],
                                   postprocess=predict_class)}
