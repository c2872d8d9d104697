"""The multilabel demo's stand-in: tiny SigLIP towers trained on ShapesWorld image-caption pairs, cached.

No weights can be downloaded, and frozen random towers carry no signal, so the demo first trains a tiny
``SiglipModel`` (the class a real FixRes checkpoint loads) with SigLIP's sigmoid loss on ShapesWorld images
and partial captions, saves it keyed by a hash of (tower config, data args, training args) and reuses it.

* Training captions (:func:`partial_caption`) name a random non-empty subset of the objects, as COCO captions
  do; each mentioned object's colour / material words are kept with probabilities ``caption_color_p`` /
  ``caption_material_p``. The draw is seeded by (seed, sample, epoch). The captions the study's heads read as a
  side input are :func:`side_caption` (each object named with a probability, sometimes by a colour-only
  phrase: the text is not a label oracle, F52).
* Seeds and threads (F50): ``seed: null`` (the default) is :func:`~lit_experiments.core.seeding.run_seed`
  (``"standin"``) of the run's ``seed_everything``, so a seed sweep trains one stand-in per seed; training runs
  with ``threads`` torch threads (default 1) whatever the caller's count, so the weights and the cache key
  (:func:`lit_experiments.core.standins.cache_path`, which adds the thread count) do not depend on it.
* ``data``: ShapesWorld keyword arguments (``image_size``, ``colors``, ``max_objects``...) plus ``n_train``
  (training pairs), ``n_eval`` (held-out images: first half trains the probe, second half tests it and the
  zero-shot classifier), ``seed`` (the training world; the held-out world uses ``seed + 1``), and the caption
  probabilities above.
* Default recipe (measured on the 2-core CPU, 1200 steps of batch 64 in ~75 s): 32 px images of 1-2 large
  (0.35-0.6 of the side) red rubber shapes, captions naming shapes only, patch 8, lr 2e-3 (logit scale / bias
  30x), ``logit_bias`` initialised at -5: category probe mAP 0.617 against 0.331 at random init, zero-shot
  0.50 (chance 0.17). With all colours and materials in the images a 1500-step run reaches only 0.370 vs 0.286:
  the tiny towers then spend their capacity on colour.
* Training runs under :func:`~lit_experiments.core.seeding.isolated_rng` with its own generator: the global
  RNGs are untouched, so a run's numbers do not depend on whether the stand-in was cached.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lit_experiments.core import standins
from lit_experiments.core.errors import ConfigError
from lit_experiments.core.seeding import run_seed
from lit_experiments.data.shapes import MATERIALS, ShapesWorld, make_caption

from .towers import SiglipTowers, tiny_config

CACHE_VERSION = 1
LOGIT_BIAS_INIT = -5.0
SCALAR_LR_MULT = 30.0  # logit_scale / logit_bias learn 30x faster: with the towers alone they barely move
VAGUE_NOUN = "shape"  # the noun of a colour-only phrase: names no category
EMPTY_CAPTION = "a photo"  # a side caption that mentions no object
DEFAULT_THREADS = 1  # torch threads of stand-in training (F50: weights independent of the caller's count)
DATA_KEYS = ("n_train", "n_eval", "seed", "caption_color_p", "caption_material_p")
#: the default recipe (see the study's notes for the measured alternatives)
DEFAULT_DATA: dict[str, Any] = {"n_train": 4096, "n_eval": 1024, "seed": 0, "image_size": 32, "max_objects": 2,
                                "size_range": (0.35, 0.6), "colors": ("red",), "materials": ("rubber",),
                                "motion": False, "caption_color_p": 0.0,
                                "caption_material_p": 0.0}


def default_config() -> dict[str, Any]:
    """The stand-in's tiny tower config (32 px, patch 8: 16 patches)."""
    return tiny_config(image_size=32, patch_size=8)


def _world_kwargs(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in DATA_KEYS}


def partial_caption(world: ShapesWorld, index: int, seed: int = 0, draw: int = 0, color_p: float = 0.5,
                    material_p: float = 0.0) -> str:
    """Caption of sample ``index`` naming a random non-empty subset of its objects (nearest first).

    The subset size is uniform in ``1..n``; each mentioned object keeps its colour word with probability
    ``color_p`` and its material word with ``material_p``; the category is always named. Deterministic in
    ``(seed, index, draw)`` (``draw``: e.g. the epoch, so a sample gets a new caption each pass)."""
    scene = world.sample_scene(index)
    rng = np.random.default_rng(np.random.SeedSequence([abs(int(seed)), int(index), int(draw), 0xCA9]))
    n = scene.num_objects
    k = int(rng.integers(1, n + 1))
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    words = []
    for j in chosen:
        color = world.COLOR_NAMES[scene.colors[j]] if rng.random() < color_p else None
        material = MATERIALS[scene.materials[j]] if rng.random() < material_p else None
        words.append((color, material, world.categories[scene.categories[j]]))
    return make_caption(words)


def side_caption(world: ShapesWorld, index: int, seed: int, name_p: float = 0.5, vague_p: float = 0.5,
                 color_p: float = 0.0, material_p: float = 0.0) -> str:
    """The side-input caption of sample ``index`` (F52: not a label oracle), objects nearest first.

    Each object is named by its category with probability ``name_p`` (its colour / material words kept with
    ``color_p`` / ``material_p``); an object not named is mentioned by a colour-only phrase ("a red shape") with
    probability ``vague_p``, else left out. A caption that mentions nothing is "a photo". A category that is not in
    the image is never named. Deterministic in ``(seed, index)``; one uniform draw per object and decision, so a
    higher ``name_p`` names a superset of the objects."""
    for name, p in (("name_p", name_p), ("vague_p", vague_p), ("color_p", color_p), ("material_p", material_p)):
        if not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"side_caption: {name}={p}; expected a probability in [0, 1]")
    scene = world.sample_scene(index)
    rng = np.random.default_rng(np.random.SeedSequence([abs(int(seed)), int(index), 0x51DE]))
    u = rng.random((4, scene.num_objects))
    words: list[tuple[str | None, str | None, str]] = []
    for j in range(scene.num_objects):
        color = world.COLOR_NAMES[scene.colors[j]]
        if u[0, j] < name_p:
            words.append((color if u[1, j] < color_p else None,
                          MATERIALS[scene.materials[j]] if u[2, j] < material_p else None,
                          world.categories[scene.categories[j]]))
        elif u[3, j] < vague_p:
            words.append((color, None, VAGUE_NOUN))
    return make_caption(words) if words else EMPTY_CAPTION


def sigmoid_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss of a square logit matrix (logits already scaled and biased):
    ``-(1/B) sum_i sum_j log sigmoid(z_ij * logits_ij)``, ``z = +1`` on the diagonal (matching pairs) and
    ``-1`` off it; normalised by the batch size as in the paper and transformers' ``SiglipModel``."""
    b = logits_per_image.shape[0]
    z = 2 * torch.eye(b, device=logits_per_image.device, dtype=logits_per_image.dtype) - 1
    return -F.logsigmoid(z * logits_per_image).sum(1).mean()


def cache_path(cache_dir: str | Path, config: dict[str, Any], data: dict[str, Any], training: dict[str, Any]) -> Path:
    """``cache_dir/siglip-standin-<sha1 of (config, data, training)>.pt``."""
    return standins.cache_path(cache_dir, "siglip-standin",
                               {"config": config, "data": data, "training": training, "version": CACHE_VERSION})


def _render(world: ShapesWorld) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images uint8 (N,3,H,W), labels (N,C) and first-object categories (N,) of every sample."""
    items = [world[i] for i in range(len(world))]
    return (torch.stack([it["image"] for it in items]), torch.stack([it["labels"] for it in items]),
            torch.stack([it["category"][0] for it in items]))


def _fit(towers: SiglipTowers, data: dict[str, Any], steps: int, batch_size: int, lr: float, seed: int,
         log_every: int) -> dict[str, Any]:
    """Train ``towers.model`` in place with the sigmoid loss (:func:`~lit_experiments.core.standins.fit_loop`: one
    batch of shuffled image-caption pairs per step, a new order each epoch); returns the loss summary."""
    data = {**DEFAULT_DATA, **data}
    world = ShapesWorld(int(data["n_train"]), seed=int(data.get("seed", 0)), **_world_kwargs(data))
    images = _render(world)[0]
    inputs = towers.image_inputs(images)["pixel_values"]
    n = len(world)
    per_epoch = max(1, n // batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    model = towers.model
    model.requires_grad_(True)
    model.train()
    with torch.no_grad():  # the paper's t' = log 10; its b = -10 suits 32k batches, b = -5 a batch of 64
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(LOGIT_BIAS_INIT)
    scalars = [p for name, p in model.named_parameters() if name.startswith("logit_")]
    rest = [p for name, p in model.named_parameters() if not name.startswith("logit_")]
    opt = torch.optim.AdamW([{"params": rest}, {"params": scalars, "lr": lr * SCALAR_LR_MULT}], lr=lr,
                            weight_decay=1e-4)
    warm = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))  # warm-up, then constant
    state: dict[str, Any] = {"order": torch.randperm(n, generator=gen), "captions": {}}

    def step_loss(step: int) -> torch.Tensor:
        epoch, pos = divmod(step, per_epoch)
        if pos == 0 and step:
            state["order"] = torch.randperm(n, generator=gen)
        captions = state["captions"]
        if epoch not in captions:
            captions = state["captions"] = {epoch: [partial_caption(world, i, int(seed), epoch,
                                                                    float(data["caption_color_p"]),
                                                                    float(data["caption_material_p"]))
                                                    for i in range(n)]}
        idx = state["order"][pos * batch_size:(pos + 1) * batch_size]
        text = towers.tokenize([captions[epoch][int(i)] for i in idx])
        out = model(pixel_values=inputs[idx], input_ids=text["input_ids"], attention_mask=text.get("attention_mask"))
        return sigmoid_loss(out.logits_per_image)

    summary = standins.fit_loop("siglip stand-in", steps, step_loss, opt, sched, log_every=log_every)
    towers.freeze()
    return summary


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_standin(config: dict[str, Any] | None = None, data: dict[str, Any] | None = None, steps: int = 1200,
                  batch_size: int = 64, lr: float = 2e-3, seed: int | None = None,
                  cache_dir: str | Path = ".cache/standins",
                  threads: int = DEFAULT_THREADS) -> tuple[SiglipTowers, dict[str, Any]]:
    """Tiny SigLIP towers trained on ShapesWorld (or loaded from ``cache_dir`` when trained before).

    ``seed`` None: :func:`~lit_experiments.core.seeding.run_seed` (``"standin"``) of the run's seed (F50).
    Training (and the cache key, which holds the thread count) runs with ``threads`` torch threads whatever the
    caller's count. Returns the frozen towers and ``info``: ``cached`` (bool), ``path``, ``loss_first`` /
    ``loss_last`` (mean of the first / last tenth, at most 10 steps), ``train_seconds`` and the arguments."""
    config = dict(config or default_config())
    data = {**DEFAULT_DATA, **(data or {})}
    if steps < 1 or batch_size < 2 or lr <= 0 or threads < 1:
        raise ConfigError(f"train_standin: steps={steps}, batch_size={batch_size}, lr={lr}, threads={threads}; "
                          "expected steps >= 1, batch_size >= 2, lr > 0, threads >= 1")
    if int(data["n_train"]) < batch_size:
        raise ConfigError(f"train_standin: data.n_train={data['n_train']} is smaller than batch_size={batch_size}")
    seed = run_seed(seed, "standin")
    training = {"steps": int(steps), "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed)}
    with torch_threads(threads):
        path = cache_path(cache_dir, config, data, training)
        towers = SiglipTowers(config=config, init_seed=seed)
        info = standins.load_or_train(path, towers.model,
                                      lambda: _fit(towers, data, int(steps), int(batch_size), float(lr), int(seed),
                                                   max(1, steps // 10)),
                                      extra={"config": config, "data": data, "training": training})
    towers.freeze()
    return towers, info


@torch.no_grad()
def embed_images(towers: SiglipTowers, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Image embeddings ``(N, D)`` of uint8 images ``(N, 3, H, W)``."""
    return torch.cat([towers.encode_image(**towers.image_inputs(images[i:i + batch_size]))
                      for i in range(0, len(images), batch_size)])


def probe_map(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """mAP (``multilabel_metrics``) on ``test`` of a one-vs-rest logistic regression fitted on ``train``
    (standardised features, ``C = 1``); a class constant in ``train_y`` gets a constant score."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lit_experiments.metrics.multilabel import multilabel_metrics

    clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000)))
    clf.fit(train_x, train_y)
    scores = torch.as_tensor(clf.decision_function(test_x), dtype=torch.float64).reshape(len(test_x), -1)
    return float(multilabel_metrics(scores, torch.as_tensor(test_y))["map"])


def evaluate_standin(towers: SiglipTowers, data: dict[str, Any] | None = None,
                     init_seed: int | None = None) -> dict[str, Any]:
    """Quality of stand-in towers on a held-out ShapesWorld (seed ``data.seed + 1``, ``n_eval`` images).

    * ``zero_shot_acc``: on the second half, the fraction of images whose nearest prompt
      ``"a {category}"`` (cosine of image and text embeddings) names the category of object 1, the nearest,
      never occluded object (chance ``1 / len(categories)``); ``zero_shot_hit``: the nearest prompt names
      any category present.
    * ``probe_map``: :func:`probe_map` of the towers' image embeddings, fitted on the first half, tested on
      the second; ``probe_map_init``: the same for the same architecture at random initialisation
      (``init_seed``; None: the run's ``"standin-init"`` seed), a floor; ``probe_map_chance``: the expected mAP
      of a random ranking of the probe's test half (:func:`~.floors.random_ranking_map`)."""
    from .floors import random_ranking_map

    data = {**DEFAULT_DATA, **(data or {})}
    if towers.config_dict is None:
        raise ConfigError("evaluate_standin: the towers were loaded from a checkpoint; it evaluates stand-ins built "
                          "from a config (their random initialisation is the baseline)")
    n_eval = int(data["n_eval"])
    if n_eval < 4:
        raise ConfigError(f"evaluate_standin: data.n_eval={n_eval}; expected >= 4")
    world = ShapesWorld(n_eval, seed=int(data.get("seed", 0)) + 1, **_world_kwargs(data))
    images, labels, first = _render(world)
    half = n_eval // 2
    y = labels.numpy()
    emb = embed_images(towers, images)
    prompts = towers.tokenize([f"a {c}" for c in world.categories])
    text = F.normalize(towers.encode_text(**prompts), dim=1)
    pred = (F.normalize(emb[half:], dim=1) @ text.t()).argmax(1)
    fresh = towers.random_init(run_seed(init_seed, "standin-init"))
    emb0 = embed_images(fresh, images)
    return {
        "zero_shot_acc": float((pred == first[half:]).float().mean()),
        "zero_shot_hit": float(labels[half:].gather(1, pred[:, None]).mean()),
        "zero_shot_chance": 1.0 / len(world.categories),
        "probe_map": probe_map(emb[:half].numpy(), y[:half], emb[half:].numpy(), y[half:]),
        "probe_map_init": probe_map(emb0[:half].numpy(), y[:half], emb0[half:].numpy(), y[half:]),
        "probe_map_chance": random_ranking_map(labels[half:]),
        "n_probe_train": half, "n_probe_test": n_eval - half,
        "colors": [world.COLOR_NAMES[i] for i in world.colors],
    }


class StandinTowers(SiglipTowers):
    """The demo's towers as a config part: :func:`train_standin` (trained once, then loaded from ``cache_dir``).

    Args: as :func:`train_standin` (``config`` null: :func:`default_config`; ``data``: overrides of
    :data:`DEFAULT_DATA`; ``seed`` null: the run's ``"standin"`` seed; ``threads``: torch threads of training). ``settings()`` adds the stand-in's cache file, training arguments and losses."""

    def __init__(self, config: dict[str, Any] | None = None, data: dict[str, Any] | None = None, steps: int = 1200,
                 batch_size: int = 64, lr: float = 2e-3, seed: int | None = None, cache_dir: str = ".cache/standins",
                 text_mask_policy: str = "pad_to_max", threads: int = DEFAULT_THREADS) -> None:
        config = dict(config or default_config())
        seed = run_seed(seed, "standin")
        super().__init__(config=config, init_seed=seed, text_mask_policy=text_mask_policy)
        trained, info = train_standin(config, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                      cache_dir=cache_dir, threads=threads)
        self.model.load_state_dict(trained.model.state_dict())
        self.freeze()
        self.standin_data = {**DEFAULT_DATA, **(data or {})}
        self.standin_info = standins.info_summary(info)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "standin": self.standin_info}
