"""MultilabelDataModule: cached tower embeddings equal the towers' own, cache reuse / invalidation, folds, labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_experiments.core import folds as folds_mod
from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import CATEGORIES, COLORS, ShapesWorld
from lit_experiments.studies.multilabel.datamodule import MultilabelDataModule, MultilabelSplits
from lit_experiments.studies.multilabel.sources import (
    CocoCaptionSource,
    FileCaptionSource,
    ShapesCaptionSource,
    SideCaptions,
)
from lit_experiments.studies.multilabel.standin import side_caption
from lit_experiments.studies.multilabel.towers import SiglipTowers, tiny_config

CFG = tiny_config(image_size=16, patch_size=8, hidden=32, vision_layers=1, text_layers=1, heads=2, text_len=12)


def towers(seed: int = 0, policy: str = "pad_to_max") -> SiglipTowers:
    return SiglipTowers(config=CFG, init_seed=seed, text_mask_policy=policy)


SOURCE_KEYS = ("n_pool", "n_test", "seed", "world", "label_space", "captions")
SPLIT_KEYS = ("val_fraction", "split_seed", "sampler_seed")


def dm(tmp_path, source=None, **kw) -> MultilabelDataModule:
    """A datamodule over a ShapesWorld source (24 pool / 8 test images of 16 px) unless ``source`` is given; the
    source's and the splits' arguments may be given flat."""
    src = {"n_pool": 24, "n_test": 8, "world": {"image_size": 16}, **{k: kw.pop(k) for k in SOURCE_KEYS if k in kw}}
    splits = {k: kw.pop(k) for k in SPLIT_KEYS if k in kw}
    args = {"batch_size": 8, "eval_batch_size": 16, "cache_dir": str(tmp_path / "cache"), **kw}
    return MultilabelDataModule(source=ShapesCaptionSource(**src) if source is None else source,
                                splits=MultilabelSplits(**splits), **args)


def all_batches(loader) -> dict:
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize("policy", ["pad_to_max", "attention_mask"])
def test_batches_hold_what_the_towers_compute(tmp_path, policy):
    t = towers(policy=policy)
    d = dm(tmp_path)
    d.serve_frozen(t)
    d.setup("fit")
    batch = next(iter(d.train_dataloader()))
    assert set(batch) == {"image_emb", "text_emb", "targets", "index"}
    assert batch["image_emb"].shape == (8, t.embed_dim) and batch["image_emb"].dtype == torch.float32
    assert batch["text_emb"].shape == (8, t.embed_dim) and batch["targets"].shape == (8, len(CATEGORIES))
    assert set(batch["targets"].unique().tolist()) <= {0.0, 1.0} and batch["index"].shape == (8,)
    test = all_batches(d.test_dataloader()[0])
    world = ShapesWorld(8, seed=3, **d.source.world)  # the test world: seed + 3
    items = [world[i] for i in range(8)]
    images = torch.stack([it["image"] for it in items])
    captions = [side_caption(world, i, d.base["test"].caption_seed, 0.5, 0.5) for i in range(8)]
    assert captions == d.captions("test")
    want_img = t.encode_image(**t.image_inputs(images))
    want_txt = torch.cat([t.encode_text(**t.tokenize([c])) for c in captions])  # one caption at a time
    assert torch.equal(test["index"], torch.arange(8))
    torch.testing.assert_close(test["image_emb"], want_img.half().float(), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(test["text_emb"], want_txt.half().float(), atol=2e-3, rtol=2e-3)
    assert torch.equal(test["targets"], torch.stack([it["labels"] for it in items]))


def test_cache_is_reused_and_a_changed_tower_selects_another(tmp_path, monkeypatch):
    t = towers()
    first = dm(tmp_path)
    first.serve_frozen(t)
    a = all_batches(first.val_dataloader())
    path = first.embedded("pool").images.path

    def boom(*args, **kwargs):
        raise AssertionError("the towers ran although the cache holds their embeddings")

    monkeypatch.setattr(SiglipTowers, "encode_image", boom)
    monkeypatch.setattr(SiglipTowers, "encode_text", boom)
    again = dm(tmp_path)
    again.serve_frozen(towers())  # same config and seed: same weights digest, same cache
    b = all_batches(again.val_dataloader())
    assert again.embedded("pool").images.path == path
    assert torch.equal(a["image_emb"], b["image_emb"]) and torch.equal(a["text_emb"], b["text_emb"])
    other = dm(tmp_path)
    other.serve_frozen(towers(seed=1))
    with pytest.raises(AssertionError, match="the towers ran"):  # another digest: the cache must be rebuilt
        other.val_dataloader()
    monkeypatch.undo()
    c = all_batches(other.val_dataloader())
    assert other.embedded("pool").images.path != path
    assert not torch.allclose(a["image_emb"], c["image_emb"])


def test_folds_file_splits_the_pool_and_keeps_the_test_split_out(tmp_path):
    d = dm(tmp_path)
    n, targets = d.fold_pool()
    assert n == 24 and targets.shape == (24, len(CATEGORIES))
    path = tmp_path / "folds.json"
    saved = folds_mod.ensure_folds(path, n, targets, 3, 0)
    assert saved["kind"] == "multilabel-stratified"
    f = dm(tmp_path, fold={"file": str(path), "index": 1})
    f.serve_frozen(towers())
    f.setup("fit")
    assert f.split_indices == {"train": saved["folds"][1]["train"], "val": saved["folds"][1]["val"]}
    val = all_batches(f.val_dataloader())
    assert val["index"].tolist() == saved["folds"][1]["val"]
    assert torch.equal(val["targets"], torch.from_numpy(targets[saved["folds"][1]["val"]]))
    assert len(f.split("test")) == 8
    pool_images = {bytes(f.base["pool"][i]["image"].numpy().tobytes()) for i in range(n)}
    assert not any(bytes(f.base["test"][i]["image"].numpy().tobytes()) in pool_images for i in range(8))
    assert f.base["test"].fingerprint() != f.base["pool"].fingerprint()
    with pytest.raises(ValueError, match="differ from the data"):  # folds of another pool are refused
        dm(tmp_path, n_pool=30, fold={"file": str(path), "index": 0}).setup("fit")


def test_without_fold_a_seeded_val_share_of_the_pool(tmp_path):
    a, b = dm(tmp_path, val_fraction=0.25), dm(tmp_path, val_fraction=0.25)
    a.setup("fit")
    b.setup("fit")
    assert a.split_indices == b.split_indices and len(a.split_indices["val"]) == 6
    assert sorted(a.split_indices["train"] + a.split_indices["val"]) == list(range(24))
    c = dm(tmp_path, val_fraction=0.25, split_seed=1)
    c.setup("fit")
    assert c.split_indices != a.split_indices


def test_color_x_category_label_space_matches_shapes_world(tmp_path):
    d = dm(tmp_path, label_space="color_x_category", world={"image_size": 16, "colors": None, "max_objects": 3})
    n, targets = d.fold_pool()
    assert targets.shape == (24, len(COLORS) * len(CATEGORIES)) == (24, 48) and d.num_labels == 48
    world = ShapesWorld(24, seed=2, **d.source.world)
    for i in range(n):
        item = world[i]
        k = int(item["num_objects"])
        want = np.zeros(48, dtype=np.float32)
        want[item["color"][:k].numpy() * len(CATEGORIES) + item["category"][:k].numpy()] = 1.0
        np.testing.assert_array_equal(targets[i], want)
        cats = targets[i].reshape(len(COLORS), len(CATEGORIES)).max(0)  # collapsing colours gives `labels`
        np.testing.assert_array_equal(cats, item["labels"].numpy())
    assert d.label_names[len(CATEGORIES) + 2] == f"{list(COLORS)[1]} {CATEGORIES[2]}"
    assert len({tuple(np.flatnonzero(row)) for row in targets}) > 3  # not one constant row


def test_loaders_without_towers_name_serve_frozen(tmp_path):
    d = dm(tmp_path)
    d.setup("fit")
    for loader in (d.train_dataloader, d.val_dataloader, d.test_dataloader):
        with pytest.raises(ConfigError, match="serve_frozen"):
            loader()


def test_use_text_false_serves_images_only(tmp_path):
    d = dm(tmp_path, use_text=False)
    d.serve_frozen(towers())
    batch = next(iter(d.val_dataloader()))
    assert set(batch) == {"image_emb", "targets", "index"}


@pytest.mark.parametrize("make, match", [
    (lambda t: CocoCaptionSource(root="r", pool={}, test={}), "pool"),  # was dataset: coco without coco_pool
    (lambda t: dm(t, source="nope"), "nope"),  # a source is a part (was dataset: nope)
    (lambda t: FileCaptionSource(root="r"), "test_file"),  # was dataset: csv without test_file
    (lambda t: FileCaptionSource(root="r", test_file="t", on_bad_sample="drop"), "on_bad_sample"),
    (lambda t: dm(t, label_space="colours"), "label_space"), (lambda t: dm(t, val_fraction=1.0), "val_fraction"),
    (lambda t: dm(t, world={"seed": 4}), "n_pool / n_test / seed")])
def test_bad_config_is_named(tmp_path, make, match):
    with pytest.raises(ConfigError, match=match):
        make(tmp_path)


def test_a_file_source_has_its_own_class_list_and_no_label_space():
    """Was: ``dataset: csv`` with ``label_space: color_x_category`` refused; a file source now has no such argument
    (its labels are its class list), and its image side defaults to the towers' input side."""
    import inspect

    for cls in (FileCaptionSource, CocoCaptionSource):
        params = inspect.signature(cls.__init__).parameters
        assert "label_space" not in params and params["image_size"].default is None
        assert cls.label_space == "categories"


def test_a_file_source_without_image_size_reads_the_towers_side(tmp_path):
    write_files(tmp_path / "set")
    d = dm(tmp_path, source=FileCaptionSource(root=str(tmp_path / "set"), file="pool.csv", test_file="test.csv"))
    with pytest.raises(ConfigError, match="image_size"):
        d.fold_pool()  # neither an image_size nor the towers
    d.serve_frozen(towers())
    assert d.fold_pool()[0] == 8 and d.base["pool"].reader.image_size == towers().image_size == 16


def test_side_captions_are_a_typed_part():
    src = ShapesCaptionSource(n_pool=4, n_test=2, captions=SideCaptions(name_p=1.0, vague_p=0.0, seed=3))
    assert (src.name_p, src.vague_p, src.caption_seed) == (1.0, 0.0, 3)


# ---------------------------------------------------------------------------------------------- csv / jsonl
def write_files(root, n_pool: int = 8, n_test: int = 4, empty_caption: int | None = None,
                test_label: str | None = None) -> ShapesWorld:
    """A MultiLabelFiles folder of ShapesWorld images: pool.csv / pool.jsonl and test.csv / test.jsonl."""
    from lit_experiments.data.multilabel import write_multilabel

    world = ShapesWorld(n_pool + n_test, image_size=16, seed=5)
    items = [world[i] for i in range(len(world))]
    labels = [[world.categories[c] for c in it["category"][: int(it["num_objects"])].tolist()] for it in items]
    if test_label is not None:
        labels[n_pool] = [test_label]
    captions = [it["caption"] if i != empty_caption else "" for i, it in enumerate(items)]
    write_multilabel(root, [it["image"].permute(1, 2, 0).numpy() for it in items], labels, captions,
                     list(world.categories))
    csv_lines = (root / "labels.csv").read_text().splitlines()
    json_lines = (root / "labels.jsonl").read_text().splitlines()
    (root / "pool.csv").write_text("\n".join(csv_lines[: n_pool + 1]) + "\n")
    (root / "test.csv").write_text("\n".join(csv_lines[:1] + csv_lines[n_pool + 1:]) + "\n")
    (root / "pool.jsonl").write_text("\n".join(json_lines[:n_pool]) + "\n")
    (root / "test.jsonl").write_text("\n".join(json_lines[n_pool:]) + "\n")
    return world


def files_dm(tmp_path, kind: str = "csv", on_bad_sample: str = "error", **kw) -> MultilabelDataModule:
    source = FileCaptionSource(root=str(tmp_path / "set"), file=f"pool.{kind}", test_file=f"test.{kind}",
                               image_size=16, on_bad_sample=on_bad_sample)
    return dm(tmp_path, source=source, **kw)


def test_csv_batches_hold_the_towers_embeddings_of_the_files(tmp_path):
    world = write_files(tmp_path / "set")
    t = towers()
    d = files_dm(tmp_path)
    d.serve_frozen(t)
    n, targets = d.fold_pool()
    assert n == 8 and targets.shape == (8, len(CATEGORIES))
    test = all_batches(d.test_dataloader()[0])
    items = [world[i] for i in range(8, 12)]
    torch.testing.assert_close(test["image_emb"], t.encode_image(**t.image_inputs(torch.stack(
        [it["image"] for it in items]))).half().float(), atol=2e-3, rtol=2e-3)
    want_txt = torch.cat([t.encode_text(**t.tokenize([it["caption"]])) for it in items])
    torch.testing.assert_close(test["text_emb"], want_txt.half().float(), atol=2e-3, rtol=2e-3)
    assert torch.equal(test["targets"], torch.stack([it["labels"] for it in items]))


@pytest.mark.parametrize("kind, line", [("csv", 5), ("jsonl", 4)])  # pool record 3: csv line 5, jsonl line 4
def test_missing_caption_names_file_and_line_or_is_a_counted_skip(tmp_path, kind, line):
    write_files(tmp_path / "set", empty_caption=3)
    with pytest.raises(OSError, match=rf"pool\.{kind}:{line}: image 000003\.png has no caption"):
        files_dm(tmp_path, kind).fold_pool()
    d = files_dm(tmp_path, kind, on_bad_sample="skip")
    with pytest.warns(UserWarning, match="skipped 1 of 8"):
        n, targets = d.fold_pool()
    assert n == 7 and d.base["pool"].skipped == 1
    assert files_dm(tmp_path, kind, use_text=False).fold_pool()[0] == 8  # no text asked: the image is kept


def test_unknown_label_in_the_test_file_names_file_and_line(tmp_path):
    write_files(tmp_path / "set", test_label="dodecagon")
    d = files_dm(tmp_path)
    d.fold_pool()
    with pytest.raises(ValueError, match=r"test\.csv:2: label 'dodecagon' is not in the class list"):
        d.setup("fit")


def test_unreadable_image_is_an_error_or_a_counted_skip(tmp_path):
    write_files(tmp_path / "set")
    (tmp_path / "set" / "images" / "000002.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="000002.png"):
        files_dm(tmp_path).fold_pool()
    d = files_dm(tmp_path, on_bad_sample="skip")
    with pytest.warns(UserWarning, match="skipped 1 of 8"):
        assert d.fold_pool()[0] == 7


def test_test_file_uses_the_pool_class_list(tmp_path):
    write_files(tmp_path / "set", test_label="circle")
    # every test record names only circles: its own label union would be ['circle']
    lines = (tmp_path / "set" / "test.csv").read_text().splitlines()
    (tmp_path / "set" / "test.csv").write_text("\n".join([lines[0]] + [",".join([ln.split(",")[0], "circle", "a circle"])
                                                          for ln in lines[1:]]) + "\n")
    (tmp_path / "set" / "classes.txt").unlink()  # class list = the labels found in the (pool) file
    d = files_dm(tmp_path)
    d.setup("fit")
    pool, test = d.base["pool"], d.base["test"]
    assert len(pool.label_names) > 1 and test.label_names == pool.label_names
    assert test.targets.shape == (4, len(pool.label_names))
    assert test.targets[:, pool.label_names.index("circle")].tolist() == [1.0] * 4


# ---------------------------------------------------------------------------------------------- coco
def write_coco_split(root, n: int, seed: int, drop_caption_of: int | None = None):
    import json as _json

    from lit_experiments.data.tools import write_shapes

    write_shapes(root, "coco", n=n, seed=seed, image_size=16, max_objects=2)
    if drop_caption_of is not None:
        path = root / "annotations" / "captions.json"
        caps = _json.loads(path.read_text())
        caps["annotations"] = [a for a in caps["annotations"] if a["image_id"] != drop_caption_of]
        path.write_text(_json.dumps(caps))


def coco_dm(tmp_path, on_bad_sample: str = "error", **kw) -> MultilabelDataModule:
    split = {s: {"ann_file": f"{s}/annotations/instances.json", "image_dir": f"{s}/images",
                 "captions_file": f"{s}/annotations/captions.json"} for s in ("pool", "test")}
    source = CocoCaptionSource(root=str(tmp_path / "coco"), pool=split["pool"], test=split["test"], image_size=16,
                               on_bad_sample=on_bad_sample)
    return dm(tmp_path, source=source, **kw)


def test_coco_targets_and_captions_come_from_the_annotations(tmp_path):
    import json as _json

    write_coco_split(tmp_path / "coco" / "pool", 10, 1)
    write_coco_split(tmp_path / "coco" / "test", 4, 2)
    d = coco_dm(tmp_path)
    d.serve_frozen(towers())
    n, targets = d.fold_pool()
    inst = _json.loads((tmp_path / "coco" / "pool" / "annotations" / "instances.json").read_text())
    names = [c["name"] for c in sorted(inst["categories"], key=lambda c: c["id"])]
    want = np.zeros((len(inst["images"]), len(names)), dtype=np.float32)
    index = {im["id"]: i for i, im in enumerate(sorted(inst["images"], key=lambda im: im["id"]))}
    cat = {c["id"]: j for j, c in enumerate(sorted(inst["categories"], key=lambda c: c["id"]))}
    for a in inst["annotations"]:
        want[index[a["image_id"]], cat[a["category_id"]]] = 1.0
    assert n == 10 and d.label_names == names
    np.testing.assert_array_equal(targets, want)
    batch = all_batches(d.test_dataloader()[0])
    assert batch["image_emb"].shape[0] == 4 and "text_emb" in batch


def test_coco_image_without_caption_is_named_or_skipped_and_counted(tmp_path, capsys):
    write_coco_split(tmp_path / "coco" / "pool", 6, 1, drop_caption_of=None)
    write_coco_split(tmp_path / "coco" / "test", 4, 2)
    import json as _json

    path = tmp_path / "coco" / "pool" / "annotations" / "captions.json"
    caps = _json.loads(path.read_text())
    dropped = caps["annotations"][0]["image_id"]
    caps["annotations"] = [a for a in caps["annotations"] if a["image_id"] != dropped]
    path.write_text(_json.dumps(caps))
    with pytest.raises(ConfigError, match=rf"instances.json: image .* \(id {dropped}\) has no caption"):
        coco_dm(tmp_path).fold_pool()
    d = coco_dm(tmp_path, on_bad_sample="skip")
    assert d.fold_pool()[0] == 5
    assert "skipped 1 image(s) without a caption" in capsys.readouterr().out
    assert coco_dm(tmp_path, use_text=False).fold_pool()[0] == 6  # no text asked: nothing is missing
