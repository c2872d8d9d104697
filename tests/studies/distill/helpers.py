"""Test helpers of the distill study: a datamodule from flat keyword arguments (the parts built here), with the
student's text tower attached as a trainer's module would give it."""
from __future__ import annotations

from typing import Any

import torch

from lit_experiments.studies.distill.components.sources import DistillCoco, DistillShapes
from lit_experiments.studies.distill.components.student import TextEncoder
from lit_experiments.studies.distill.components.units import EpochOrder
from lit_experiments.studies.distill.datamodule import DistillDataModule

SOURCE_KEYS = {"n_train", "n_val", "n_test", "seed", "concept", "clips", "allow_val_test_overlap"}


def text_tower(context: int = 32, model_name: str = "MobileCLIP-S1") -> TextEncoder:
    """A tiny text tower with the open_clip tokenizer of ``model_name`` (built without moving the global RNG)."""
    with torch.random.fork_rng():
        return TextEncoder(16, model_name, context_length=context, width=16, layers=1, heads=2)


def make_dm(teacher: Any = None, *, shapes: dict | None = None, root: str | None = None,
            coco_train: dict | None = None, coco_val: dict | None = None, coco_test: dict | None = None,
            image_size: int | None = None, shuffle_seed: int | None = None, feature_level: int | None = None,
            video: bool = False, text: Any = "tiny", dataset: str | None = None, **kw: Any) -> DistillDataModule:
    """``DistillDataModule`` with a ShapesWorld source (``shapes``: its world) or, given ``root``, a COCO one;
    ``text``: the student's text tower (``"tiny"``: :func:`text_tower`; None: none attached)."""
    source_args = {k: kw.pop(k) for k in list(kw) if k in SOURCE_KEYS}
    if root is not None:
        source_args.pop("clips", None)
        for key in ("n_train", "n_val", "n_test", "concept"):
            source_args.pop(key, None)
        source = DistillCoco(root, image_size, coco_train, coco_val, coco_test, **source_args)
    else:
        source = DistillShapes(world=shapes, **source_args)
    dm = DistillDataModule(source, frozen=teacher, sampler=EpochOrder(shuffle_seed), **kw)
    dm.feature_level, dm.video = feature_level, video
    dm.text_tower = text_tower() if text == "tiny" else text
    return dm


def run_test_loop(tmp: Any, teacher: Any, *, probe_images: int = 4, gallery_images: int = 0,
                  threshold: float | None = None) -> tuple[DistillDataModule, Any, dict[str, float]]:
    """A tiny untrained student tested through Lightning's test loop on 8 ShapesWorld test images (run dir
    ``tmp/run``); ``threshold``: both models' stored score threshold (a low one keeps some masks of both).
    Returns the datamodule, the module and the test results."""
    import lightning as L

    from lit_experiments.core.lazy import LazyBuild
    from lit_experiments.studies.distill.components.student import tiny_student
    from lit_experiments.studies.distill.module import DistillModule

    torch.manual_seed(0)
    dm = make_dm(teacher=teacher, n_train=8, n_val=4, n_test=8, shapes={"image_size": 32},
                 cache_dir=str(tmp / "cache"), batch_size=8)
    module = DistillModule(tiny_student(image_size=32, num_queries=4), probe_images=probe_images,
                           gallery_images=gallery_images)
    module._run_dir = tmp / "run"
    if threshold is not None:
        for buffer in (module.calibration_values, module.teacher_calibration_values):
            buffer.copy_(torch.tensor([1.0, 1.0, threshold, 1.0], dtype=torch.float64))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp),
                        callbacks=[LazyBuild()])
    return dm, module, trainer.test(module, datamodule=dm, verbose=False)[0]
