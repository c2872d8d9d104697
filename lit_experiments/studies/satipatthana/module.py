"""SatipatthanaModule: the 4-stage curriculum (adapter, samatha, vipassana, decoder) as one StudyModule.

Stage names select the loss (``on_stage``); what trains is decided by the YAML's ``trainable`` globs, the
learning rate per stage by its ``optimizer`` (F12). Batches: see ``datamodule.py``.

* adapter:   ``x -> adapter -> z -> recon_decoder``; MSE.
* samatha:   stability (from ``stability_pair``, F07) + recon + label guidance + probe diversity (F16)
             + optional void energy margin.
* vipassana: BCE of trust over the clean / augmented / drunk / mismatch / void paths, built from the same
             batch with the configured ratios (F13); Samatha runs without gradients.
* decoder:   CE of the task decoder on ``[s*; v_ctx]`` (logits unsquashed, F18).
* fit:       plain ``lit-exp fit``: all of the above at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lit_experiments.core.specs import OptimSpec, StageSpec
from lit_experiments.core.study import StudyModule

from . import losses as L
from .components import DrunkConfig, SamathaOutput, Sati, TaskDecoder, Vicara, Vitakka
from .components.vipassana import VipassanaInput, VipassanaOutput
from .evaluation import BaselineSpec, EvalCollector, plots, train_baseline

STAGES = ("adapter", "samatha", "vipassana", "decoder", "fit")
DEFAULT_RATIOS = {"clean": 0.3, "augmented": 0.25, "drunk": 0.15, "mismatch": 0.15, "void": 0.15}
STAGE_ARGS = {"path_ratios", "augment_std", "void_margin"}


@dataclass
class PathsOutput:
    """Stage-2 batch: one row per (path, sample).

    Attributes:
        trust_logit: (N,) trust logits, with grad into Vipassana. targets: (N,) trust targets.
        path: (N,) index into ``losses.PATHS``. sizes: samples per path (what the ratios produced).
        conformity_logit / confidence_logit: v4.1 heads, else None.
    """

    trust_logit: torch.Tensor
    targets: torch.Tensor
    path: torch.Tensor
    sizes: dict[str, int]
    conformity_logit: torch.Tensor | None = None
    confidence_logit: torch.Tensor | None = None


class SatipatthanaModule(StudyModule):
    """Adapter -> Samatha (Vitakka, Vicara, Sati) -> Vipassana -> task decoder.

    Args:
        adapter: input -> z (``MLPAdapter`` / ``CNNAdapter``).
        vitakka / vicara / sati: the Samatha parts.
        vipassana: ``VipassanaV40`` or ``VipassanaV41``.
        recon_decoder: state -> input reconstruction (``MLPDecoder`` / ``ConvDecoder``).
        task_decoder: ``TaskDecoder`` on ``[s*; v_ctx]``.
        num_classes: classes of the task (sizes the label-guidance head).
        label_guidance: add a linear head on s* trained with CE in the samatha stage.
        drunk: drunk-mode constants (F17).
        path_ratios: stage-2 path ratios (F13); a stage's ``args.path_ratios`` overrides them.
        augment_std: input noise std at severity 1 on the augmented path.
        void_margin: margin of the stage-1 void energy term (``log1p`` energy units).
        baseline: the plain model trained on the same split at test time.
        optimizer: the optimizer of a plain ``fit``.
    """

    headline_metrics: ClassVar[list[str]] = ["test/acc", "test/baseline_acc", "test/trust_clean", "test/trust_drunk",
                                             "test/trust_void", "test/trust_auroc", "test/psnr"]
    loss_lower_bounds: ClassVar[dict[str, float]] = {"stability": 0.0, "recon": 0.0, "trust_bce": 0.0,
                                                      "task_ce": 0.0, "guidance": 0.0}

    def __init__(self, adapter: nn.Module, vitakka: Vitakka, vicara: Vicara, vipassana: nn.Module,
                 recon_decoder: nn.Module, task_decoder: TaskDecoder, num_classes: int, sati: Sati | None = None,
                 label_guidance: bool = True, drunk: DrunkConfig | None = None,
                 path_ratios: dict[str, float] | None = None, augment_std: float = 0.3, void_margin: float = 1.0,
                 baseline: BaselineSpec | None = None, optimizer: OptimSpec | None = None) -> None:
        super().__init__(optimizer=optimizer)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        if augment_std < 0:
            raise ValueError(f"augment_std={augment_std} must be >= 0")
        self.adapter, self.vitakka, self.vicara = adapter, vitakka, vicara
        self.sati = sati or Sati()
        self.vipassana, self.recon_decoder, self.task_decoder = vipassana, recon_decoder, task_decoder
        dim = vitakka.probes.shape[1]
        self.aux_head = nn.Linear(dim, num_classes) if label_guidance else None
        self.num_classes = num_classes
        self.drunk = drunk or DrunkConfig()
        self.default_ratios = dict(path_ratios or DEFAULT_RATIOS)
        L.path_sizes(64, self.default_ratios)  # validates names and values now, not at stage 2
        self.default_augment_std, self.default_void_margin = augment_std, void_margin
        self.baseline = baseline or BaselineSpec()
        self._configure_stage_args({})
        self._collector: EvalCollector | None = None

    # ------------------------------------------------------------------ stages
    def on_stage(self, stage: StageSpec) -> None:
        if stage.name not in STAGES:
            raise ValueError(f"SatipatthanaModule: stage name {stage.name!r} unknown; expected one of {STAGES}")
        self._configure_stage_args(stage.args)

    def _configure_stage_args(self, args: dict[str, Any]) -> None:
        unknown = set(args) - STAGE_ARGS
        if unknown:
            raise ValueError(f"stage args {sorted(unknown)} unknown; expected a subset of {sorted(STAGE_ARGS)}")
        self.path_ratios = dict(args.get("path_ratios", self.default_ratios))
        L.path_sizes(64, self.path_ratios)
        self.augment_std = float(args.get("augment_std", self.default_augment_std))
        self.void_margin = float(args.get("void_margin", self.default_void_margin))

    # ----------------------------------------------------------------- forward
    def samatha(self, x: torch.Tensor, drunk: bool = False, generator: torch.Generator | None = None) -> SamathaOutput:
        z = self.adapter(x)
        return self.sati(self.vicara, self.vitakka(z), self.drunk if drunk else None, generator)

    def _samatha_grad(self) -> bool:
        return any(p.requires_grad for m in (self.adapter, self.vitakka, self.vicara) for p in m.parameters())

    def analyse(self, out: SamathaOutput, x: torch.Tensor, s_star: torch.Tensor | None = None) -> VipassanaOutput:
        """Vipassana on a Samatha run (``s_star`` replaces ``out.s_star``: the mismatch path)."""
        s_star = out.s_star if s_star is None else s_star
        with torch.no_grad():
            recon_error = L.per_sample_recon_error(self.recon_decoder(s_star), x)
        inp = VipassanaInput(s_star=s_star, santana=out.santana, probes=self.vitakka.normalized_probes,
                             recon_error=recon_error)
        return self.vipassana(inp)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference: class logits, trust and the converged state of every sample."""
        out = self.samatha(x)
        vip = self.analyse(out, x)
        return {"logits": self.task_decoder(out.s_star, vip.v_ctx), "trust": vip.trust, "s_star": out.s_star}

    def dry_run(self, batch: dict[str, torch.Tensor]) -> None:
        """Reaches every part, lazy ones included (F09): forward, reconstruction and guidance heads."""
        out = self.samatha(batch["x"])
        self.recon_decoder(self.adapter(batch["x"]))
        if self.aux_head is not None:
            self.aux_head(out.s_star)
        self.task_decoder(out.s_star, self.analyse(out, batch["x"]).v_ctx)

    # ------------------------------------------------------------------ losses
    def adapter_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.adapter(batch["x"])
        self.track(targets={"x": batch["x"]}, representations={"z": z})
        return {"recon": L.recon_loss(self.recon_decoder(z), batch["x"])}

    def samatha_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        out = self.samatha(x)
        terms = {"stability": L.stability_loss(out.stability_pair),
                 "recon": L.recon_loss(self.recon_decoder(out.s_star), x),
                 "diversity": L.probe_diversity_loss(self.vitakka.probes)}
        if self.aux_head is not None:
            terms["guidance"] = F.cross_entropy(self.aux_head(out.s_star), batch["y"])
        if self.loss_weight("void_energy", 0.0) > 0:
            void = self.samatha(batch["x_void"])
            terms["void_energy"] = L.void_energy_loss(out.avg_energy, void.avg_energy, self.void_margin)
        self.track(targets={"x": x}, representations={"s_star": out.s_star})
        return terms

    def paths(self, x: torch.Tensor, x_void: torch.Tensor, ratios: dict[str, float],
              generator: torch.Generator | None = None, require_clean: bool = True) -> PathsOutput:
        """Split one batch into the stage-2 paths with exactly the configured ratios (F13)."""
        sizes = L.path_sizes(x.shape[0], ratios, require_clean=require_clean)
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        chunks = dict(zip(L.PATHS, torch.split(perm, [sizes[p] for p in L.PATHS])))
        logits, targets, conf, confi, path_ids = [], [], [], [], []

        def add(path: str, vip: VipassanaOutput, target: torch.Tensor) -> None:
            logits.append(vip.trust_logit)
            targets.append(target)
            conf.append(vip.conformity_logit)
            confi.append(vip.confidence_logit)
            path_ids.append(torch.full_like(target, L.PATHS.index(path), dtype=torch.long))

        for path in ("clean", "augmented", "drunk", "void", "mismatch"):
            idx = chunks[path]
            if len(idx) == 0:
                continue
            xp = (x_void if path == "void" else x)[idx]
            target = torch.full((len(idx),), 1.0 if path == "clean" else 0.0, device=x.device)
            if path == "augmented":
                severity = torch.rand(len(idx), generator=generator).to(x)
                noise = torch.randn(xp.shape, generator=generator).to(x)
                xp = xp + self.augment_std * severity.view(-1, *([1] * (xp.dim() - 1))) * noise
                target = (1.0 - severity).clamp(0.0, 1.0)
            with torch.set_grad_enabled(self._samatha_grad() and torch.is_grad_enabled()):
                out = self.samatha(xp, drunk=path == "drunk", generator=generator)
            shuffled = None
            if path == "mismatch":  # s* of another sample with this sample's trajectory
                shuffled = out.s_star.roll(1, dims=0) if len(idx) > 1 else out.s_star + 1.0
            add(path, self.analyse(out, xp, s_star=shuffled), target)
        has_extra = all(c is not None for c in conf)
        return PathsOutput(trust_logit=torch.cat(logits), targets=torch.cat(targets), path=torch.cat(path_ids),
                           sizes=sizes, conformity_logit=torch.cat(conf) if has_extra and conf else None,
                           confidence_logit=torch.cat(confi) if has_extra and confi else None)

    def vipassana_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.paths(batch["x"], batch["x_void"], self.path_ratios)
        terms = {"trust_bce": L.trust_bce(p.trust_logit, p.targets)}
        if p.conformity_logit is not None:
            terms["conformity_bce"] = L.trust_bce(p.conformity_logit, p.targets)
            terms["confidence_bce"] = L.trust_bce(p.confidence_logit, p.targets)
        self.track(targets={"trust_target": p.targets}, losses=dict(terms))
        return terms

    def decoder_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        with torch.set_grad_enabled(self._samatha_grad() and torch.is_grad_enabled()):
            out = self.samatha(x)
        logits = self.task_decoder(out.s_star, self.analyse(out, x).v_ctx)
        self.track(representations={"s_star": out.s_star})
        return {"task_ce": F.cross_entropy(logits, batch["y"]), "acc": (logits.argmax(1) == batch["y"]).float().mean()}

    def stage_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        name = self.stage.name
        if name == "fit":
            return {**self.samatha_loss(batch), **self.vipassana_loss(batch), **self.decoder_loss(batch)}
        return getattr(self, f"{name}_loss")(batch)

    def _total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        defaults = {"stability": 0.1, "diversity": 0.1, "void_energy": 0.0}
        total = sum(self.loss_weight(k, defaults.get(k, 1.0)) * v for k, v in terms.items() if k != "acc")
        return total

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.stage_terms(batch)
        loss = self._total(terms)
        self.track(losses={k: v for k, v in terms.items() if k != "acc"})
        bs = batch["x"].shape[0]
        for k, v in terms.items():
            self.log(f"train/{k}", v.detach(), batch_size=bs)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        terms = self.stage_terms(batch)
        bs = batch["x"].shape[0]
        for k, v in terms.items():
            self.log(f"val/{k}", v, batch_size=bs)
        self.log("val/loss", self._total(terms), batch_size=bs)

    # -------------------------------------------------------------------- test
    def on_test_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        self._collector = EvalCollector(void_kinds=list(getattr(dm, "void_kinds", [])))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        from .evaluation.report import psnr

        c, x = self._collector, batch["x"]
        gen = torch.Generator().manual_seed(10_000 + batch_idx)
        clean = self.samatha(x)
        vip = self.analyse(clean, x)
        c.logits.append(self.task_decoder(clean.s_star, vip.v_ctx).cpu())
        c.y.append(batch["y"].cpu())
        c.x.append(x.cpu())
        c.x_void.append(batch["x_void"].cpu())
        c.void_kind.append(batch["void_kind"].cpu())
        if x.dim() == 4:
            c.psnr.append(psnr(self.recon_decoder(clean.s_star), x).cpu())
        for path in L.PATHS:  # every path on the whole batch
            p = self.paths(x, batch["x_void"], {path: 1.0}, generator=gen, require_clean=False)
            c.trust[path].append(torch.sigmoid(p.trust_logit[p.path == L.PATHS.index(path)]).cpu())
        c.add_trajectories("clean", clean.santana.step_energy)
        c.add_trajectories("drunk", self.samatha(x, drunk=True, generator=gen).santana.step_energy)
        c.add_trajectories("void", self.samatha(batch["x_void"]).santana.step_energy)

    def on_test_epoch_end(self) -> None:
        c = self._collector
        dm = self.trainer.datamodule
        base = dm.baseline_data() if hasattr(dm, "baseline_data") else None
        x_test = c.cat(c.x)
        preds = train_baseline(self.baseline, base["x"], base["y"], x_test, self.num_classes) if base else None
        metrics = c.metrics(preds)
        for k, v in metrics.items():
            self.log(f"test/{k}", v)
        self.add_results("test", {**{f"test/{k}": v for k, v in metrics.items()}, "test/n_test": len(x_test),
                                  "test/void_kinds": c.void_kinds})
        self.log_figure("trust_histograms", plots.trust_histograms({k: c.cat(v) for k, v in c.trust.items()}))
        self.log_figure("energy_trajectories", plots.energy_trajectories({k: c.cat_steps(v) for k, v in c.energy.items()}))
        if x_test.dim() == 2 and x_test.shape[1] == 2:
            self.log_figure("decision_boundary", plots.decision_boundary(
                self._grid_predict, x_test, c.cat(c.y), c.cat(c.x_void)))

    def _grid_predict(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = self(points.to(self.device))
        return torch.softmax(out["logits"], dim=1)[:, 1].cpu(), out["trust"].cpu()
