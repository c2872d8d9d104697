"""Bases every study builds on: a stage-aware LightningModule and a LightningDataModule with safe loaders."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .specs import OptimSpec, StageSpec

FIT_STAGE = "fit"


class StudyModule(L.LightningModule):
    """A LightningModule that knows its curriculum stage.

    * ``configure_optimizers`` builds the stage's optimizer over the parameters trainable *now* (F08, F32).
    * ``log`` prefixes metric names with the stage name inside a curriculum (F35).
    * ``track`` hands targets / representations / losses to the TrainingHealth guard.
    * ``log_figure`` / ``log_table`` / ``add_results`` write to the run dir (and wandb when on).
    """

    #: losses with a known floor, e.g. ``{"loss": 0.0}``; TrainingHealth flags values below it.
    loss_lower_bounds: ClassVar[dict[str, float]] = {}
    #: metric names the demo table prints (looked up in results.json ``test`` then ``final``).
    headline_metrics: ClassVar[list[str]] = []

    def __init__(self, optimizer: OptimSpec | None = None) -> None:
        super().__init__()
        self.default_optimizer = optimizer or OptimSpec()
        self.stage: StageSpec = StageSpec(name=FIT_STAGE, max_epochs=1, optimizer=self.default_optimizer)
        self._in_curriculum = False
        self._tracking = False
        self._tracked: dict[str, dict[str, Any]] = {}
        self.extra_results: dict[str, dict[str, Any]] = {}
        self._run_dir: Path | None = None

    # ----------------------------------------------------------------- stages
    def set_stage(self, stage: StageSpec, in_curriculum: bool = True) -> None:
        """Enter ``stage``: remembers it and calls :meth:`on_stage` (the study's override point)."""
        self.stage = stage
        self._in_curriculum = in_curriculum
        self.reset_metrics()
        self.on_stage(stage)

    def reset_metrics(self) -> None:
        """Reset every torchmetrics state so no stage (or DDP hand-over) inherits another's samples."""
        import torchmetrics

        for sub in self.modules():
            if isinstance(sub, torchmetrics.Metric):
                sub.reset()

    def on_fit_start(self) -> None:
        self.reset_metrics()

    def on_stage(self, stage: StageSpec) -> None:
        """Override to switch losses / paths / behaviour per stage (read ``stage.args``)."""

    @property
    def stage_name(self) -> str:
        return self.stage.name

    def loss_weight(self, name: str, default: float = 1.0) -> float:
        return float(self.stage.loss_weights.get(name, default))

    def metric_name(self, name: str) -> str:
        if self._in_curriculum and not name.startswith(f"{self.stage.name}/"):
            return f"{self.stage.name}/{name}"
        return name

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        super().log(self.metric_name(name), value, *args, **kwargs)

    # ------------------------------------------------------------- optimizers
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            from .health import HealthError

            raise HealthError(
                f"stage {self.stage.name!r} has no trainable parameters (trainable globs {self.stage.trainable}); "
                "a lazily built part may not exist yet or the globs match nothing (F09)"
            )
        spec = self.stage.optimizer
        optimizer = spec.build(self.param_groups(params), lr=spec.scaled_lr(self._global_batch()))
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        scheduler = spec.build_scheduler(optimizer, total)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def param_groups(self, params: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
        """Split the trainable ``params`` into optimizer groups (override point). A group may carry
        ``"fixed_lr": True`` (the scheduler leaves it alone) or its own ``lr``. Default: one group."""
        return [{"params": params}]

    def _global_batch(self) -> int | None:
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        batch = getattr(dm, "batch_size", None)
        if trainer is None or not batch:
            return None
        return int(batch) * int(trainer.world_size) * int(trainer.accumulate_grad_batches)

    # --------------------------------------------------------- lazy building
    def dry_run(self, batch: Any) -> None:
        """A forward pass that builds every lazy part (called under ``torch.no_grad``). Override if needed."""
        self(batch)

    # ------------------------------------------------------------ deployment
    def export_parts(self, batch: Any) -> dict[str, Any]:
        """The parts ``lit-exp export`` exports, built on ``batch``: ``{name: core.export.ExportPart}`` (plain-tensor
        modules in eval mode, example inputs, post-processing outside the graph). Default: none (an error)."""
        from .errors import ConfigError

        raise ConfigError(f"{type(self).__name__} names no exportable parts: define export_parts(batch) -> "
                          "{name: ExportPart} (lit_experiments.deploy.export) to use `lit-exp export`")

    # ---------------------------------------------------------------- health
    def track(
        self,
        *,
        targets: dict[str, torch.Tensor | tuple[torch.Tensor, Any]] | None = None,
        representations: dict[str, torch.Tensor] | None = None,
        losses: dict[str, torch.Tensor] | None = None,
        sources: dict[str, Any] | None = None,
    ) -> None:
        """Declare tensors for the TrainingHealth guard. Cheap no-op outside its first-steps window.

        Args:
            targets: tensors a loss regresses to. A target must not require grad (F01). Give its source as
                ``{"name": (tensor, source)}`` (or through ``sources``) and the guard also fails when the
                source has a parameter trainable in this stage, which ``no_grad`` hides: e.g.
                ``self.track(targets={"recon_target": (target, self.projection)})``.
            representations: ``(B, ...)`` tensors that must differ across the batch (collapse check).
            losses: loss terms as they enter the loss (with their graph): a detached term is an error (F07).
            sources: ``{"target name": source}``; a source is a sub-module, its dotted name, a parameter /
                tensor, or a list of these.
        """
        if not self._tracking:
            return
        if targets:
            plain: dict[str, torch.Tensor] = {}
            for name, value in targets.items():
                if isinstance(value, tuple):
                    if len(value) != 2:
                        raise ValueError(f"track(targets={{{name!r}: ...}}): expected a tensor or a "
                                         f"(tensor, source) pair, got a tuple of {len(value)}")
                    value, source = value
                    self._tracked.setdefault("target_sources", {})[name] = source
                plain[name] = value
            self._tracked.setdefault("targets", {}).update(plain)
        if sources:
            unknown = sorted(set(sources) - set(targets or {}))
            if unknown:
                raise ValueError(f"track(sources=...): {unknown} name no target given in the same call; "
                                 f"targets: {sorted(targets or {})}")
            self._tracked.setdefault("target_sources", {}).update(sources)
        for kind, values in (("representations", representations), ("losses", losses)):
            if values:
                self._tracked.setdefault(kind, {}).update(values)

    def pop_tracked(self) -> dict[str, dict[str, Any]]:
        """What ``track`` collected since the last call: ``targets``, ``target_sources``, ``representations``,
        ``losses``."""
        tracked, self._tracked = self._tracked, {}
        return tracked

    @property
    def frozen(self) -> Any:
        """The run's frozen network: the datamodule's ``frozen`` part (it serves its outputs from a cache), or
        ``None`` before a trainer with a datamodule is attached. One name and one way in every study."""
        trainer = self._trainer
        return getattr(getattr(trainer, "datamodule", None), "frozen", None) if trainer is not None else None

    # -------------------------------------------------------------- outputs
    @property
    def run_dir(self) -> Path:
        if self._run_dir is not None:
            return self._run_dir
        trainer = self._trainer
        root = getattr(trainer, "run_dir", None) or (trainer.default_root_dir if trainer else ".")
        return Path(root)

    def _wandb(self):
        trainer = self._trainer
        for logger in (trainer.loggers if trainer is not None else []):
            if type(logger).__name__ == "WandbLogger":
                return logger
        return None

    def _is_rank_zero(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def log_figure(self, name: str, fig: Any) -> Path | None:
        """Save a matplotlib figure as PNG under ``run_dir/figures/<stage>/`` and to wandb when on."""
        import matplotlib.pyplot as plt

        path = None
        if self._is_rank_zero():
            path = self.run_dir / "figures" / self.stage.name / f"{name.replace('/', '_')}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=100, bbox_inches="tight")
            wb = self._wandb()
            if wb is not None:
                wb.log_image(key=self.metric_name(f"figures/{name}"), images=[str(path)])
        plt.close(fig)
        return path

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> Path | None:
        """Write rows as CSV under ``run_dir/tables/<stage>/`` and as a wandb table when on."""
        if not rows or not self._is_rank_zero():
            return None
        path = self.run_dir / "tables" / self.stage.name / f"{name.replace('/', '_')}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        wb = self._wandb()
        if wb is not None:
            wb.log_table(key=self.metric_name(f"tables/{name}"), columns=columns,
                         data=[[row.get(c) for c in columns] for row in rows])
        return path

    def add_results(self, section: str, values: dict[str, Any]) -> None:
        """Values merged into ``results.json[section]`` when the run writes it (numbers, lists, dicts)."""
        clean = json.loads(json.dumps(values, default=_to_jsonable))
        self.extra_results.setdefault(section, {}).update(clean)


    def add_reference(self, metric: str, name: str, value: Any, kind: str = "floor", what: str = "") -> None:
        """A floor or reference row beside headline ``metric`` in ``results.json["references"]`` (F49); a row of the
        same name is replaced."""
        from .results import REFERENCES, reference_row

        value = None if value is None else float(value.item() if hasattr(value, "item") else value)
        rows = [r for r in self.extra_results.setdefault(REFERENCES, {}).get(metric, []) if r["name"] != name]
        rows.append(reference_row(name, value, kind, what))
        self.extra_results[REFERENCES][metric] = rows

    def save_per_item(self, name: str, ids: list[Any], scores: dict[str, Any], meta: dict[str, Any] | None = None
                      ) -> Path | None:
        """Per-test-item scores (already gathered across ranks) into ``<run_dir>/per_item/<name>.json`` (F51)."""
        from .results import write_per_item

        if not self._is_rank_zero():
            return None
        clean = {k: [float(x) for x in (v.tolist() if hasattr(v, "tolist") else v)] for k, v in scores.items()}
        return write_per_item(self.run_dir, name, list(ids.tolist() if hasattr(ids, "tolist") else ids), clean, meta)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class StudyDataModule(L.LightningDataModule):
    """A LightningDataModule with an example batch for lazy builds and evaluation loaders that never pad (F37).

    DataLoader switches (issue 24), set from the YAML with ``trainer.loader: {pin_memory: true, ...}`` (every
    study) or a stage's ``data:``; the defaults leave a CPU run as it was:
    ``pin_memory`` (None: pin when the Trainer trains on a CUDA device), ``persistent_workers`` (None: when
    ``num_workers > 0``), ``prefetch_factor`` (None: PyTorch's 2 batches per worker). A datamodule that builds its
    own DataLoader passes :meth:`loader_kwargs`.
    """

    pin_memory: bool | None = None
    persistent_workers: bool | None = None
    prefetch_factor: int | None = None

    def __init__(self, batch_size: int = 32, num_workers: int = 0, eval_batch_size: int | None = None,
                 fold: dict[str, Any] | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size
        self.fold_spec = fold  # {"file": <cv>/folds.json, "index": k}, given by `lit-exp cv`
        self.fold_info: dict[str, Any] | None = None
        self.split_info: dict[str, Any] | None = None  # core.splits.check_disjoint's record -> results["splits"]
        self._fold: tuple[list[int], list[int]] | None = None

    # ----------------------------------------------------------------- folds (`lit-exp cv`, core/folds.py)
    def fold_pool(self) -> tuple[int, Any]:
        """``(n_samples, labels)`` of the pool the cv folds split: labels ``(N,)`` class ids, ``(N, C)`` 0/1
        multi-label, or ``None`` (plain k-fold). The held-out test split is not part of the pool."""
        raise NotImplementedError(f"{type(self).__name__} defines no fold_pool(): return (n_samples, labels or "
                                  "None) of its train pool and split it with self.fold_split(pool) in setup to "
                                  "run `lit-exp cv` on it")

    def use_fold(self, train_idx: list[int], val_idx: list[int], info: dict[str, Any]) -> None:
        """Train on ``pool[train_idx]`` and validate on ``pool[val_idx]`` (honoured by :meth:`fold_split`)."""
        self._fold = (list(train_idx), list(val_idx))
        self.fold_info = dict(info)

    def fold_split(self, pool: Dataset) -> tuple[Dataset, Dataset] | None:
        """The fold's ``(train, val)`` subsets of ``pool`` (``None`` without a fold). Call it in ``setup``:
        it loads the ``fold`` init argument (checking the data fingerprint) and records ``folds`` in
        results.json through the module's ``add_results``."""
        from torch.utils.data import Subset

        if self._fold is None and self.fold_spec:
            from .folds import load_fold

            self.use_fold(*load_fold(self, self.fold_spec))
        if self._fold is None:
            return None
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if module is not None and hasattr(module, "add_results") and self.fold_info:
            module.add_results("folds", self.fold_info)
        return Subset(pool, self._fold[0]), Subset(pool, self._fold[1])

    def example_batch(self) -> Any:
        """A small batch for LazyBuild's dry run. Default: the first training batch."""
        if getattr(self, "_example", None) is None:
            self.setup("fit")
            self._example = next(iter(self.train_dataloader()))
        return self._example

    def predict_dataloader(self) -> Any:
        """``lit-exp predict`` runs on the test split by default (the study's ``test_dataloader``)."""
        from lightning.pytorch.utilities.model_helpers import is_overridden

        if not is_overridden("test_dataloader", self, StudyDataModule):
            raise NotImplementedError(f"{type(self).__name__} has neither predict_dataloader nor test_dataloader: "
                                      "define one of them to run `lit-exp predict`")
        self.setup("test")
        return self.test_dataloader()

    def loader_kwargs(self, train: bool = True, num_workers: int | None = None) -> dict[str, Any]:
        """``num_workers`` and the DataLoader switches (class docstring) for a loader of ``num_workers`` workers (default
        the datamodule's). A switch at its default adds no key beyond ``persistent_workers`` of a training loader (as
        before), so a CPU run's DataLoader is built exactly as it was; evaluation loaders keep their workers only when
        ``persistent_workers`` is set true."""
        workers = int(self.num_workers if num_workers is None else num_workers)
        kwargs: dict[str, Any] = {"num_workers": workers}
        persistent = self.persistent_workers
        if train:
            kwargs["persistent_workers"] = workers > 0 if persistent is None else bool(persistent) and workers > 0
        elif persistent and workers > 0:
            kwargs["persistent_workers"] = True
        pin = self.pin_memory
        if pin is None:
            accelerator = getattr(self.trainer, "accelerator", None) if self.trainer is not None else None
            pin = type(accelerator).__name__ == "CUDAAccelerator"
        if pin:
            kwargs["pin_memory"] = True
        if self.prefetch_factor is not None and workers > 0:
            kwargs["prefetch_factor"] = int(self.prefetch_factor)
        return kwargs

    def train_loader(self, dataset: Dataset, shuffle: bool = True, **kwargs: Any) -> DataLoader:
        kwargs.setdefault("batch_size", self.batch_size)
        kwargs.setdefault("num_workers", self.num_workers)
        for key, value in self.loader_kwargs(True, kwargs["num_workers"]).items():
            kwargs.setdefault(key, value)
        return DataLoader(dataset, shuffle=shuffle, **kwargs)

    def eval_loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        """Evaluation loader; under DDP each rank gets a disjoint, un-padded share of the samples (F37)."""
        kwargs.setdefault("batch_size", self.eval_batch_size or self.batch_size)
        kwargs.setdefault("num_workers", self.num_workers)
        for key, value in self.loader_kwargs(False, kwargs["num_workers"]).items():
            kwargs.setdefault(key, value)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            kwargs["sampler"] = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(dataset, shuffle=False, **kwargs)
