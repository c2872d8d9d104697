"""DistillDataModule: units with both models' ids from one string (F22, F23), targets of the prompt, prompt kinds
per epoch (F24), teacher outputs served from the cache equal to the teacher's own."""
from __future__ import annotations

import pytest
import torch

from lit_experiments.core.errors import ConfigError
from lit_experiments.studies.distill.components.sources import DistillCoco, DistillShapes
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.datamodule import DistillDataModule, EpochSampler

from .helpers import make_dm


@pytest.fixture(scope="module")
def teacher() -> Sam3Teacher:
    return Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, num_queries=4))


def make(tmp_path, teacher=None, **kw) -> DistillDataModule:
    args = {"n_train": 12, "n_val": 4, "n_test": 4, "shapes": {"image_size": 32}, "cache_dir": str(tmp_path),
            "batch_size": 4, **kw}
    dm = make_dm(teacher=teacher, **args)
    dm.setup("fit")
    return dm


def test_items_carry_both_models_ids_of_their_own_prompt(tmp_path, teacher):
    dm = make(tmp_path, teacher)
    import open_clip

    tok = open_clip.get_tokenizer("MobileCLIP-S1", context_length=32)  # the student's tower's (read by the data)
    for split in ("train", "val"):
        ds = dm.split(split)
        for j in range(len(ds)):
            item = ds[(j, 1)] if split == "train" else ds[j]
            enc = teacher.tokenizer([item["prompt"]], padding="max_length", max_length=teacher.text_max_length,
                                    return_tensors="pt")
            assert torch.equal(item["teacher_input_ids"], enc["input_ids"][0])
            assert torch.equal(item["student_input_ids"], torch.as_tensor(tok([item["prompt"]]))[0].long())
            assert not torch.equal(item["teacher_input_ids"][:8], item["student_input_ids"][:8])  # two tokenizers


def test_targets_are_the_prompts_instances_and_negatives_are_empty(tmp_path):
    dm = make(tmp_path)
    ds, src = dm.split("val"), dm.unit_source("val")
    kinds = set()
    for j in range(len(ds)):
        item = ds[j]
        kinds.add(item["kind"])
        i = int(item["index"])
        it = src.items[i]
        n = int(it["num_objects"])
        if item["kind"] == "negative":
            assert item["prompt"] not in src.present[i] and len(item["targets"]["masks"]) == 0
            continue
        ks = [k for k in range(n) if (item["kind"] == "generic" or src.categories[int(it["category"][k])] ==
                                      item["prompt"]) and bool((it["instances"] == k + 1).any())]
        want = torch.stack([(it["instances"] == k + 1).float() for k in ks])
        assert torch.equal(item["targets"]["masks"], want)
        boxes = item["targets"]["boxes"]
        assert boxes.shape == (len(ks), 4) and bool(((boxes >= 0) & (boxes <= 1)).all())
    assert kinds == {"category", "negative", "generic"}


def test_f24_training_prompts_follow_the_ratios_and_change_with_the_epoch(tmp_path):
    dm = make(tmp_path, n_train=200, prompts={"ratios": {"category": 0.5, "generic": 0.25, "negative": 0.25}})
    ds = dm.split("train")
    kinds = [ds[(i, 0)]["kind"] for i in range(len(ds))]
    share = {k: kinds.count(k) / len(kinds) for k in ("category", "generic", "negative")}
    assert abs(share["category"] - 0.5) < 0.12 and abs(share["negative"] - 0.25) < 0.1
    assert [ds[(i, 0)]["prompt"] for i in range(20)] == [ds[(i, 0)]["prompt"] for i in range(20)]
    assert [ds[(i, 0)]["prompt"] for i in range(20)] != [ds[(i, 1)]["prompt"] for i in range(20)]


def test_epoch_sampler_splits_ranks_and_reshuffles():
    a, b = EpochSampler(10, True, 0, 0, 2), EpochSampler(10, True, 0, 1, 2)
    first = [i for i, _, _ in a] + [i for i, _, _ in b]
    assert sorted(first) == list(range(10)) and len(a) == 5
    a.set_epoch(1)
    assert [i for i, _, _ in a] != first[:5] and all(e == 1 for _, e, _ in a)
    pairs = list(EpochSampler(10, True, 0, per_image=2))
    assert len(pairs) == 20 and all(pairs[k][0] == pairs[k + 1][0] and (pairs[k][2], pairs[k + 1][2]) == (0, 1)
                                    for k in range(0, 20, 2))


def test_prompts_per_image_are_distinct_prompts_of_one_image(tmp_path):
    dm = make(tmp_path, n_train=40, prompts={"per_image": 2})
    ds = dm.split("train")
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert torch.equal(batch["index"][0::2], batch["index"][1::2])  # an image's prompts share a batch
    pairs = [(ds[(i, 0, 0)]["prompt"], ds[(i, 0, 1)]["prompt"]) for i in range(len(ds))]
    assert all(a != b for a, b in pairs)  # every ShapesWorld image allows two distinct prompts
    assert [ds[(i, 0, 0)]["prompt"] for i in range(10)] == [ds[(i, 0)]["prompt"] for i in range(10)]


def test_cached_teacher_outputs_equal_the_teacher(tmp_path, teacher):
    dm = make(tmp_path, teacher)
    batch = next(iter(dm.val_dataloader()))
    out = teacher(images=batch["image"], input_ids=batch["teacher_input_ids"],
                  attention_mask=batch["teacher_attention_mask"])
    for key, value in out.items():
        torch.testing.assert_close(batch["teacher"][key], value.float(), atol=5e-3, rtol=2e-3)  # stored float16
    calls = []
    real = teacher.forward
    teacher.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        again = make(tmp_path, teacher)  # a second datamodule reads the cache: the teacher does not run
        next(iter(again.val_dataloader()))
    finally:
        del teacher.forward
    assert len(calls) <= 1  # one probe call for the output shapes, never the whole split


def test_bad_config_is_named(tmp_path):
    from lit_experiments.deploy.build import build_study

    bad = tmp_path / "bad.yaml"  # a source that names no class (the string that picked one is gone)
    bad.write_text("model: {class_path: lit_experiments.studies.distill.module.DistillModule, init_args: {student: "
                   "{class_path: lit_experiments.studies.distill.components.student.Student}}}\n"
                   "data: {class_path: lit_experiments.studies.distill.datamodule.DistillDataModule, "
                   "init_args: {source: {class_path: nope}}}\n")
    with pytest.raises(ConfigError, match="source"):
        build_study([str(bad)])
    with pytest.raises(ConfigError, match="DistillCoco needs root"):
        DistillCoco(None, None, None, None, None)
    with pytest.raises(ConfigError, match="prompts: unknown keys"):
        DistillDataModule(DistillShapes(), prompts={"ratio": {}})
