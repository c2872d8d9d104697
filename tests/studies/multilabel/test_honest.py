"""Honest numbers for the multilabel study (issue 22): captions that are not an oracle (F52), floors beside every
headline computed on the test images (F49), per-image scores for paired bootstraps (F51), seeds that vary every
random choice (F50), validation never overlapping test (F47)."""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score

from lit_experiments.core.configs import load_composed
from lit_experiments.core.errors import ConfigError
from lit_experiments.core.results import check_floors, read_per_item
from lit_experiments.core.seeding import RUN_SEED_ENV
from lit_experiments.core.splits import SplitOverlapError
from lit_experiments.metrics.multilabel import multilabel_metrics
from lit_experiments.studies.multilabel import evaluation, floors
from lit_experiments.studies.multilabel.datamodule import MultilabelDataModule
from lit_experiments.studies.multilabel.module import MultilabelModule

from .helpers import CONFIGS, build_data, demo_datamodule, fit, write_config
from .helpers import run_test as test_results


def run_seed_env(monkeypatch, seed: int) -> None:
    """The environment of a run with ``seed_everything: seed`` (what core.seeding.run_seed reads)."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
    monkeypatch.setenv(RUN_SEED_ENV, str(seed))


def named_counts(caption: str, categories: list[str]) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", caption) if w in categories}


def test_f52_captions_not_an_oracle(tmp_path, monkeypatch):
    run_seed_env(monkeypatch, 0)
    dm, args = demo_datamodule(tmp_path)
    p = args["source"]["init_args"]["captions"]["name_p"]
    assert 0.3 <= p <= 0.6  # the demo names each object with probability about 0.5
    test = dm.base.get("test") or dm._base("test")
    cats = list(test.world.categories)
    captions, targets = dm.captions("test"), test.targets
    named = expected = var = 0.0
    vague = 0
    for i, caption in enumerate(captions):
        scene = test.world.sample_scene(i)
        words = named_counts(caption, cats)
        present = {cats[c] for c in scene.categories}
        assert words <= present, (caption, present)  # never a category that is not in the image
        vague += " shape" in caption
        for c in present:  # a label is named when one of its k objects is: probability 1 - (1 - p)^k
            k = int((np.asarray(scene.categories) == cats.index(c)).sum())
            q = 1.0 - (1.0 - p) ** k
            named += c in words
            expected += q
            var += q * (1.0 - q)
    n_pos = float(targets.sum())
    assert abs(named - expected) <= 4.0 * math.sqrt(var), (named / n_pos, expected / n_pos)
    assert named / n_pos < 0.7  # the seed's partial captions named 85.5 % of the positive labels
    assert vague > 0.1 * len(captions)  # colour-only phrases ("a red shape") occur
    rule = floors.caption_rule_scores(captions, cats)
    assert bool((rule <= targets.double()).all())  # the rule's labels are all true: it reads the caption
    got = multilabel_metrics(rule, targets, 0.5)
    want = average_precision_score(targets.numpy(), rule.numpy(), average="macro")
    assert float(got["map"]) == pytest.approx(want, abs=1e-12)
    assert float(got["map"]) < 0.8 and float(got["f1_macro"]) < 0.8  # well below an oracle's 1.0
    # the noise follows the run's seed; the images do not
    run_seed_env(monkeypatch, 1)
    other, _ = demo_datamodule(tmp_path)
    assert other.captions("test") != captions
    assert torch.equal(other._base("test").targets, targets)


def test_f49_random_ranking_expected_ap_matches_brute_force_and_simulation():
    for n, m in ((1, 1), (5, 1), (5, 5), (7, 3), (8, 2)):  # exact: every placement of the positives
        aps = []
        for pos in itertools.combinations(range(n), m):
            y = np.zeros(n)
            y[list(pos)] = 1
            aps.append(average_precision_score(y, -np.arange(n, dtype=float)) if n > 1 else 1.0)
        assert floors.expected_random_ap(n, m) == pytest.approx(np.mean(aps), abs=1e-12)
    rng = np.random.default_rng(0)
    t = torch.from_numpy((rng.random((60, 5)) < 0.25).astype(np.float64))
    t[0] = 1.0  # an image with every label (LRAP 1, as sklearn)
    sims = [multilabel_metrics(torch.from_numpy(rng.random((60, 5))), t) for _ in range(3000)]
    maps, lraps = [float(s["map"]) for s in sims], [float(s["lrap"]) for s in sims]
    assert floors.random_ranking_map(t) == pytest.approx(np.mean(maps), abs=4 * np.std(maps) / np.sqrt(3000))
    assert floors.random_ranking_lrap(t) == pytest.approx(np.mean(lraps), abs=4 * np.std(lraps) / np.sqrt(3000))
    with pytest.raises(ValueError, match="1 <= m <= n"):
        floors.expected_random_ap(3, 0)


def test_per_image_scores_and_caption_rule_by_hand():
    rng = np.random.default_rng(1)
    t = torch.from_numpy((rng.random((40, 6)) < 0.3).astype(np.float64))
    p = torch.from_numpy(rng.random((40, 6)))
    items = floors.per_image_scores(p, t, 0.5)
    assert float(items["ap"].mean()) == pytest.approx(label_ranking_average_precision_score(t.numpy(), p.numpy()))
    assert float(items["hamming"].mean()) == pytest.approx(float(multilabel_metrics(p, t)["hamming"]))
    pred = (p.numpy() >= 0.5).astype(int)
    for i in range(40):
        tp, k = (pred[i] * t.numpy()[i]).sum(), pred[i].sum() + t.numpy()[i].sum()
        assert float(items["f1"][i]) == pytest.approx(2 * tp / k if k else 1.0)
    rule = floors.caption_rule_scores(["a circle and a red shape", "a photo", "a red metal square, a star and a blue "
                                       "circle"], ["circle", "square", "star", "red circle", "blue circle"])
    assert rule.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 1]]


def test_f49_multilabel_headline_has_floors(tmp_path, monkeypatch):
    """A fold run's test: every headline metric has its floors in results.json (chance, the caption rule), computed
    on the test images by the metric code; per-image scores are saved. Fails when a floor leaves the product."""
    args = write_config(tmp_path)
    ckpt = fit(args, tmp_path)
    res = test_results(tmp_path, args, ckpt)
    assert set(res["headline"]) == set(MultilabelModule.headline_metrics)
    assert check_floors(res) == []
    refs = {m: {r["name"]: r for r in rows} for m, rows in res["references"].items()}
    dm = build_data(yaml_data(args))
    y = dm._base("test").targets
    rule = floors.caption_rule_scores(dm.captions("test"), dm.label_names)
    for metric in ("test/map", "test/knn_map"):
        assert {"chance: random ranking", floors.CAPTION_RULE} <= set(refs[metric])
        assert refs[metric]["chance: random ranking"]["value"] == pytest.approx(np.mean(
            [floors.expected_random_ap(len(y), int(m)) for m in y.sum(0).tolist() if m > 0]))
        want = np.mean([average_precision_score(y[:, j], rule[:, j]) for j in range(y.shape[1]) if y[:, j].any()])
        assert refs[metric][floors.CAPTION_RULE]["value"] == pytest.approx(want, abs=1e-12)
    for metric in floors.F1_KEYS:
        assert refs[metric]["chance: mean positive rate"]["value"] == pytest.approx(float(y.mean()))
        assert floors.CAPTION_RULE in refs[metric]
    assert all(r["kind"] == "floor" for rows in refs.values() for r in rows.values())
    run_dir = next(p.parent for p in (tmp_path / "run").rglob("results.json") if "eval" in str(p))
    items = read_per_item(run_dir)
    assert set(items) == {"test", "caption_rule"} and items["test"]["ids"] == [str(i) for i in range(len(y))]
    assert np.mean(items["test"]["scores"]["ap"]) == pytest.approx(res["test"]["test/lrap"], abs=1e-6)  # logged as float32
    assert np.mean(items["test"]["scores"]["hamming_t05"]) == pytest.approx(res["test"]["test/t05/hamming"])
    probs = torch.tensor(items["test"]["meta"]["probs"], dtype=torch.float64)
    assert float(multilabel_metrics(probs, y)["map"]) == pytest.approx(res["test"]["test/map"], abs=1e-5)
    # the bug put back: a product whose floors drop the caption rule (or every floor) fails these checks
    real = floors.floor_rows
    monkeypatch.setattr(evaluation, "floor_rows", lambda t, c, n, **kw: {
        k: [r for r in v if r[0] != floors.CAPTION_RULE] for k, v in real(t, c, n, **kw).items()})
    dropped = test_results(tmp_path, args, ckpt)
    assert all(floors.CAPTION_RULE not in {r["name"] for r in rows} for rows in dropped["references"].values())
    monkeypatch.setattr(evaluation, "floor_rows", lambda t, c, n, **kw: {})
    assert check_floors(test_results(tmp_path, args, ckpt))


def test_caption_rule_is_a_floor_of_caption_readers_and_a_reference_of_image_only_heads():
    from lit_experiments.studies.multilabel.heads import MLPHead

    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    captions, names = ["a circle", "a photo", "a square and a circle"], ["circle", "square"]
    kinds = {}
    for inputs in ("image+text", "image"):
        module = MultilabelModule(head=MLPHead(inputs=inputs))
        module.add_floors(y, names, captions)
        refs = module.extra_results["references"]
        assert check_floors({"headline": dict.fromkeys(module.headline_metrics, 0.5), "references": refs}) == []
        kinds[inputs] = {r["kind"] for rows in refs.values() for r in rows if r["name"] == floors.CAPTION_RULE}
    assert kinds == {"image+text": {"floor"}, "image": {"reference"}}


def yaml_data(args: list[str]) -> dict:
    """The composed data init_args of the ``-c`` files ``args``."""
    import yaml

    from lit_experiments.core.configs import merge

    out: dict = {}
    for f in [a for a in args if a != "-c"]:
        out = merge(out, (yaml.safe_load(Path(f).read_text()) or {}).get("data", {}).get("init_args", {}) or {})
    return out


def test_f50_seed_everything_varies_the_datamodule_and_standin_unless_pinned(tmp_path, monkeypatch):
    from lit_experiments.studies.multilabel import standin

    def seeds() -> tuple:
        d, _ = demo_datamodule(tmp_path, source={"n_pool": 40, "n_test": 8})
        d.setup("fit")
        return d.source.caption_seed, d.split_indices["val"], d.sampler_seed

    run_seed_env(monkeypatch, 0)
    a = seeds()
    run_seed_env(monkeypatch, 1)
    b = seeds()
    assert all(x != y for x, y in zip(a, b)), (a, b)  # captions, validation split and training order all move
    pinned, _ = demo_datamodule(tmp_path, source={"captions": {"seed": 7}}, splits={"split_seed": 3, "sampler_seed": 5})
    assert (pinned.source.caption_seed, pinned.split_seed, pinned.sampler_seed) == (7, 3, 5)
    assert "seed" not in load_composed(CONFIGS / "demo.yaml")["data"]["init_args"]["frozen"]["init_args"]
    trained = []
    monkeypatch.setattr(standin.standins, "load_or_train", lambda path, model, train, extra: trained.append(
        (path, extra["training"]["seed"])) or {"path": str(path), "cached": True})
    for seed in (0, 1):
        run_seed_env(monkeypatch, seed)
        standin.train_standin(standin.default_config(), {"n_train": 64}, steps=1, cache_dir=tmp_path)
    assert trained[0][1] != trained[1][1] and trained[0][0] != trained[1][0]
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)  # the caller's thread count reaches neither the training nor the cache key
    try:
        standin.train_standin(standin.default_config(), {"n_train": 64}, steps=1, cache_dir=tmp_path)
        assert torch.get_num_threads() == before + 1  # restored after training
    finally:
        torch.set_num_threads(before)
    assert trained[-1][0] == trained[1][0]


def test_f47_validation_never_shares_test_images(tmp_path):
    from lit_experiments.studies.multilabel.sources import FileCaptionSource

    from .test_datamodule import dm, files_dm, write_files

    write_files(tmp_path / "set")
    d = files_dm(tmp_path)
    d.setup("fit")
    assert d.split_info["overlap"] == 0 and not d.split_info["tuned_on_test"]

    def same_file(**kw) -> MultilabelDataModule:
        return dm(tmp_path, source=FileCaptionSource(root=str(tmp_path / "set"), file="pool.csv", test_file="pool.csv",
                                                     image_size=16), **kw)

    with pytest.raises(SplitOverlapError, match="pool.csv"):
        same_file().setup("fit")
    marked = same_file(allow_val_test_overlap=True)
    marked.setup("fit")
    assert marked.split_info["tuned_on_test"]
    shapes, _ = demo_datamodule(tmp_path, source={"n_pool": 24, "n_test": 8})
    shapes.setup("fit")
    assert shapes.split_info["overlap"] == 0
    with pytest.raises((ConfigError, ValueError), match="name_p"):  # jsonargparse wraps the part's ConfigError
        demo_datamodule(tmp_path, source={"captions": {"name_p": 1.5}})


def test_demo_summary_floors_and_paired_bootstrap(tmp_path):
    """The bootstrap of the demo recomputes mAP on resampled images, pairing both sides image by image."""
    rng = np.random.default_rng(2)
    t = torch.from_numpy((rng.random((80, 4)) < 0.3).astype(np.float64))
    good = [t + torch.from_numpy(rng.normal(0, 0.3, t.shape)) for _ in range(2)]
    bad = [torch.from_numpy(rng.random(t.shape))]
    res = floors.paired_bootstrap_map(good, bad, t, n_boot=200, seed=0)
    want = np.mean([float(multilabel_metrics(g, t)["map"]) for g in good]) - float(multilabel_metrics(bad[0], t)["map"])
    assert res["diff"] == pytest.approx(want) and res["ci95"][0] < res["diff"] < res["ci95"][1]
    assert res["excludes_zero"] and res["n_images"] == 80
    same = floors.paired_bootstrap_map(bad, bad, t, n_boot=50, seed=0)
    assert same["diff"] == 0 and same["ci95"] == [0.0, 0.0]  # paired: identical sides never differ
    json.dumps(res)
