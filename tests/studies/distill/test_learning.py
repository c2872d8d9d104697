"""The study's reduced learning check: a tiny student distilled from a briefly trained stand-in teacher learns to
answer colour prompts (presence separates positive from negative units) within a couple of hundred steps, through
the product's own datamodule (cached teacher outputs, two prompts per image) and the decoder objective."""
from __future__ import annotations

import lightning as L
import torch
from sklearn.metrics import roc_auc_score

from lit_experiments.core.lazy import LazyBuild
from lit_experiments.core.specs import OptimSpec, StageSpec
from lit_experiments.studies.distill.components import standin
from lit_experiments.studies.distill.components.student import tiny_student
from lit_experiments.studies.distill.components.teacher import Sam3Teacher, tiny_config
from lit_experiments.studies.distill.datamodule import DistillDataModule, collate_units
from lit_experiments.studies.distill.module import DistillModule

from .helpers import make_dm

COLORS = ("red", "green", "blue")
WORLD = {"image_size": 32, "max_objects": 2, "size_range": (0.3, 0.5), "colors": list(COLORS)}


def presence_auroc(module: DistillModule, dm: DistillDataModule) -> float:
    val = dm.split("val")
    batch = collate_units([val[i] for i in range(len(val))])
    with torch.no_grad():
        presence = module.eval()(batch)["presence_logits"]
    return roc_auc_score([k != "negative" for k in batch["kind"]], presence.numpy())


def test_student_learns_colour_prompts_from_the_standin_teacher(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = Sam3Teacher(config=tiny_config(image_size=32, patch_size=8, hidden=32, vit_layers=1, heads=2,
                                                 num_queries=2, decoder_layers=1, text_layers=1, text_len=8))
        standin._fit(teacher, {**standin.DEFAULT_DATA, **WORLD, "n_train": 256}, steps=150, batch_size=16, lr=3e-3,
                     seed=0, log_every=150)
        torch.manual_seed(0)
        dm = make_dm(teacher=teacher, concept="color", shapes=WORLD, n_train=256, n_val=48, n_test=8,
                               prompts={"ratios": {"category": 0.75, "generic": 0.0, "negative": 0.25},
                                        "generic": [], "per_image": 2},
                               batch_size=32, cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        module = DistillModule(tiny_student(image_size=32, num_queries=2), probe_images=0, gallery_images=0)
        module.set_stage(StageSpec(name="decoder", max_steps=240, optimizer=OptimSpec(name="AdamW", lr=2e-3)))
        val = collate_units([dm.split("val")[i] for i in range(len(dm.split("val")))])
        teacher_auroc = roc_auc_score([k != "negative" for k in val["kind"]], val["teacher"]["presence_logits"])
        before = presence_auroc(module, dm)
        trainer = L.Trainer(max_steps=240, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
                            limit_val_batches=0, callbacks=[LazyBuild()])
        trainer.fit(module.train(), datamodule=dm)
        after = presence_auroc(module, dm)
    finally:
        torch.set_num_threads(threads)
    print(f"presence AUROC: teacher {teacher_auroc:.3f}, student {before:.3f} -> {after:.3f}")
    assert teacher_auroc > 0.75, teacher_auroc  # the teacher answers the prompt ...
    assert after > max(0.75, before + 0.2), (before, after, teacher_auroc)  # ... and the student learned it from it
