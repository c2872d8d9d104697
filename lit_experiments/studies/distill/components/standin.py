"""The distill demo's stand-in teacher: a tiny ``Sam3Model`` trained on ShapesWorld concept prompts, cached.

No weights can be downloaded and a random SAM3 segments nothing, so the demo first trains a tiny
:class:`~.teacher.Sam3Teacher` (the class a real checkpoint loads) on ShapesWorld instance masks with the
study's set losses, saves it keyed by a hash of (config, data, training) and reuses it.

* A *unit* is (image, prompt). The prompt names a concept: a colour (``data["concept"] = "color"``, the
  default: the objects of that colour) or a shape category (``"category"``). With probability ``neg_p`` it
  names a concept absent from the image (a negative unit: no target, ``n = 0``), otherwise one present in it,
  whose instance masks (from ``instances``; fully occluded objects dropped) and boxes (normalised ``cxcywh``)
  are the targets.
* ``data``: ShapesWorld keyword arguments (``image_size``, ``max_objects``, ``colors``, ``size_range``...) plus
  ``n_train`` (training images), ``n_eval`` (held-out images), ``seed`` (the training world; the held-out world
  uses ``seed + 1``), ``neg_p`` and ``concept``. Held-out units: every concept present in an image (positive)
  and one absent concept per image (negative), so both presence classes exist.
* Sampling: ``paired`` (default) draws units in pairs of one image (a present concept, then another prompt),
  so ignoring the text cannot lower the loss; ``prompts_per_image > 1`` gives each image that many prompts and
  runs the vision encoder once per image. ``aux_weight > 0`` adds a throw-away linear head on the mean ViT
  token trained with BCE on the image's multi-hot concepts (a first-order signal for the vision encoder).
* Training runs under :func:`~lit_experiments.core.seeding.isolated_rng` with its own generator: the global
  RNGs are untouched, so a run's numbers do not depend on whether the stand-in was cached.

Measured (1 thread, seed 0, batch 16, lr 1e-3, paired, 64 px, held-out world, score threshold 0.5; AUROC = max
score of positive vs negative units; logs in the study's notes):

===================================================  =====  ===  ========  ===========  ======  =====
recipe                                               steps  s    miou_pos  presence F1  IL_MCC  AUROC
===================================================  =====  ===  ========  ===========  ======  =====
default: colour, 3 colours, <= 2 objects, 2 queries  600    64   0.57      0.84         0.73    n/a
same                                                 900    96   0.44      0.71         0.58    n/a
same, seed 1                                         900    103  0.51      0.78         0.65    n/a
same, init of ``Sam3Teacher(config)``                900    100  0.52      0.78         0.65    1.00
same, 1 query                                        900    104  0.79      1.00         1.00    1.00
same, 8 queries                                      1200   137  0.00      0.00         n/a     1.00
same, 8 queries, 32 px, batch 32                     1200   219  0.00      0.00         n/a     1.00
colour, 4 colours, <= 3 objects, 2 queries           900    98   0.58      0.85         0.72    1.00
category, <= 2 objects, 2 queries                    900    107  0.00      0.00         n/a     0.57
===================================================  =====  ===  ========  ===========  ======  =====

Vocabulary families (F53; ``python -m lit_experiments.studies.distill.components.standin_curve``, 1 thread, seed 0,
``docs/figures/distill/standin_curve_*.{json,png}``, ``miou_pos`` per family on the held-out world every 150
steps of one run): colour + generic words (object, thing, shape, item; the demo's teacher): colour 0.15 / 0.47 /
0.49 / 0.66 / 0.54 and generic 0.69 / 0.71 / 0.58 / 0.62 / 0.51 at steps 150 / 300 / 600 / 750 / 1200; colours +
shape categories + generic words: colour 0.51, generic 0.51, category 0.00-0.03 at every step up to 1500 (the
colour words do not pull the shape names off the plateau). The demo's world (2-3 objects, colour + generic words,
``standin_curve_demo``): colour 0.34 / 0.61 / 0.67 / 0.60 / 0.65 / 0.58, generic 0.40 / 0.46 / 0.56 / 0.62 / 0.61
/ 0.57 at steps 150 ... 900; with 3 queries colour stays at 0.17-0.38. Generic words are learned first (every object is the
target, a per-pixel "foreground" feature); shape names stay at chance.

Rows from "same, init of" down ran ``_fit`` on ``Sam3Teacher(config)`` (its default initialisation) rather
than through :func:`train_standin_teacher`. Colour prompts are grounded at once (presence probability 0.999
on positive, 0.001 on negative units); with 8 queries the queries stay interchangeable (every query scores
~1/8, so no score reaches 0.5) for the whole run, and 2 queries fix that. Run-to-run spread (seed, schedule
length) is about +-0.07 ``miou_pos``. Shape-category prompts stay on the prompt x image presence plateau
(presence BCE 0.693; AUROC 0.54-0.57 over 2 or 8 queries, paired / several-prompts-per-image /
auxiliary-head variants, up to 1500 steps of 64 at 32 px): a shape is not a per-pixel feature and the tiny
ViT learns it slowly.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lit_experiments.core import standins
from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import ShapesWorld
from lit_experiments.metrics.promptable import UnitStats, promptable_metrics, unit_stats

from .standin_bank import CONCEPTS, UnitBank, _world_kwargs
from .teacher import Sam3Teacher, tiny_config

CACHE_VERSION = 1
#: the default recipe (measured numbers in the module docstring)
DEFAULT_DATA: dict[str, Any] = {"n_train": 2048, "n_eval": 256, "seed": 0, "neg_p": 0.25, "paired": True,
                                "prompts_per_image": 1, "concept": "color", "generic": (), "colors": ("red", "green", "blue"),
                                "image_size": 64, "max_objects": 2, "size_range": (0.25, 0.45), "motion": False}
#: queries of the default stand-in: with 8 the queries stay interchangeable (each scores 1/8) within 1200 steps
DEFAULT_QUERIES = 2
#: SetLoss weights of the stand-in recipe (masks resized down to the prediction, as the prototype's loss did)
DEFAULT_LOSS: dict[str, Any] = {"box_l1_weight": 2.0, "giou_weight": 1.0, "resize": "target_to_pred"}


def _key_loss(loss: dict[str, Any]) -> dict[str, Any]:
    """The loss arguments as the cache key names them: ``<term>_weight`` written ``weight_<term>``, the names the
    cached stand-ins were trained under (a renamed argument must not retrain every stand-in)."""
    return {(f"weight_{k.removesuffix('_weight')}" if k.endswith("_weight") else k): v for k, v in loss.items()}
LossFn = Callable[[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]


def default_config() -> dict[str, Any]:
    """The stand-in's tiny SAM3 config (64 px, patch 8, :data:`DEFAULT_QUERIES` queries, masks at 16 px)."""
    return tiny_config(num_queries=DEFAULT_QUERIES)


def cache_path(cache_dir: str | Path, config: dict[str, Any], data: dict[str, Any], training: dict[str, Any]) -> Path:
    """``cache_dir/sam3-standin-<sha1 of (config, data, training)>.pt``."""
    return standins.cache_path(cache_dir, "sam3-standin",
                               {"config": config, "data": data, "training": training, "version": CACHE_VERSION})


def default_loss(**kwargs: Any) -> LossFn:
    """The study's set loss (:class:`.losses.SetLoss`; ``kwargs`` override :data:`DEFAULT_LOSS`)."""
    from ..losses import SetLoss

    return SetLoss(**{**DEFAULT_LOSS, **kwargs})


def _fit(teacher: Sam3Teacher, data: dict[str, Any], steps: int, batch_size: int, lr: float, seed: int,
         log_every: int, loss_fn: LossFn | None = None, warmup: int | None = None,
         aux_weight: float = 0.0, callback: Callable[[int], None] | None = None,
         every: int = 0) -> dict[str, Any]:
    """Train ``teacher.model`` in place on random units (AdamW, linear warm-up then cosine decay); ``callback(step)``
    after every ``every`` steps (a learning curve, :mod:`.standin_curve`).

    Seeds the global torch RNG (SAM3's dropout draws from it) with ``seed``: callers wrap it in
    :func:`~lit_experiments.core.seeding.isolated_rng` so the training's own RNG state never leaks out."""
    torch.manual_seed(int(seed))
    data = {**DEFAULT_DATA, **data}
    bank = UnitBank(ShapesWorld(int(data["n_train"]), seed=int(data["seed"]), **_world_kwargs(data)),
                    concept=str(data["concept"]), generic=tuple(data["generic"]))
    loss_fn = loss_fn or default_loss()
    gen = torch.Generator().manual_seed(int(seed))
    model = teacher.model
    model.requires_grad_(True)
    model.train()
    n_cat = len(bank.categories)
    aux_head = torch.nn.Linear(model.config.vision_config.backbone_config.hidden_size, n_cat)
    params = list(model.parameters()) + (list(aux_head.parameters()) if aux_weight > 0 else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warm = max(1, min(100, steps // 10)) if warmup is None else max(1, int(warmup))

    def schedule(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    per_image = int(data["prompts_per_image"])

    def step_loss(step: int) -> torch.Tensor:
        if per_image > 1:  # several prompts per image: the vision encoder runs once per image
            units = bank.image_units(max(1, batch_size // per_image), per_image, gen)
            image_index = torch.arange(len(units)) // per_image
        else:
            units = bank.sample_units(batch_size, float(data["neg_p"]), gen, bool(data["paired"]))
            image_index = torch.arange(len(units))
        images, prompts, targets = bank.batch(units)
        first = list(range(0, len(units), per_image))
        vision = model.get_vision_features(pixel_values=teacher.image_inputs(images[first]))
        out = teacher.predict(vision_embeds=vision, image_index=image_index, **teacher.tokenize(prompts))
        aux = torch.zeros(())
        if aux_weight > 0:  # first-order signal: which categories the image holds (breaks the prompt x image plateau)
            labels = torch.zeros(len(first), n_cat)
            for row, j in enumerate(first):
                labels[row, bank.present[units[j][0]]] = 1.0
            aux = F.binary_cross_entropy_with_logits(aux_head(vision.last_hidden_state.mean(1)), labels)
        return loss_fn(out, targets)["loss"] + aux_weight * aux

    def curve_point(step: int) -> None:
        callback(step)
        model.train()  # the callback evaluates the model

    summary = standins.fit_loop("sam3 stand-in", steps, step_loss, opt, sched, log_every,
                                clip=(model.parameters(), 1.0), callback=curve_point if callback else None,
                                every=every)
    teacher.freeze()
    return {**summary, "threads": torch.get_num_threads()}


def train_standin_teacher(config: dict[str, Any] | None = None, data: dict[str, Any] | None = None,
                          steps: int = 600, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                          cache_dir: str | Path = ".cache/standins", aux_weight: float = 0.0,
                          loss: dict[str, Any] | None = None) -> tuple[Sam3Teacher, dict[str, Any]]:
    """A tiny SAM3 teacher trained on ShapesWorld units (or loaded from ``cache_dir`` when trained before).

    Returns the frozen teacher and ``info``: ``cached`` (bool), ``path``, ``loss_first`` / ``loss_last``
    (mean of the first / last tenth, at most 10 steps), ``train_seconds``, ``threads`` and the arguments."""
    config = json.loads(json.dumps(config or default_config()))
    data = {**DEFAULT_DATA, **(data or {})}
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"train_standin_teacher: steps={steps}, batch_size={batch_size}, lr={lr}; expected "
                          "steps >= 1, batch_size >= 1, lr > 0")
    if not 0.0 <= float(data["neg_p"]) < 1.0:
        raise ConfigError(f"train_standin_teacher: data.neg_p={data['neg_p']}; expected a probability in [0, 1)")
    if data["concept"] not in CONCEPTS:
        raise ConfigError(f"train_standin_teacher: data.concept={data['concept']!r}; expected one of {CONCEPTS}")
    if aux_weight < 0:
        raise ConfigError(f"train_standin_teacher: aux_weight={aux_weight}; expected >= 0")
    loss = {**DEFAULT_LOSS, **(loss or {})}
    training = {"steps": int(steps), "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed),
                "aux_weight": float(aux_weight), "loss": _key_loss(loss)}
    path = cache_path(cache_dir, config, data, training)
    teacher = Sam3Teacher(config=config, init_seed=seed)
    info = standins.load_or_train(
        path, teacher.model, lambda: _fit(teacher, data, int(steps), int(batch_size), float(lr), int(seed),
                                          max(1, steps // 10), loss_fn=default_loss(**loss),
                                          aux_weight=float(aux_weight)),
        extra={"config": config, "data": data, "training": training})
    teacher.freeze()
    return teacher, info


@torch.no_grad()
def predict_units(teacher: Sam3Teacher, bank: UnitBank, units: list[tuple[int, int]],
                  batch_size: int = 64) -> list[dict[str, torch.Tensor]]:
    """Per unit: ``masks`` (Q, S, S) probabilities (mask logits upsampled bilinearly to the image size) and
    ``scores`` (Q,) = ``sigmoid(pred_logits) * sigmoid(presence_logits)``."""
    size = bank.images.shape[-1]
    out = []
    for start in range(0, len(units), batch_size):
        images, prompts, _ = bank.batch(units[start:start + batch_size])
        pred = teacher(images=images, **teacher.tokenize(prompts))
        masks = F.interpolate(pred["pred_masks"], size=(size, size), mode="bilinear", align_corners=False).sigmoid()
        scores = pred["pred_logits"].sigmoid() * pred["presence_logits"].sigmoid()[:, None]
        out += [{"masks": m, "scores": s} for m, s in zip(masks, scores)]
    return out


def evaluate_standin_teacher(teacher: Sam3Teacher, data: dict[str, Any] | None = None,
                             score_threshold: float = 0.5) -> dict[str, Any]:
    """SA-Co metrics (:func:`~lit_experiments.metrics.promptable.promptable_metrics`: ``miou_pos``, ``miou``,
    ``presence_f1``, ``il_mcc``, ``pmf1``, ``cgf1``...) of ``teacher`` against ground truth on a held-out
    ShapesWorld (seed ``data.seed + 1``, ``n_eval`` images, :meth:`UnitBank.eval_units`), at full image
    resolution."""
    data = {**DEFAULT_DATA, **(data or {})}
    n_eval = int(data["n_eval"])
    if n_eval < 1:
        raise ConfigError(f"evaluate_standin_teacher: data.n_eval={n_eval}; expected >= 1")
    bank = UnitBank(ShapesWorld(n_eval, seed=int(data["seed"]) + 1, **_world_kwargs(data)),
                    concept=str(data["concept"]), generic=tuple(data["generic"]))
    units = bank.eval_units(seed=int(data["seed"]) + 1)
    preds = predict_units(teacher, bank, units)
    per_unit = [unit_stats(p["masks"], p["scores"], bank.targets(i, c)["masks"], score_threshold)
                for p, (i, c) in zip(preds, units)]
    out = {**promptable_metrics(UnitStats.cat(per_unit)), "score_threshold": score_threshold, "n_images": n_eval}
    families = sorted(set(bank.families))
    if len(families) > 1:  # F53: every prompt family scored on its own (positive units of the family's words)
        for fam in families:
            pos = [st for st, (i, c) in zip(per_unit, units) if bank.family(c) == fam and c in bank.present[i]]
            if pos:
                out[f"miou_pos/{fam}"] = promptable_metrics(UnitStats.cat(pos))["miou_pos"]
    return out


class StandinTeacher(Sam3Teacher):
    """The demo's teacher as a config part: :func:`train_standin_teacher` (trained once, then loaded from
    ``cache_dir``). Arguments as :func:`train_standin_teacher` (``config`` null: :func:`default_config`; ``data``
    over :data:`DEFAULT_DATA`; ``seed`` null: derived from ``seed_everything``, F50); ``evaluate_on_build`` also scores it against ground truth on its held-out world
    (:func:`evaluate_standin_teacher`, in ``standin_quality``), so every result names how well the teacher
    segments. ``settings()`` adds the stand-in's cache file, training and quality."""

    def __init__(self, config: dict[str, Any] | None = None, data: dict[str, Any] | None = None, steps: int = 600,
                 batch_size: int = 16, lr: float = 1e-3, seed: int | None = None, cache_dir: str = ".cache/standins",
                 evaluate_on_build: bool = True) -> None:
        from lit_experiments.core.seeding import run_seed

        seed = run_seed(seed, "distill/standin")  # F50: from seed_everything unless the YAML pins it
        config = json.loads(json.dumps(config or default_config()))
        super().__init__(config=config, init_seed=seed)
        trained, info = train_standin_teacher(config, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                              cache_dir=cache_dir)
        self.model.load_state_dict(trained.model.state_dict())
        self.freeze()
        self.standin_data = {**DEFAULT_DATA, **(data or {})}
        self.standin_info = standins.info_summary(info)
        self.standin_quality: dict[str, Any] = {}
        if evaluate_on_build:
            quality = evaluate_standin_teacher(self, self.standin_data)
            self.standin_quality = {k: v for k, v in quality.items() if isinstance(v, (int, float))}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "standin": self.standin_info, "standin_quality": self.standin_quality}
