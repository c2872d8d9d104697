"""RetrievalModule: SimSiam pre-training of a timm backbone, then FastAP fine-tuning of the projector.

Stages (``stage.args.objective``, default: the stage name):

* ``simsiam``: two views (``view1`` / ``view2`` from the datamodule) through backbone, projector and predictor;
  symmetric negative cosine with stop-gradient (the stop-gradient branches are declared to the TrainingHealth guard
  as the loss's targets: one that carries a gradient stops the run, F19). Logged every step: the std of the
  L2-normalised ``z``, its ratio to the healthy ``1/sqrt(d)`` and the batch's effective rank; either below its floor for
  ``collapse_patience`` steps in a row is a :class:`HealthError` naming the collapse (F19). Every validation: weighted kNN accuracy of the backbone's
  features (bank = training frames, queries = validation frames), ``z`` std and effective rank.
* ``fastap``: the frozen backbone's features (served by the feature cache, ``data: {features: true}``) through
  the trainable projector; FastAP over labels (m-per-class batches) or temporal-window positives. With image
  inputs (``features: false``) both augmented views of every frame enter the batch and each view is the other's
  positive. Queries without a positive and empty bins are logged (F39).

The frozen network (one name in every study): when a stage with ``data: {features: true}`` sets up, the module
hands the datamodule its trained backbone as ``frozen`` (a :class:`~.parts.FrozenFeatures` copy in eval mode
without gradients, whose cache key holds a digest of the weights, so a retrained backbone selects a new cache);
``self.frozen`` (``StudyModule.frozen``) reads it back. The collapse guard is ``core.health.check_collapse``, the
one ``TrainingHealth`` uses.

Test (F49): on the held-out frames, by one metric code (``lit_experiments.metrics.retrieval``) on one set of
queries, the mAP on the retrieval label (ShapesWorld's ``phase``) of

* ``test/map`` - the final embedding (the headline; after an unlabelled FastAP stage it is the seed's setting),
* ``test/map_simsiam`` - SimSiam's own embedding: the projector's output as the SimSiam stage left it (a frozen
  copy taken when the FastAP stage starts; the projector itself when no FastAP stage ran),
* ``test/map_backbone`` - the backbone's features (FastAP's frozen input),
* ``test/map_init`` - the same backbone at its random initialisation (BatchNorm statistics measured on the bank),
* ``test/map_probe`` - a linear probe (logistic regression on the kNN bank's frozen features and labels), its
  class probabilities as the embedding,
* ``test/map_random`` - the expected AP of a uniformly random ranking (closed form; ``test/map_chance`` is the
  mean positive rate),

and each again with every frame of the query's own video left out of its ranking (``*_xclip``). Headline:
``test/map`` and ``test/map_xclip``; results.json ``references`` holds the random ranking and the random-init
backbone as floors, SimSiam's embedding, the backbone and the probe as references (``StudyModule.add_reference``);
the per-query AP of every embedding is saved with ``StudyModule.save_per_item`` (``per_item/retrieval.json``) for
paired bootstraps. Also ``test/knn_acc`` / ``test/knn_acc_init`` (the kNN monitor's category), the @k metrics,
``test/z_std`` beside ``test/z_std_healthy``; figures and a ranking table in ``<run_dir>/retrieval/``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import CatMetric

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.health import HealthError, check_collapse
from lit_experiments.core.specs import OptimSpec, StageSpec
from lit_experiments.core.specs import stage_args as read_stage_args
from lit_experiments.core.study import StudyModule
from lit_experiments.metrics import RetrievalMetrics, WeightedKNNAccuracy
from lit_experiments.metrics.embedding import effective_rank
from lit_experiments.metrics.gathered import GatheredRows

from .losses import FastAPLoss, SimSiamLoss
from .parts import FrozenCopy, FrozenFeatures, Predictor, Projector, TimmBackbone

OBJECTIVES = ("simsiam", "fastap")


@dataclass
class RetrievalKnn:
    """Weighted kNN monitor: ``k`` neighbours, weights ``exp(cos / temperature)`` (SimSiam's 200 / 0.2)."""

    k: int = 200
    temperature: float = 0.2


@dataclass
class RetrievalStageArgs:
    """Allowed ``stage.args`` keys and their defaults.

    objective: ``simsiam`` | ``fastap`` (default: the stage's name when it is one of them, else ``simsiam``).
    fixed_predictor_lr: the predictor keeps the base learning rate while the others anneal (SimSiam).
    collapse_ratio / collapse_rank / collapse_patience: ``std(normalised z) * sqrt(d)`` below ``collapse_ratio``
        or the batch's effective rank of normalised z below ``collapse_rank`` for ``collapse_patience`` steps in a
        row stops the stage (F19). The rank catches the collapse onto one line that the projector's last
        BatchNorm (unit variance per dimension in training mode) hides from the std.
    """

    objective: str = "simsiam"
    fixed_predictor_lr: bool = True
    collapse_ratio: float = 0.1
    collapse_rank: float = 2.0
    collapse_patience: int = 20


def embedding_rows() -> GatheredRows:
    """Embeddings, retrieval labels and sample indices of every rank, sorted by index (figures, tables)."""
    return GatheredRows(("emb", "labels", "ids"), dtypes={"emb": torch.float32, "labels": torch.long,
                                                          "ids": torch.long}, order_by="ids")


def _pack(rows: GatheredRows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = rows.compute()
    return out["emb"], out["labels"], out["ids"]


class RetrievalModule(StudyModule):
    """SimSiam then FastAP; every part is a constructor argument.

    Args:
        backbone: :class:`TimmBackbone` (any timm model; ``resnet18`` by default).
        projector: :class:`Projector` (3 layers, last BN without affine; seed: 2048 hidden / 256 out).
        predictor: :class:`Predictor` (bottleneck 512).
        simsiam_loss / fastap_loss: :class:`SimSiamLoss`, :class:`FastAPLoss` (``bins``, ``sigma``; F20).
        knn: :class:`RetrievalKnn` of the kNN monitor.
        ks: cut-offs of precision / recall / hit rate @k (larger than the gallery are left out and said so).
        stage_args: defaults of the stages' ``args`` (:class:`RetrievalStageArgs`).
        optimizer: the optimizer of a plain ``fit``.
    """

    loss_lower_bounds: ClassVar[dict[str, float]] = {"simsiam": -1.0, "fastap": 0.0}
    headline_metrics: ClassVar[list[str]] = ["test/map", "test/map_xclip"]
    #: rows beside each headline mAP (F49): (results-key stem, row name, kind, what)
    reference_rows: ClassVar[list[tuple[str, str, str, str]]] = [
        ("map_random", "random ranking", "floor", "expected AP of a uniformly random ranking (closed form)"),
        ("map_init", "random-init backbone", "floor", "the backbone at its random initialisation, BatchNorm "
         "statistics measured on the bank"),
        ("map_simsiam", "SimSiam embedding", "reference", "the projector's output as the SimSiam stage left it"),
        ("map_backbone", "backbone features", "reference", "the frozen backbone's features (FastAP's input)"),
        ("map_probe", "linear probe", "reference", "class probabilities of a logistic-regression probe fitted on "
         "the bank's frozen features and labels"),
    ]

    def __init__(
        self, backbone: TimmBackbone | None = None, projector: Projector | None = None,
        predictor: Predictor | None = None, simsiam_loss: SimSiamLoss | None = None,
        fastap_loss: FastAPLoss | None = None, knn: RetrievalKnn | None = None,
        ks: list[int] | None = None, stage_args: RetrievalStageArgs | None = None, optimizer: OptimSpec | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["backbone", "projector", "predictor", "simsiam_loss", "fastap_loss"])
        self.backbone = backbone or TimmBackbone()
        self.projector = projector or Projector()
        self.predictor = predictor or Predictor()
        self.projector.build(self.backbone.num_features)
        self.predictor.build(self.projector.out_dim)
        self.simsiam_loss, self.fastap_loss = simsiam_loss or SimSiamLoss(), fastap_loss or FastAPLoss()
        self.knn_args = knn or RetrievalKnn()
        self.ks = sorted({int(k) for k in (ks or [1, 5, 10, 20, 50])})
        self.stage_defaults = stage_args or RetrievalStageArgs()
        self.args = read_stage_args(self.stage, self.stage_defaults, OBJECTIVES)
        self.knn_val = WeightedKNNAccuracy(1, self.knn_args.k, self.knn_args.temperature)
        self.knn_test = WeightedKNNAccuracy(1, self.knn_args.k, self.knn_args.temperature)
        self.knn_test_init = WeightedKNNAccuracy(1, self.knn_args.k, self.knn_args.temperature)
        self.val_map = RetrievalMetrics(ks=(1,), normalize=True)
        self.val_z = CatMetric()
        self.z_rows = embedding_rows()  # the final embedding of the test frames
        self.features_rows = embedding_rows()  # the backbone's features
        self.simsiam_rows = embedding_rows()  # SimSiam's embedding
        self.init_rows = embedding_rows()  # the random-init backbone's features
        self.bank_rows = embedding_rows()  # the bank's features and retrieval labels (the linear probe)
        #: the projector as the SimSiam stage left it, taken when a FastAP stage starts (``test/map_simsiam``)
        self.simsiam_projector = FrozenCopy(self.projector)
        self._low_steps = 0
        self.__dict__["_init_backbone"] = None  # not a submodule: never saved, never trained

    # ------------------------------------------------------------------ stages
    def on_stage(self, stage: StageSpec) -> None:
        self.args = read_stage_args(stage, self.stage_defaults, OBJECTIVES)
        self._low_steps = 0
        if self.args.objective == "fastap" and not bool(self.simsiam_projector.taken):
            self.simsiam_projector.take(self.projector)

    def simsiam_embedding(self, features: torch.Tensor) -> torch.Tensor:
        """SimSiam's embedding of backbone ``features``: the frozen copy once FastAP started, else the projector."""
        part = self.simsiam_projector if bool(self.simsiam_projector.taken) else self.projector
        return part(features)

    def setup(self, stage: str) -> None:
        """Hand the datamodule the number of kNN classes and, for ``features: true``, the backbone as ``frozen``."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        names = getattr(dm, "class_names", None)
        if names:
            for metric in (self.knn_val, self.knn_test, self.knn_test_init):
                metric.num_classes = len(names)
        else:
            labels = dm.frames("train").class_labels
            for metric in (self.knn_val, self.knn_test, self.knn_test_init):
                metric.num_classes = int(labels.max()) + 1
        if getattr(dm, "features", False):
            dm.frozen = FrozenFeatures(self.backbone, self.trainer.strategy.root_device)

    def param_groups(self, params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
        pred = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in params if id(p) not in pred]
        mine = [p for p in params if id(p) in pred]
        fixed = self.args.fixed_predictor_lr and self.args.objective == "simsiam"
        groups = [{"params": rest}] if rest else []
        if mine:
            groups.append({"params": mine, "fixed_lr": fixed})
        return groups

    # ------------------------------------------------------------------ model
    def features(self, batch: dict) -> torch.Tensor:
        """Backbone features (B, C) of ``batch``: cached ``features`` or the backbone on ``image``."""
        if "features" in batch:
            return batch["features"].flatten(1).float()
        return self.backbone(batch["image"].float() / 255.0)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"features": (B, C), "embedding": (B, D), "simsiam": (B, D)}`` of uint8 or [0, 1] images (eval mode,
        no grad)."""
        was = self.training
        self.eval()
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        f = self.backbone(x.to(self.device))
        out = {"features": f, "embedding": self.projector(f), "simsiam": self.simsiam_embedding(f)}
        self.train(was)
        return out

    def forward(self, batch: dict) -> torch.Tensor:
        return self.projector(self.features(batch))

    def dry_run(self, batch: dict) -> None:
        self(batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        f = self.features(batch)
        return {"features": f, "embedding": self.projector(f), "label": batch["label"], "index": batch["index"]}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.args.objective == "simsiam":
            return self._simsiam_step(batch)
        return self._fastap_step(batch)

    def _simsiam_step(self, batch: dict) -> torch.Tensor:
        if "view1" not in batch:
            raise ConfigError("the simsiam objective needs image inputs with two views: set data features: false "
                              "for this stage (cached features are for the FastAP stage)")
        z1, z2 = self.projector(self.backbone(batch["view1"])), self.projector(self.backbone(batch["view2"]))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss, targets = self.simsiam_loss.with_targets(p1, p2, z1, z2)
        # the stop-gradient branch is the loss's target: one that carries a gradient stops the run (F19)
        self.track(targets=targets, representations={"z": z1},
                   losses={"loss": loss, "simsiam": loss})  # one term: total = term
        zn = F.normalize(z1.detach().float(), dim=1)
        z_std = zn.std(dim=0).mean()
        ratio = z_std * math.sqrt(z1.shape[1])
        rank = effective_rank(zn)
        b = z1.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b)
        self.log("train/z_std", z_std, batch_size=b)
        self.log("train/z_std_ratio", ratio, prog_bar=True, batch_size=b, on_epoch=True)
        self.log("train/z_effective_rank", rank.float(), batch_size=b, on_epoch=True)
        self._guard_collapse(float(ratio), float(rank), z1.shape[1])
        return loss

    def _guard_collapse(self, ratio: float, rank: float, dim: int) -> None:
        """``core.health.check_collapse`` over ``collapse_patience`` steps in a row (F19)."""
        verdict = check_collapse({"ratio": ratio, "rank": rank}, low={"ratio": self.args.collapse_ratio,
                                 "rank": self.args.collapse_rank}, streak=self._low_steps,
                                 patience=self.args.collapse_patience)
        self._low_steps = verdict.streak
        if verdict.fired:
            raise HealthError(
                f"stage {self.stage.name!r}: representation collapse (F19): for {self._low_steps} steps in a row the "
                f"L2-normalised projector output z had std {ratio:.3f} x the healthy 1/sqrt({dim}) = "
                f"{1 / math.sqrt(dim):.4f} (collapse_ratio {self.args.collapse_ratio}) or effective rank {rank:.2f} "
                f"(collapse_rank {self.args.collapse_rank}): the samples map to nearly one direction (or one line, "
                "which the projector's last BatchNorm hides from the std). Check the stop-gradient of the SimSiam "
                "loss, the predictor and the learning rate")

    def _fastap_step(self, batch: dict) -> torch.Tensor:
        pos, labels = batch.get("pos_mask"), batch["label"]
        with torch.no_grad():
            if "view1" in batch:  # image inputs: both views of every frame, each view the other's positive
                f = torch.cat([self.backbone(batch["view1"]), self.backbone(batch["view2"])])
                labels = torch.cat([labels, labels])
                if pos is not None:
                    pos = pos.repeat(2, 2) | torch.eye(len(labels), dtype=torch.bool, device=pos.device).roll(
                        len(labels) // 2, dims=1)
            else:
                f = self.features(batch)
        z = self.projector(f)
        loss = self.fastap_loss(z, labels=None if pos is not None else labels, pos_mask=pos)
        self.track(representations={"z": z}, losses={"loss": loss, "fastap": loss})
        stats, b = self.fastap_loss.last_stats, z.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b)
        self.log("train/fastap", float(stats["fastap_mean"]), batch_size=b)
        self.log("train/no_positive", float(stats["n_no_positive"]), batch_size=b, reduce_fx="sum")
        self.log("train/empty_bins", float(stats["n_empty_bins"]), batch_size=b)
        return loss

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        f = self.features(batch)
        if dataloader_idx == 1:  # the kNN bank (training frames)
            self.knn_val.update(F.normalize(f.float(), dim=1), batch["class_label"], "bank")
            return
        z = self.projector(f)
        self.knn_val.update(F.normalize(f.float(), dim=1), batch["class_label"], "query")
        self.val_map.update(z.float(), batch["label"], batch["index"])
        self.val_z.update(F.normalize(z.float(), dim=1))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            for m in (self.knn_val, self.val_map, self.val_z):
                m.reset()
            return
        self.log("val/knn_acc", self.knn_val.compute(), prog_bar=True)
        self.log("val/map", self.val_map.compute()["map"].float(), prog_bar=True)
        z = self.val_z.compute().view(-1, self.projector.out_dim)
        self.log("val/z_std", z.std(dim=0).mean())
        self.log("val/z_std_ratio", z.std(dim=0).mean() * math.sqrt(z.shape[1]))
        self.log("val/effective_rank", effective_rank(z))
        for m in (self.knn_val, self.val_map, self.val_z):
            m.reset()

    # ------------------------------------------------------------------ test
    def on_test_start(self) -> None:
        """The kNN baseline: the same architecture at its random initialisation, with its BatchNorm statistics
        measured on (up to 4,096) kNN-bank frames, so it is not handicapped by the default statistics."""
        init = self.backbone.fresh().to(self.device)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "knn_bank"):
            bank, step = dm.knn_bank(), 256
            count = min(len(bank), 4096)
            init.calibrate_norm_stats(torch.stack([bank[j]["image"] for j in range(i, min(count, i + step))]).float()
                                      / 255.0 for i in range(0, count, step))
        self.__dict__["_init_backbone"] = init.eval()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        x = batch["image"].float() / 255.0
        f, f0 = self.backbone(x), self.__dict__["_init_backbone"](x)
        role = "bank" if dataloader_idx == 1 else "query"
        self.knn_test.update(F.normalize(f.float(), dim=1), batch["class_label"], role)
        self.knn_test_init.update(F.normalize(f0.float(), dim=1), batch["class_label"], role)
        labels, ids = batch["label"], batch["index"]
        if dataloader_idx == 1:
            self.bank_rows.update(emb=f, labels=labels, ids=ids)
            return
        self.features_rows.update(emb=f, labels=labels, ids=ids)
        self.z_rows.update(emb=self.projector(f), labels=labels, ids=ids)
        self.simsiam_rows.update(emb=self.simsiam_embedding(f), labels=labels, ids=ids)
        self.init_rows.update(emb=f0, labels=labels, ids=ids)

    def on_test_epoch_end(self) -> None:
        from .evaluation import evaluation_outputs, linear_probe

        f_pack = _pack(self.features_rows)
        bank = _pack(self.bank_rows) if self.bank_rows.update_count else None
        probe = linear_probe(bank[0], bank[1], f_pack[0]) if bank is not None else None
        others = {"simsiam": _pack(self.simsiam_rows)[0], "init": _pack(self.init_rows)[0], "probe": probe}
        results = evaluation_outputs(self, f_pack, _pack(self.z_rows), self.ks, others)
        per_item, groups = results.pop("_per_item"), results.pop("_groups")
        results["knn_acc"] = float(self.knn_test.compute())
        results["knn_acc_init"] = float(self.knn_test_init.compute())
        for name, value in results.items():
            if isinstance(value, (int, float)):
                self.log(f"test/{name}", float(value))
        self._references(results)
        self._per_item(per_item, f_pack, groups)
        for m in (self.knn_test, self.knn_test_init, self.features_rows, self.z_rows, self.simsiam_rows,
                  self.init_rows, self.bank_rows):
            m.reset()
        self.__dict__["_init_backbone"] = None

    def _references(self, results: dict[str, Any]) -> None:
        """Floors and references beside each headline mAP, from the same evaluation (F49)."""
        for metric in self.headline_metrics:
            suffix = metric.removeprefix("test/map")
            if f"map{suffix}" not in results:
                continue
            for stem, name, kind, what in self.reference_rows:
                value = results.get(f"{stem}{suffix}")
                if value is not None:
                    self.add_reference(metric, name, value, kind=kind, what=what)

    def _per_item(self, per_item: dict[str, torch.Tensor], f_pack: tuple, groups: torch.Tensor | None) -> None:
        """Per-query AP of every embedding (NaN: a query without a positive) for the report's paired bootstrap."""
        _, labels, ids = f_pack
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        frames = dm.frames("test") if dm is not None and hasattr(dm, "frames") else None
        names = [frames.frame_name(int(i)) if frames is not None else int(i) for i in ids.tolist()]
        meta = {"labels": labels.tolist(), "videos": None if groups is None else groups.tolist(),
                "what": "average precision of each test frame as a query (the others are the gallery)"}
        self.save_per_item("retrieval", names, {f"test/{k}": v for k, v in per_item.items()}, meta)
