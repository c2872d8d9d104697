"""The stand-in SAM3 teacher: units and targets, a short learning check, cache reuse, atomic save, evaluation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import ShapesWorld
from lit_experiments.metrics.promptable import promptable_metrics, unit_stats
from lit_experiments.studies.distill.components import standin
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.losses import SetLoss

CFG = tiny_config(image_size=32, patch_size=8, hidden=32, vit_layers=1, heads=2, num_queries=4, decoder_layers=1,
                  text_layers=1, text_len=8)
DATA = {"n_train": 32, "n_eval": 12, "image_size": 32, "max_objects": 3, "size_range": (0.3, 0.5)}


def _bank(n: int = 40) -> standin.UnitBank:
    return standin.UnitBank(ShapesWorld(n, image_size=32, max_objects=3, motion=False, size_range=(0.2, 0.4)))


def test_unit_targets_are_the_categorys_visible_instances() -> None:
    bank = _bank()
    for i in range(len(bank)):
        item = bank.world[i]
        inst, cats = item["instances"].numpy(), item["category"].numpy()
        visible = {int(cats[k]) for k in range(int(item["num_objects"])) if (inst == k + 1).any()}
        assert bank.present[i] == sorted(visible)
        for c in range(len(bank.categories)):
            t = bank.targets(i, c)
            ids = [k + 1 for k in range(int(item["num_objects"])) if cats[k] == c and (inst == k + 1).any()]
            assert t["masks"].shape == (len(ids), 32, 32) and t["boxes"].shape == (len(ids), 4)
            for m, b, k in zip(t["masks"], t["boxes"], ids):
                assert torch.equal(m.bool(), torch.from_numpy(inst == k))
                ys, xs = np.nonzero(inst == k)  # brute-force box: pixel edges, normalised cxcywh
                x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                ref = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=torch.float32) / 32
                torch.testing.assert_close(b, ref)
            assert (len(ids) > 0) == (c in bank.present[i])  # absent category: n = 0, a negative unit


def test_color_unit_targets_are_the_colours_visible_objects() -> None:
    colors = ("red", "green", "blue")
    world = ShapesWorld(40, image_size=32, max_objects=3, motion=False, size_range=(0.2, 0.4), colors=colors,
                        materials=("rubber",))
    bank = standin.UnitBank(world, concept="color")
    assert bank.categories == list(colors)
    palette = torch.tensor([ShapesWorld.COLORS[c] for c in colors], dtype=torch.uint8)
    for i in range(len(bank)):
        item = world[i]
        inst, col = item["instances"].numpy(), item["color"].numpy()
        names = [ShapesWorld.COLOR_NAMES[int(col[k])] for k in range(int(item["num_objects"]))]
        for c, name in enumerate(colors):
            ids = [k + 1 for k in range(len(names)) if names[k] == name and (inst == k + 1).any()]
            t = bank.targets(i, c)
            assert t["masks"].shape == (len(ids), 32, 32)
            assert [torch.equal(m.bool(), torch.from_numpy(inst == k)) for m, k in zip(t["masks"], ids)] == \
                [True] * len(ids)
            assert (c in bank.present[i]) == (len(ids) > 0)
            for m in t["masks"]:  # rubber objects: every target pixel has the prompt's colour
                assert (bank.images[i][:, m.bool()] == palette[c][:, None]).all()
        _, prompts, _ = bank.batch([(i, c) for c in range(len(colors))])
        assert prompts == list(colors)
    with pytest.raises(ConfigError, match="concept='shape'"):
        standin.UnitBank(world, concept="shape")


def test_sampled_units_pair_prompts_and_keep_the_negative_ratio() -> None:
    bank = _bank(200)
    gen = torch.Generator().manual_seed(0)
    units = bank.sample_units(4000, 0.25, gen, paired=True)
    neg = np.array([c not in bank.present[i] for i, c in units])
    single = np.mean([len(p) == 1 for p in bank.present])  # the second prompt is negative w.p. 2 * 0.25, or
    assert neg.mean() == pytest.approx(0.5 * (0.5 + 0.5 * single), abs=0.03)  # when no other category is present
    assert all(units[j][0] == units[j + 1][0] and units[j][1] != units[j + 1][1] for j in range(0, 4000, 2))
    assert not neg[::2].any()  # the first of a pair is always a present category
    flat = bank.sample_units(4000, 0.4, torch.Generator().manual_seed(1), paired=False)
    assert 0.35 < np.mean([c not in bank.present[i] for i, c in flat]) < 0.45
    per = bank.image_units(50, 4, torch.Generator().manual_seed(2))
    assert len(per) == 200 and all(len({i for i, _ in per[j:j + 4]}) == 1 for j in range(0, 200, 4))
    for j in range(0, 200, 4):  # present categories first, then absent ones
        i = per[j][0]
        flags = [c in bank.present[i] for _, c in per[j:j + 4]]
        assert flags == sorted(flags, reverse=True) and sum(flags) == min(4, len(bank.present[i]))


def test_prompts_per_image_share_one_vision_pass() -> None:
    teacher = Sam3Teacher(config=CFG)
    bank = _bank(4)
    units = bank.image_units(2, 3, torch.Generator().manual_seed(0))
    images, prompts, _ = bank.batch(units)
    shared = teacher(images=images[::3], image_index=torch.arange(6) // 3, **teacher.tokenize(prompts))
    plain = teacher(images=images, **teacher.tokenize(prompts))
    for key in plain:
        torch.testing.assert_close(shared[key], plain[key], atol=1e-5, rtol=1e-4)


def test_a_few_dozen_steps_lower_the_set_loss() -> None:
    teacher = Sam3Teacher(config=CFG)
    bank = standin.UnitBank(ShapesWorld(64, seed=5, image_size=32, motion=False, size_range=(0.3, 0.5)))
    fixed = bank.sample_units(16, 0.25, torch.Generator().manual_seed(3))
    images, prompts, targets = bank.batch(fixed)
    loss = SetLoss()

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(loss(teacher(images=images, **teacher.tokenize(prompts)), targets)["loss"])

    before = fixed_loss()
    info = standin._fit(teacher, {**DATA, "n_train": 64}, steps=40, batch_size=16, lr=3e-3, seed=0, log_every=20)
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)
    assert info["loss_last"] < info["loss_first"]
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.model.training  # frozen again


def test_colour_prompts_are_learned_in_a_few_seconds() -> None:
    """The default concept's point: 150 steps (~7 s) separate positive from negative colour units by presence
    (category prompts stay at chance, AUROC ~0.5, over the same steps)."""
    from sklearn.metrics import roc_auc_score

    colors = ("red", "green", "blue")
    data = {**standin.DEFAULT_DATA, "n_train": 256, "image_size": 32, "max_objects": 2, "size_range": (0.3, 0.5),
            "concept": "color", "colors": colors}
    teacher = Sam3Teacher(config=CFG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same float sums every run (two reorder them and the run drifts)
    try:
        standin._fit(teacher, data, steps=150, batch_size=16, lr=3e-3, seed=0, log_every=150)
    finally:
        torch.set_num_threads(threads)
    bank = standin.UnitBank(ShapesWorld(48, seed=1, image_size=32, max_objects=2, size_range=(0.3, 0.5),
                                        motion=False, colors=colors), concept="color")
    images, prompts, targets = bank.batch(bank.eval_units(1))
    with torch.no_grad():
        presence = teacher(images=images, **teacher.tokenize(prompts))["presence_logits"]
    auroc = roc_auc_score([t["masks"].shape[0] > 0 for t in targets], presence.numpy())
    assert auroc > 0.75, auroc


def test_cache_is_reused_atomic_and_global_rng_untouched(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    torch.manual_seed(123)
    np.random.seed(5)
    before = torch.random.get_rng_state().clone()
    teacher, info = standin.train_standin_teacher(CFG, DATA, steps=3, batch_size=4, lr=1e-3, seed=0,
                                                  cache_dir=tmp_path)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert np.random.randint(1 << 30) == np.random.RandomState(5).randint(1 << 30)
    assert not info["cached"] and info["steps"] == 3 and "step 3/3" in capsys.readouterr().out
    name = info["path"].split("/")[-1]  # no temp file left (the weights and their sha256, core.standins)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.sha256"]
    assert teacher.cache_key() != Sam3Teacher(config=CFG).cache_key()  # trained, not the initialisation

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the stand-in is cached")

    monkeypatch.setattr(standin, "_fit", no_training)
    again, info2 = standin.train_standin_teacher(CFG, DATA, steps=3, batch_size=4, lr=1e-3, seed=0,
                                                 cache_dir=tmp_path)
    assert info2["cached"] and info2["path"] == info["path"] and again.weights_digest() == teacher.weights_digest()
    assert all(not p.requires_grad for p in again.parameters()) and not again.model.training
    with pytest.raises(AssertionError, match="trained again"):  # another training argument is another key
        standin.train_standin_teacher(CFG, DATA, steps=4, batch_size=4, lr=1e-3, seed=0, cache_dir=tmp_path)


def test_a_failed_save_leaves_no_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(obj, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(standin.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        standin.train_standin_teacher(CFG, DATA, steps=1, batch_size=2, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a truncated checkpoint under the final name nor a temp file


@pytest.mark.parametrize("concept", ["category", "color"])
def test_evaluation_matches_a_brute_force_reference(concept: str) -> None:
    teacher = Sam3Teacher(config=CFG)
    with torch.no_grad():  # a confident teacher so that predictions pass the 0.5 score threshold
        teacher.model.detr_decoder.presence_head.layer3.bias.fill_(5.0)
    data = {**standin.DEFAULT_DATA, **DATA, "concept": concept}
    got = standin.evaluate_standin_teacher(teacher, data, score_threshold=0.3)
    bank = standin.UnitBank(ShapesWorld(12, seed=data["seed"] + 1, **standin._world_kwargs(data)), concept=concept)
    units = bank.eval_units(seed=data["seed"] + 1)
    assert got["n_positive"] == sum(len(p) for p in bank.present) and got["n_units"] == len(units)
    ious, pos_ious = [], []
    for (i, c), pred in zip(units, standin.predict_units(teacher, bank, units)):
        gt = bank.targets(i, c)["masks"].bool().numpy()
        keep = pred["scores"].numpy() >= 0.3
        union = (pred["masks"].numpy()[keep] > 0.5).any(0) if keep.any() else np.zeros((32, 32), bool)
        if len(gt):
            g = gt.any(0)
            iou = (union & g).sum() / max(1, (union | g).sum())
            pos_ious.append(iou)
        else:
            iou = float(not union.any())
        ious.append(iou)
    assert got["miou_pos"] == pytest.approx(np.mean(pos_ious)) and got["miou"] == pytest.approx(np.mean(ious))
    ref = promptable_metrics(unit_stats(torch.zeros(0, 32, 32), torch.zeros(0), torch.ones(1, 32, 32)))
    assert ref["miou_pos"] == 0.0


def test_bad_arguments_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="data.concept='shape'"):
        standin.train_standin_teacher(CFG, {**DATA, "concept": "shape"}, steps=1, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="steps=0"):
        standin.train_standin_teacher(CFG, DATA, steps=0, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="neg_p=1.5"):
        standin.train_standin_teacher(CFG, {**DATA, "neg_p": 1.5}, steps=1, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="n_eval=0"):
        standin.evaluate_standin_teacher(Sam3Teacher(config=CFG), {**DATA, "n_eval": 0})


def test_standin_teacher_part_trains_once_and_reports_its_quality(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {**DATA, "n_eval": 8}
    part = standin.StandinTeacher(config=CFG, data=data, steps=3, batch_size=4, cache_dir=str(tmp_path))
    settings = part.settings()
    assert settings["standin"]["cached"] is False and "miou_pos" in settings["standin_quality"]
    assert all(not p.requires_grad for p in part.parameters())
    want = standin.evaluate_standin_teacher(part, data)  # the reported quality is the ground-truth evaluation
    assert settings["standin_quality"]["miou"] == pytest.approx(want["miou"])
    monkeypatch.setattr(standin, "_fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    again = standin.StandinTeacher(config=CFG, data=data, steps=3, batch_size=4, cache_dir=str(tmp_path),
                                   evaluate_on_build=False)
    assert again.settings()["standin"]["cached"] is True and again.weights_digest() == part.weights_digest()
