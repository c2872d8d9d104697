"""The multilabel stand-in: caption sampler, sigmoid loss, training, cache and probe evaluation (fast)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_experiments.data.shapes import CATEGORIES, ShapesWorld
from lit_experiments.studies.multilabel import standin
from lit_experiments.studies.multilabel.towers import SiglipTowers, tiny_config

CFG = tiny_config(image_size=16, patch_size=8, hidden=32, vision_layers=1, text_layers=1, heads=2, text_len=16)
DATA = {"n_train": 32, "n_eval": 24, "image_size": 16, "max_objects": 3}


def _named(caption: str) -> Counter:
    return Counter(w for w in caption.replace(",", " ").split() if w in CATEGORIES)


def test_partial_caption_names_a_random_nonempty_subset() -> None:
    world = ShapesWorld(60, image_size=16, min_objects=2, max_objects=3, motion=False)
    partial, varies = 0, 0
    for i in range(60):
        present = Counter(world.categories[c] for c in world.sample_scene(i).categories)
        caps = [standin.partial_caption(world, i, seed=0, draw=d, color_p=0.5) for d in range(6)]
        for cap in caps:
            named = _named(cap)
            assert sum(named.values()) >= 1 and not (named - present), (cap, present)
            partial += sum(named.values()) < sum(present.values())
        varies += len(set(caps)) > 1
        assert caps[0] == standin.partial_caption(world, i, seed=0, draw=0, color_p=0.5)  # seeded
    assert partial > 60 and varies > 40  # never "all objects always"; a sample's caption changes per draw
    other = [standin.partial_caption(world, i, seed=1, color_p=0.5) for i in range(60)]
    assert other != [standin.partial_caption(world, i, seed=0, color_p=0.5) for i in range(60)]
    assert all("red" not in standin.partial_caption(world, i, color_p=0.0) for i in range(60))


def test_sigmoid_loss_by_hand_and_transformers() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 0.0], [0.2, -0.4, -2.0]])
    hand = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            hand += -math.log(1 / (1 + math.exp(-z * float(logits[i, j]))))
    assert float(standin.sigmoid_loss(logits)) == pytest.approx(hand / 3, rel=1e-6)
    towers = SiglipTowers(config=CFG)
    world = ShapesWorld(4, image_size=16, motion=False)
    images = torch.stack([world[i]["image"] for i in range(4)])
    text = towers.tokenize([world[i]["caption"] for i in range(4)])
    out = towers.model(**towers.image_inputs(images), **text, return_loss=True)
    torch.testing.assert_close(standin.sigmoid_loss(out.logits_per_image), out.loss)


def test_a_few_steps_lower_the_loss() -> None:
    towers = SiglipTowers(config=CFG)
    info = standin._fit(towers, {**standin.DEFAULT_DATA, **DATA}, steps=20, batch_size=16, lr=2e-3, seed=0,
                        log_every=10)
    assert info["loss_last"] < info["loss_first"] - 0.5
    assert all(not p.requires_grad for p in towers.parameters()) and not towers.model.training


def test_cache_reused_atomic_and_global_rng_untouched(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    torch.manual_seed(123)
    np.random.seed(5)
    before = torch.random.get_rng_state().clone()
    towers, info = standin.train_standin(CFG, DATA, steps=10, batch_size=8, lr=1e-3, seed=0, cache_dir=tmp_path)
    assert torch.equal(torch.random.get_rng_state(), before) and np.random.randint(1 << 30) == \
        np.random.RandomState(5).randint(1 << 30)
    assert not info["cached"] and info["steps"] == 10
    assert "step 10/10" in capsys.readouterr().out  # progress lines
    name = info["path"].split("/")[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, name + ".sha256"]  # its checksum, no temp file
    assert towers.cache_key() != SiglipTowers(config=CFG).cache_key()  # trained, not the initialisation

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the stand-in is cached")

    monkeypatch.setattr(standin, "_fit", no_training)
    again, info2 = standin.train_standin(CFG, DATA, steps=10, batch_size=8, lr=1e-3, seed=0, cache_dir=tmp_path)
    assert info2["cached"] and info2["path"] == info["path"]
    assert again.cache_key() == towers.cache_key()
    with pytest.raises(AssertionError, match="trained again"):  # other training args -> another key
        standin.train_standin(CFG, DATA, steps=11, batch_size=8, lr=1e-3, seed=0, cache_dir=tmp_path)


def test_probe_map_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(np.float32)
    x = rng.normal(size=(200, 8)) + y @ rng.normal(size=(4, 8)) * 0.8
    got = standin.probe_map(x[:120], y[:120], x[120:], y[120:])
    scaler = StandardScaler().fit(x[:120])
    scores = np.stack([LogisticRegression(max_iter=2000).fit(scaler.transform(x[:120]), y[:120, c])
                       .decision_function(scaler.transform(x[120:])) for c in range(4)], 1)
    assert got == pytest.approx(average_precision_score(y[120:], scores, average="macro"), abs=1e-9)
    assert 0.4 < got <= 1.0


def test_evaluate_standin_brute_force() -> None:
    towers = SiglipTowers(config=CFG, init_seed=0)
    res = standin.evaluate_standin(towers, DATA, init_seed=0)
    assert res["probe_map"] == pytest.approx(res["probe_map_init"])  # the same weights score the same
    data = {**standin.DEFAULT_DATA, **DATA}
    world = ShapesWorld(24, seed=data["seed"] + 1, **standin._world_kwargs(data))
    test = [world[i] for i in range(12, 24)]
    img = torch.stack([towers.encode_image(**towers.image_inputs(s["image"][None]))[0] for s in test])
    txt = torch.stack([towers.encode_text(**towers.tokenize([f"a {c}"]))[0] for c in world.categories])
    pred = (F.normalize(img, dim=1) @ F.normalize(txt, dim=1).t()).argmax(1)
    acc = np.mean([int(pred[k]) == int(s["category"][0]) for k, s in enumerate(test)])
    assert res["zero_shot_acc"] == pytest.approx(acc)
    assert res["n_probe_train"] == 12 and res["zero_shot_chance"] == pytest.approx(1 / 6)


def test_bad_arguments_are_named(tmp_path) -> None:
    from lit_experiments.core.errors import ConfigError

    with pytest.raises(ConfigError, match="n_train=32 is smaller than batch_size=64"):
        standin.train_standin(CFG, DATA, steps=1, batch_size=64, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="steps=0"):
        standin.train_standin(CFG, DATA, steps=0, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="n_eval=2"):
        standin.evaluate_standin(SiglipTowers(config=CFG), {**DATA, "n_eval": 2})
