"""SatipatthanaModule: the 4-stage curriculum (adapter, samatha, vipassana, decoder) as one StudyModule.

Stage names select the loss (``on_stage``); what trains is decided by the YAML's ``trainable`` globs, the
learning rate per stage by its ``optimizer`` (F12). Batches: see ``datamodule.py``.

* adapter:   ``x -> adapter -> z -> recon_decoder``; MSE.
* samatha:   stability (from ``stability_pair``, F07) + recon + label guidance + probe diversity (F16)
             + optional void energy margin.
* vipassana: BCE of trust over the clean / augmented / drunk / mismatch / void paths, built from the same
             batch with the configured ratios (F13); Samatha runs without gradients.
* decoder:   CE of the task decoder on ``[s*; v_ctx]`` (logits unsquashed, F18).
* baseline:  CE of the plain baseline part (``components/baselines.py``) on the same train split.
* fit:       plain ``lit-exp fit``: all of the above at once.

Every stage's loss dict holds the weighted total under ``loss`` beside its terms; a term's weight is the stage's
``loss_weights[<term>]``, else the module's ``<term>_weight`` (1 for a term without one).

Sizes are said once: the adapter's ``dim`` is the state size; Vitakka, Vicara, Vipassana, the decoders and the
guidance head get theirs in ``dry_run`` (``build(...)`` of each part, in a fixed order, from the adapter, from
Vitakka's ``num_probes``, from the batch's input shape and from ``num_classes``), before freezing (F09).

Test: every number goes through a torchmetrics ``Metric`` (``evaluation.py``), reduced across ranks
(F44); each sample's test noise is seeded by its index in the split and the run's seed (``core.seeding.run_seed``,
F50), so no number depends on the batch or the rank a sample lands in. Validation terms are logged with
``sync_dist=True`` (weighted mean over ranks).

Floors and references (F49) in results.json ``references``, on the same test samples by the same metric classes:
``test/acc`` beside the majority training class (floor) and the plain baseline trained in its own stage
(reference); ``test/trust_auroc`` beside one constant trust for every input (floor, 0.5) and the baseline's max
softmax probability (reference); ``test/trust_auroc_drunk`` beside the constant trust; ``test/psnr`` (images)
beside the mean training image. Per-sample correctness and trust go to ``<run_dir>/per_item/satipatthana_test.json``
for the paired bootstrap (F51).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_experiments.core.seeding import run_seed
from lit_experiments.core.specs import OptimSpec, StageSpec, stage_args
from lit_experiments.core.study import StudyModule

from . import evaluation
from . import losses as L
from .components import PerSampleNoise, SamathaOutput, Sati, TaskDecoder, Vicara, Vitakka
from .components.vipassana import VipassanaInput, VipassanaOutput
from .evaluation import SatipatthanaTestMetrics

STAGES = ("adapter", "samatha", "vipassana", "decoder", "baseline", "fit")
DEFAULT_RATIOS = {"clean": 0.3, "augmented": 0.25, "drunk": 0.15, "mismatch": 0.15, "void": 0.15}
NOT_LOSSES = ("loss", "acc", "baseline_acc")  # the total and terms that are logged but never summed into it


@dataclass
class SatipatthanaStageArgs:
    """Defaults of the stage arguments; a stage's ``args:`` overrides any of them for that stage.

    Attributes:
        path_ratios: stage-2 path ratios (F13), normalised to sum 1; a clean path is required.
        augment_std: input noise std at severity 1 on the augmented path.
        void_margin: margin of the stage-1 void energy term (``log1p`` energy units).
    """

    path_ratios: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATIOS))
    augment_std: float = 0.3
    void_margin: float = 1.0

    def __post_init__(self) -> None:
        if self.augment_std < 0:
            raise ValueError(f"stage args: augment_std={self.augment_std} must be >= 0")
        self.path_ratios = dict(self.path_ratios)
        L.path_sizes(64, self.path_ratios)  # names, values and the clean path checked now, not at stage 2
        self.augment_std, self.void_margin = float(self.augment_std), float(self.void_margin)


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
        adapter: input -> z (``MLPAdapter`` / ``CNNAdapter``); its ``dim`` is the state size of every other part.
        vitakka / vicara / sati: the Samatha parts (drunk-mode constants live in ``sati.drunk``, F17).
        vipassana: ``VipassanaV40`` or ``VipassanaV41``.
        recon_decoder: state -> input reconstruction (``ReconMLPDecoder`` / ``ConvDecoder``).
        task_decoder: ``TaskDecoder`` on ``[s*; v_ctx]``; its input size (state size + ``vipassana.context_dim``)
            and its classes are filled in here.
        num_classes: classes of the task (sizes the task decoder, the label-guidance head and the baseline).
        label_guidance: add a linear head on s* trained with CE in the samatha stage.
        stage_args: defaults of the stage arguments (path ratios, augment std, void margin).
        baseline: a plain model (``MLPBaseline`` / ``CNNBaseline``) trained in the ``baseline`` stage and scored
            at test time as ``test/baseline_acc``; None: no baseline.
        stability_weight / diversity_weight / void_energy_weight: default weights of those terms (a stage's
            ``loss_weights`` overrides them; 0 for ``void_energy`` leaves the term out).
        optimizer: the optimizer of a plain ``fit``.
    """

    # the baseline is a reference row beside test/acc (results.json ``references``); trust per path stays in ``test``
    headline_metrics: ClassVar[list[str]] = ["test/acc", "test/trust_auroc", "test/trust_auroc_drunk", "test/psnr"]
    loss_lower_bounds: ClassVar[dict[str, float]] = {"stability": 0.0, "recon": 0.0, "trust_bce": 0.0,
                                                      "task_ce": 0.0, "guidance": 0.0, "baseline_ce": 0.0}

    def __init__(self, adapter: nn.Module, vitakka: Vitakka, vicara: Vicara, vipassana: nn.Module,
                 recon_decoder: nn.Module, task_decoder: TaskDecoder, num_classes: int, sati: Sati | None = None,
                 label_guidance: bool = True, stage_args: SatipatthanaStageArgs | None = None,
                 baseline: nn.Module | None = None, stability_weight: float = 0.1, diversity_weight: float = 0.1,
                 void_energy_weight: float = 0.0, optimizer: OptimSpec | None = None) -> None:
        super().__init__(optimizer=optimizer)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        weights = {"stability": stability_weight, "diversity": diversity_weight, "void_energy": void_energy_weight}
        bad = {f"{k}_weight": v for k, v in weights.items() if v < 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, got {bad}")
        self.default_weights = weights
        self.adapter, self.vitakka, self.vicara = adapter, vitakka, vicara
        self.sati = sati or Sati()
        self.vipassana, self.recon_decoder, self.task_decoder = vipassana, recon_decoder, task_decoder
        self.label_guidance = label_guidance
        self.aux_head: nn.Linear | None = None  # built in dry_run, after the other parts (their init order, F09)
        self._init_rng = torch.get_rng_state()  # the parts' initial weights come from here (see build)
        self._built = False
        self.num_classes = num_classes
        for name, part in (("task_decoder", task_decoder), ("baseline", baseline)):
            n = getattr(part, "num_classes", None)
            if part is not None and n is not None and n != num_classes:
                raise ValueError(f"{name}.num_classes={n} differs from the module's num_classes={num_classes}")
        if baseline is not None and getattr(baseline, "num_classes", 0) is None:
            baseline.num_classes = num_classes
        self.baseline = baseline
        self.stage_defaults = stage_args or SatipatthanaStageArgs()
        self.on_stage(self.stage)
        self.test_metrics: SatipatthanaTestMetrics | None = None
        self._noise_base = 0  # set per run at the test's start (F50)

    # ------------------------------------------------------------------ stages
    def on_stage(self, stage: StageSpec) -> None:
        if stage.name not in STAGES:
            raise ValueError(f"SatipatthanaModule: stage name {stage.name!r} unknown; expected one of {STAGES}")
        args = stage_args(stage, self.stage_defaults)  # an unknown key is an error naming it
        self.path_ratios, self.augment_std, self.void_margin = args.path_ratios, args.augment_std, args.void_margin

    # ----------------------------------------------------------------- forward
    def samatha(self, x: torch.Tensor, drunk: bool = False,
                generator: torch.Generator | PerSampleNoise | None = None) -> SamathaOutput:
        return self.sati(self.vicara, self.vitakka(self.adapter(x)), drunk, generator)

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

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """``lit-exp predict``: class logits, trust and s* per sample, with the sample index and label."""
        out = self(batch["x"])
        return {**out, **{k: batch[k] for k in ("index", "y") if k in batch}}

    PARTS: ClassVar[tuple[str, ...]] = ("adapter", "vitakka", "vicara", "vipassana", "recon_decoder", "task_decoder")

    def build(self, x: torch.Tensor) -> None:
        """Build every part for inputs like ``x`` (once), in a fixed order: each size comes from the input's shape,
        the adapter's ``dim``, Vitakka's ``num_probes``, Vipassana's ``context_dim`` or ``num_classes``.

        The parts draw their initial weights from the global RNG as it stood when the module was constructed
        (after ``seed_everything``), not from wherever the data left it (a training void pool larger than the
        data draws its pairing from the global RNG while the example batch is read). The same draws are then
        repeated on throwaway copies from the current state, so every later draw (training order of voids,
        stage-2 paths) reads the stream a build at construction would leave: the initialisation and the run do
        not depend on when the dry run happens.
        """
        if self._built:
            return
        shape, device = tuple(x.shape[1:]), x.device
        current = torch.get_rng_state()
        blanks = copy.deepcopy({name: getattr(self, name) for name in self.PARTS})
        torch.set_rng_state(self._init_rng)
        built = self._build_parts({name: getattr(self, name) for name in self.PARTS}, shape, device)
        self.aux_head = built.get("aux_head")
        torch.set_rng_state(current)
        self._build_parts(blanks, shape, torch.device("cpu"))  # advance the global RNG by the same draws
        self._built = True

    def _build_parts(self, parts: dict[str, nn.Module], shape: tuple[int, ...], device: torch.device
                     ) -> dict[str, nn.Module]:
        parts["adapter"].build(shape, device)
        dim = parts["adapter"].dim
        parts["vitakka"].build(dim, device)
        parts["vicara"].build(dim, parts["vitakka"].num_probes, device)
        parts["vipassana"].build(dim, device)
        parts["recon_decoder"].build(dim, shape, device)
        context = parts["vipassana"].context_dim if parts["task_decoder"].use_context else 0
        parts["task_decoder"].build(dim + context, self.num_classes, device)
        if self.label_guidance:
            parts["aux_head"] = nn.Linear(dim, self.num_classes).to(device)
        return parts

    def dry_run(self, batch: dict[str, torch.Tensor]) -> None:
        """Builds every part (:meth:`build`), then reaches each of them, lazy ones included (F09): forward,
        reconstruction and guidance heads."""
        self.build(batch["x"])
        out = self.samatha(batch["x"])
        self.recon_decoder(self.adapter(batch["x"]))
        if self.aux_head is not None:
            self.aux_head(out.s_star)
        self.task_decoder(out.s_star, self.analyse(out, batch["x"]).v_ctx)
        if self.baseline is not None:
            self.baseline(batch["x"])

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
        if self.loss_weight("void_energy", self.default_weights["void_energy"]) > 0:
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

    def baseline_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.baseline is None:
            raise ValueError("stage 'baseline' needs a `baseline:` part (MLPBaseline / CNNBaseline) in the model")
        logits = self.baseline(batch["x"])
        if self.training and torch.is_grad_enabled() and hasattr(self.baseline, "trained_steps"):
            self.baseline.trained_steps += 1
        return {"baseline_ce": F.cross_entropy(logits, batch["y"]),
                "baseline_acc": (logits.argmax(1) == batch["y"]).float().mean()}

    def stage_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The stage's loss dict: the weighted total under ``loss``, then every term (and logged-only values)."""
        name = self.stage.name
        if name == "fit":
            terms = {**self.samatha_loss(batch), **self.vipassana_loss(batch), **self.decoder_loss(batch)}
            if self.baseline is not None:
                terms = {**terms, **self.baseline_loss(batch)}
        else:
            terms = getattr(self, f"{name}_loss")(batch)
        return {"loss": self._total(terms), **terms}

    def _total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        defaults = self.default_weights
        return sum(self.loss_weight(k, defaults.get(k, 1.0)) * v for k, v in terms.items() if k not in NOT_LOSSES)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.stage_terms(batch)
        self.track(losses={k: v for k, v in terms.items() if k not in NOT_LOSSES})
        bs = batch["x"].shape[0]
        for k, v in terms.items():
            self.log(f"train/{k}", v.detach(), prog_bar=k == "loss", batch_size=bs)
        return terms["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        terms = self.stage_terms(batch)
        bs = batch["x"].shape[0]
        for k, v in terms.items():  # sync_dist: the epoch value is the batch-size weighted mean over all ranks
            self.log(f"val/{k}", v, batch_size=bs, sync_dist=True)

    # -------------------------------------------------------------------- test
    def _baseline_scored(self) -> bool:
        b = self.baseline
        return b is not None and int(getattr(b, "trained_steps", torch.ones(()))) > 0

    def on_test_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        if self.baseline is not None and not self._baseline_scored():
            rank_zero_warn("SatipatthanaModule: the baseline never trained (no `baseline` stage ran); "
                           "test/baseline_acc is not reported")
        train = getattr(dm, "splits", {}).get("train")
        image = bool(getattr(dm, "is_image", False))
        majority = int(torch.bincount(train.y).argmax()) if train is not None else None
        mean_image = train.x.mean(0) if train is not None and image else None
        self.test_metrics = SatipatthanaTestMetrics(
            self.num_classes, list(getattr(dm, "void_kinds", [])), image=image,
            baseline=self._baseline_scored(), max_steps=self.sati.max_steps, majority_class=majority,
            mean_image=mean_image).to(self.device)
        self._noise_base = run_seed(None, "satipatthana/test_noise") << 24  # per-sample seeds differ per run (F50)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Every path on every sample; noise seeded per sample (``index``), mismatch from ``x_partner``."""
        x, index = batch["x"], batch["index"]
        clean = self.samatha(x)
        vip = self.analyse(clean, x)
        seeds = self._noise_base + index * 4
        aug_noise = PerSampleNoise(seeds + 1)
        severity = aug_noise.rand((len(x),)).to(x)
        xa = x + self.augment_std * severity.view(-1, *([1] * (x.dim() - 1))) * aug_noise.randn(x.shape).to(x)
        drunk = self.samatha(x, drunk=True, generator=PerSampleNoise(seeds + 2))
        void = self.samatha(batch["x_void"])
        partner = self.samatha(batch["x_partner"]).s_star  # s* of another sample with this sample's trajectory
        trust = {"clean": vip.trust, "augmented": self.analyse(self.samatha(xa), xa).trust,
                 "drunk": self.analyse(drunk, x).trust, "mismatch": self.analyse(clean, x, s_star=partner).trust,
                 "void": self.analyse(void, batch["x_void"]).trust}
        self.test_metrics.update(
            index=index, y=batch["y"], logits=self.task_decoder(clean.s_star, vip.v_ctx), trust=trust,
            void_kind=batch["void_kind"],
            energy={"clean": clean.santana.step_energy, "drunk": drunk.santana.step_energy,
                    "void": void.santana.step_energy},
            baseline_logits=self.baseline(x) if self._baseline_scored() else None,
            baseline_void_logits=self.baseline(batch["x_void"]) if self._baseline_scored() else None,
            recon=self.recon_decoder(clean.s_star) if x.dim() == 4 else None, x=x)

    def on_test_epoch_end(self) -> None:
        m = self.test_metrics
        metrics = m.compute()  # collective: synced across ranks
        samples = m.gathered()
        for k, v in metrics.items():
            self.log(f"test/{k}", v)
        self.add_results("test", {**{f"test/{k}": v for k, v in metrics.items()},
                                  "test/n_test": len(samples["trust_clean"])})
        self.add_results("test_info", {"void_kinds": m.void_kinds})  # names, not numbers: outside `test`
        self._add_references(metrics)
        self._save_per_item(samples)
        if self._is_rank_zero():
            self.log_figure("trust_histograms", evaluation.trust_histograms({p: samples[f"trust_{p}"] for p in L.PATHS}))
            keep = slice(0, 64)
            self.log_figure("energy_trajectories", evaluation.energy_trajectories(
                {p: samples[f"energy_{p}"][keep].T for p in ("clean", "drunk", "void")}))
            test = getattr(self.trainer.datamodule, "splits", {}).get("test")
            if test is not None and test.x.dim() == 2 and test.x.shape[1] == 2:
                self.log_figure("decision_boundary", evaluation.decision_boundary(self._grid_predict, test.x, test.y,
                                                                             test.x_void))
        self.test_metrics = None

    def _add_references(self, metrics: dict[str, float]) -> None:
        """Floor / reference rows beside the headline metrics (F49), from the same test samples."""
        rows = [("test/acc", "majority class", "majority_acc", "floor", "the most frequent training class, always"),
                ("test/acc", "baseline", "baseline_acc", "reference",
                 f"{type(self.baseline).__name__} trained on the same split in the baseline stage"),
                ("test/trust_auroc", "constant trust", "constant_trust_auroc", "floor",
                 "one trust value for every input (clean vs void)"),
                ("test/trust_auroc", "baseline max softmax", "baseline_msp_auroc", "reference",
                 "the baseline's max softmax probability as the trust score (clean vs void)"),
                ("test/trust_auroc_drunk", "constant trust", "constant_trust_auroc", "floor",
                 "one trust value for every input (clean vs drunk)"),
                ("test/psnr", "mean training image", "psnr_mean_image", "floor",
                 "the mean training image as every reconstruction")]
        for metric, name, key, kind, what in rows:
            if key in metrics and metric.split("/", 1)[1] in metrics:
                self.add_reference(metric, name, metrics[key], kind, what=what)

    def _save_per_item(self, samples: dict[str, torch.Tensor]) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        ids: list[Any] = samples["index"].tolist()
        known = getattr(dm, "split_ids", {}).get("test")
        if known is not None:
            ids = [known[i] for i in ids]  # position of each test sample in the loaded data set
        keys = ["correct", "baseline_correct", "majority_correct", "trust_clean", "trust_void", "trust_drunk"]
        self.save_per_item("satipatthana_test", ids, {k: samples[k] for k in keys if k in samples},
                           meta={"unit": "test sample", "correct": "1 when the task decoder's class is right"})

    def _grid_predict(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = self(points.to(self.device))
        return torch.softmax(out["logits"], dim=1)[:, 1].cpu(), out["trust"].cpu()
