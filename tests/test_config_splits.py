"""No shipped config validates on its test data (F47).

Every YAML under configs/ is composed (its `# base:` files, by the one rule of core/configs) and its datamodule's
validation source is compared with its test source: the MOVi folder a split reads (slots), the COCO annotation
file / image folder (distill, multilabel), the label file (multilabel csv / jsonl), the listed videos of a frames
folder (retrieval). A validation source equal to the test source fails, unless the YAML says
`allow_val_test_overlap: true` (then every tuned number of the run is marked). Sources drawn from one pool by a
seeded split (satipatthana, toy, ShapesWorld worlds of different seeds, a held-out part removed from its pool) are
disjoint by construction. A datamodule without a rule here fails the test: a new study says how its splits are
kept apart. The datamodules check the ids themselves at setup (core/splits.check_disjoint); this test catches a
config before it runs.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from lit_experiments.core.configs import load_composed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
ALLOW = "allow_val_test_overlap"


def arguments(data: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The names of the datamodule's class and its bases, and its init arguments (signature defaults filled in)."""
    import importlib

    path = data["class_path"]
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return [c.__name__ for c in cls.__mro__], {**defaults, **(data.get("init_args") or {})}


def _coco_source(root: Any, args: dict[str, Any] | None) -> set[tuple[str, str]]:
    args = args or {}
    return {(kind, str(Path(str(root)) / str(args[key]))) for kind, key in (("annotation file", "ann_file"),
                                                                             ("image folder", "image_dir"))
            if args.get(key)}


def slots(a: dict[str, Any]) -> tuple[Any, Any] | None:
    source = a.get("source") or {}
    if not str(source.get("class_path", "")).endswith("MoviClipSplits"):
        return None  # ShapesWorld: one world per split, seeds seed + 0 / 1 / 2
    from lit_experiments.studies.slots.sources import DEFAULT_MOVI_SPLITS

    s = source.get("init_args") or {}
    folders = {**DEFAULT_MOVI_SPLITS, **(s.get("folders") or {})}
    val, test = folders["val"], folders["test"]
    if val == test and s.get("val_fraction") is not None:
        return None  # a seeded part of the folder is held out as validation and removed from test
    return {("MOVi folder", f"{s['root']}/{val}")}, {("MOVi folder", f"{s['root']}/{test}")}


def distill(a: dict[str, Any]) -> tuple[Any, Any] | None:
    source = a.get("source") or {}
    if not str(source.get("class_path", "")).endswith("DistillCoco"):
        return None  # ShapesWorld: one world per split
    s = source.get("init_args") or {}
    if s.get(ALLOW) is True:
        return None  # the source opts in (every number of the run marked tuned_on_test)
    val = s.get("val") or {}
    val_source = s["train"] if "holdout" in val else val  # a held-out part of train (removed from train)
    return _coco_source(s["root"], val_source), _coco_source(s["root"], s["test"])


def multilabel(a: dict[str, Any]) -> tuple[Any, Any] | None:
    source = a.get("source") or {}
    kind, s = str(source.get("class_path", "")), source.get("init_args") or {}
    if kind.endswith("CocoCaptionSource"):  # validation is a seeded share of the pool
        return _coco_source(s["root"], s["pool"]), _coco_source(s["root"], s["test"])
    if kind.endswith("FileCaptionSource"):  # file null: labels.csv or labels.jsonl, whichever exists
        pools = [s["file"]] if s.get("file") else ["labels.csv", "labels.jsonl"]
        return ({("label file", str(Path(str(s["root"])) / p)) for p in pools},
                {("label file", str(Path(str(s["root"])) / str(s["test_file"])))})
    return None  # ShapesWorld: pool and test worlds of different seeds


def retrieval(a: dict[str, Any]) -> tuple[Any, Any] | None:
    source = a.get("source") or {}
    s = source.get("init_args") or {}
    if (not str(source.get("class_path", "")).endswith(".VideoFrameFolder") or s.get("val_videos") is None
            or s.get("test_videos") is None or s.get(ALLOW) is True):
        return None  # worlds of different seeds, or whole videos split in order (val before test)
    return ({("video", str(v)) for v in s["val_videos"]}, {("video", str(v)) for v in s["test_videos"]})


def one_pool(a: dict[str, Any]) -> None:
    return None  # a seeded split of one pool: disjoint by construction


RULES = {"SlotsDataModule": slots, "DistillDataModule": distill, "MultilabelDataModule": multilabel,
         "RetrievalDataModule": retrieval, "SatipatthanaDataModule": one_pool, "ToyDataModule": one_pool}


def test_f47_no_config_validates_on_test():
    checked, problems = 0, []
    for config in CONFIGS:
        data = load_composed(config).get("data")
        if not isinstance(data, dict):
            continue  # a fragment (trainer / logger)
        names, args = arguments(data)
        rule = next((RULES[n] for n in names if n in RULES), None)
        assert rule is not None, (f"{config.relative_to(ROOT)}: no validation-vs-test rule for {names[0]}; add one "
                                  f"to {Path(__file__).name} (which keys name its validation and test sources)")
        sources = rule(args)
        checked += 1
        if sources is None or args.get(ALLOW) is True:
            continue
        val, test = sources
        shared = sorted(val & test)
        if shared:
            problems.append(f"{config.relative_to(ROOT)}: validation and test share "
                            + ", ".join(f"{kind} {where}" for kind, where in shared))
    assert checked > 20, checked
    assert not problems, ("configs that validate (calibrate, select checkpoints) on their test data; hold out a "
                          f"part of train, or set {ALLOW}: true to mark every tuned number (F47):\n  "
                          + "\n  ".join(problems))
