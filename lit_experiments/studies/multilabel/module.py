"""MultilabelModule: a head on cached frozen-tower embeddings, thresholds tuned on validation, kNN inference.

The datamodule (:class:`~.datamodule.MultilabelDataModule`) holds the frozen SigLIP towers as its ``frozen``
part and serves their cached embeddings (``image_emb``, ``text_emb``, ``targets``); this module reads the towers
only as ``self.frozen`` (their digest and settings), never sees an image, and no gradient can reach a tower. Its
parts (constructor arguments, ``class_path`` in the YAML): ``head`` (:class:`~.heads.MLPHead` or
:class:`~.heads.AGCHHead`, built at the dry run from the embedding widths of the towers and the number of classes
of the data), ``loss`` (:class:`~.losses.CombinedLoss`: BCE / ASL, cosine and hash terms with weights; the total
under ``loss``) and ``knn`` (:class:`MultilabelKnn`). Every row a number needs (validation scores, test scores, the
kNN bank) is a :class:`~lit_experiments.metrics.gathered.GatheredRows` gathered over every rank, in index order.

* Validation: ``val/loss`` and the threshold-free metrics of :func:`~lit_experiments.metrics.multilabel.
  multilabel_metrics` on the fold's validation split; then per-class thresholds are tuned on the same
  validation scores (:class:`~.evaluation.ThresholdPolicy`) and stored in the ``thresholds`` buffer, so every
  checkpoint carries the thresholds of its own weights. The test labels never reach the tuner (F41).
* Test (two loaders: the test split, then the training split as the kNN bank): ``test/map``, ``test/auc_macro``
  (+ the excluded-class counts, F30), ``test/lrap``, ``test/t05/*`` and ``test/tuned/*`` (F1 / precision /
  recall macro, Hamming loss at 0.5 and at the stored thresholds), and the kNN inference ``test/knn_map``,
  ``test/knn_t05/f1_macro`` over the head's retrieval representation: the hash codes (Hamming) when the head
  has a hash layer, else ``fused`` (cosine); :func:`~.evaluation.evaluate_test` is the entry. Beside them,
  results.json ``references`` holds the floors of every headline metric on the same test images (:mod:`.floors`:
  chance / random ranking, predict every label or nothing, the caption keyword rule; F49, F52), and
  ``per_item/test.json`` / ``per_item/caption_rule.json`` one score per test image (F51: paired bootstraps over
  images). A per-class table (AP, AUC, support, tuned threshold, F1 at both policies) goes to ``<run_dir>/multilabel/per_class.{csv,png}``; the towers' settings (checkpoint, text mask
  policy, weight digest) to results.json ``towers``.
* A checkpoint records a digest of the towers whose embeddings trained it (``towers_digest`` buffer); testing
  it on embeddings of other towers is an error.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torchmetrics import MeanMetric

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.specs import OptimSpec
from lit_experiments.core.study import StudyModule
from lit_experiments.metrics.gathered import GatheredRows
from lit_experiments.metrics.multilabel import multilabel_metrics

from . import evaluation
from .evaluation import ThresholdPolicy
from .heads import AGCHHead, MLPHead
from .knn import ProductQuantizerIndex
from .losses import CombinedLoss

THRESHOLD_FREE = ("map", "auc_macro", "lrap", "map_excluded_classes", "auc_excluded_classes")


@dataclass
class MultilabelKnn:
    """kNN inference at test time: ``k`` neighbours from the training split, optional softmax ``temperature``,
    faiss when installed (``use_faiss: null``), required (``true``) or never (``false``). ``index: pq`` searches
    a faiss product quantiser (``pq_m`` sub-vectors of ``pq_nbits`` bits) over the cosine representation
    ``fused`` instead: the seed's planned alternative to the hash layer (needs faiss-cpu)."""

    k: int = 10
    temperature: float | None = None
    use_faiss: bool | None = None
    enabled: bool = True
    index: str = "exact"
    pq_m: int = 8
    pq_nbits: int = 8


def _rows(*names: str) -> GatheredRows:
    """Rows of ``names`` (stored as float64) and ``index`` (int64), gathered over every rank, in index order."""
    dtypes = {**dict.fromkeys(names, torch.float64), "index": torch.long}
    return GatheredRows((*names, "index"), dtypes=dtypes, order_by="index")


def _digest_tensor(key: str) -> torch.Tensor:
    return torch.tensor(list(hashlib.sha1(key.encode()).digest()[:8]), dtype=torch.uint8)


class MultilabelModule(StudyModule):
    """A multi-label head on frozen-tower embeddings.

    Args:
        head: :class:`~.heads.MLPHead` (default, the seed's baseline) or :class:`~.heads.AGCHHead`.
        loss: :class:`~.losses.CombinedLoss` (default: BCE only).
        knn: :class:`MultilabelKnn` of the test-time kNN inference.
        optimizer: the optimizer of the fit (AdamW 1e-3 by default, as :class:`OptimSpec`).
    """

    loss_lower_bounds: ClassVar[dict[str, float]] = {"loss": 0.0}
    headline_metrics: ClassVar[list[str]] = [
        "test/map", "test/auc_macro", "test/lrap", "test/t05/f1_macro", "test/tuned/f1_macro", "test/t05/hamming",
        "test/knn_map",
    ]

    def __init__(self, head: MLPHead | AGCHHead | None = None, loss: CombinedLoss | None = None,
                 knn: MultilabelKnn | None = None, optimizer: OptimSpec | None = None) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["head", "loss"])
        self.head = head if head is not None else MLPHead()
        self.loss = loss if loss is not None else CombinedLoss()
        self.knn_args = knn or MultilabelKnn()
        if self.knn_args.k < 1:
            raise ConfigError(f"model.init_args.knn.k={self.knn_args.k}; expected >= 1")
        if self.knn_args.index not in ("exact", "pq"):
            raise ConfigError(f"model.init_args.knn.index={self.knn_args.index!r}; expected 'exact' or 'pq'")
        if self.knn_args.index == "pq":
            try:
                ProductQuantizerIndex(self.knn_args.pq_m, self.knn_args.pq_nbits)
            except (ImportError, ValueError) as err:
                raise ConfigError(f"model.init_args.knn.index: pq: {err}") from None
        self.register_buffer("thresholds", torch.empty(0, dtype=torch.float64))
        self.register_buffer("towers_digest", torch.zeros(8, dtype=torch.uint8))
        self.val_loss = MeanMetric()  # a batch-size weighted mean over every rank (F44)
        self.val_rows = _rows("probs", "targets")
        self.test_rows = _rows("probs", "targets", "rep")
        self.bank_rows = _rows("targets", "rep")
        self.__dict__["_policy"] = None  # the ThresholdPolicy of the last validation (not a submodule)

    # ------------------------------------------------------------------ build
    @property
    def uses_text(self) -> bool:
        return self.head.inputs == "image+text"

    def build(self, image_dim: int, text_dim: int | None, num_classes: int) -> None:
        """Create the head's layers and the thresholds buffer (idempotent for the same widths)."""
        self.head.build(image_dim, text_dim, num_classes)
        if self.thresholds.numel() != num_classes:
            self.thresholds = torch.full((num_classes,), math.nan, dtype=torch.float64, device=self.thresholds.device)

    def dry_run(self, batch: dict) -> None:
        if self.uses_text and "text_emb" not in batch:
            raise ConfigError(f"{type(self.head).__name__}(inputs='image+text') needs caption embeddings: set "
                              "data.init_args.use_text: true, or give the head inputs: image")
        text = batch.get("text_emb")
        self.build(batch["image_emb"].shape[1], None if text is None else text.shape[1], batch["targets"].shape[1])
        self(batch)

    def setup(self, stage: str) -> None:
        """Check that a loaded checkpoint was trained on these towers' embeddings, then record them."""
        towers = self.frozen
        if towers is None:
            return
        dm = self.trainer.datamodule
        key = towers.cache_key()
        digest = _digest_tensor(key).to(self.towers_digest.device)
        if bool(self.towers_digest.any()) and not torch.equal(self.towers_digest, digest):
            raise ConfigError(
                f"the checkpoint's head was trained on embeddings of other towers (digest "
                f"{bytes(self.towers_digest.tolist()).hex()}), not of {key} ({bytes(digest.tolist()).hex()}); "
                "use the towers of its run's config.yaml")
        self.towers_digest.copy_(digest)
        self.add_results("towers", towers.settings())
        self.add_results("labels", {"names": list(dm.label_names), "label_space": dm.label_space})

    # ------------------------------------------------------------------ model
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        text = batch.get("text_emb") if self.uses_text else None
        return self.head(batch["image_emb"].float(), None if text is None else text.float())

    def retrieval_rep(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, str]:
        """The representation kNN inference searches: the hash output (Hamming) or ``fused`` (cosine)."""
        return (out["hash"], "hamming") if "hash" in out else (out["fused"], "cosine")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        out = self(batch)
        probs = torch.sigmoid(out["logits"].float())
        pred = {"probs": probs, "targets": batch["targets"], "index": batch["index"]}
        if self.thresholds.numel() and not torch.isnan(self.thresholds).any():
            pred["labels_tuned"] = (probs.double() >= self.thresholds).long()
        return pred

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch)
        terms = self.loss(out, batch["targets"].float())
        b = len(batch["targets"])
        # F01: the embeddings the head regresses from come from the frozen towers (the datamodule's frozen part):
        # a tower with a trainable parameter (or an embedding that carries grad) stops the run
        towers = self.frozen
        embeddings = {name: (batch[name], towers if isinstance(towers, torch.nn.Module) else [])
                      for name in ("image_emb", "text_emb") if batch.get(name) is not None}
        self.track(losses={"loss": terms["loss"]}, targets=embeddings or None)
        self.log("train/loss", terms["loss"].detach(), prog_bar=True, batch_size=b)
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/{name}", value.detach(), batch_size=b, on_epoch=True, on_step=False)
        return terms["loss"]

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch)
        terms = self.loss(out, batch["targets"].float())
        self.val_loss.update(terms["loss"].detach(), weight=len(batch["targets"]))
        self.log("val/loss", self.val_loss, prog_bar=True, on_epoch=True, on_step=False)
        self.val_rows.update(index=batch["index"], probs=torch.sigmoid(out["logits"].float()),
                             targets=batch["targets"])

    def on_validation_epoch_end(self) -> None:
        if self.val_rows.empty:
            return
        rows = self.val_rows.compute()
        self.val_rows.reset()
        metrics = multilabel_metrics(rows["probs"], rows["targets"], 0.5)
        for name in ("map", "auc_macro", "lrap", "f1_macro"):
            self.log(f"val/{name}" if name != "f1_macro" else "val/t05/f1_macro", float(metrics[name]),
                     prog_bar=name == "map")
        if self.trainer.sanity_checking:
            return
        policy = ThresholdPolicy().fit(rows["probs"], rows["targets"])
        self.thresholds.copy_(policy.thresholds("tuned").to(self.thresholds.device))
        self.__dict__["_policy"] = policy

    # ------------------------------------------------------------------ test
    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self(batch)
        rep = out["fused"] if self.knn_args.index == "pq" else self.retrieval_rep(out)[0]
        if dataloader_idx == 1:
            self.bank_rows.update(index=batch["index"], targets=batch["targets"], rep=rep)
            return
        self.test_rows.update(index=batch["index"], probs=torch.sigmoid(out["logits"].float()),
                              targets=batch["targets"], rep=rep)

    def stored_policy(self) -> ThresholdPolicy:
        """The thresholds stored with these weights (tuned on the fold's validation split) as a policy."""
        if self.thresholds.numel() == 0 or torch.isnan(self.thresholds).any():
            raise ConfigError("the model has no tuned thresholds: they are set at the end of each validation "
                              "epoch of a fit; test a checkpoint written after a validation (limit_val_batches > 0)")
        policy = ThresholdPolicy()
        policy.load_state_dict({"thresholds": self.thresholds.cpu(), "n_fit_samples": 0, "evaluated": False})
        return policy

    def on_test_epoch_end(self) -> None:
        evaluation.evaluate_test(self)

    def test_captions(self, index: torch.Tensor) -> list[str] | None:
        """The captions of the test images ``index`` (None when the datamodule has none)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "captions"):
            return None
        captions = dm.captions("test")
        return [captions[int(i)] for i in index.tolist()]

    def add_floors(self, targets: torch.Tensor, names: list[str], captions: list[str] | None) -> None:
        """F49: the floors of every headline metric on these test units (:func:`~.evaluation.add_floors`)."""
        evaluation.add_floors(self, targets, names, captions)

    def label_names(self, n: int) -> list[str]:
        """The datamodule's label names, or ``class_j`` when it has none for ``n`` classes."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = list(getattr(dm, "label_names", []) or [])
        return names if len(names) == n else [f"class_{j}" for j in range(n)]
