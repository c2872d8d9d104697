"""DDP on CPU (gloo): a 2-process curriculum completes and evaluation counts every sample exactly once (F37)."""

from __future__ import annotations

import json

import torch
from torch.utils.data import DistributedSampler

from lit_experiments.core.curriculum import load_weights
from lit_experiments.core.specs import StageSpec
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.toy.datamodule import ToyDataModule, make_blobs
from lit_experiments.studies.toy.module import ToyModule

from .toys import FAST, stages


def dm() -> ToyDataModule:
    # 21 validation samples: not divisible by 2 ranks x batch 4, so a padding sampler would repeat some
    return ToyDataModule(n_train=64, n_val=21, n_test=21, batch_size=4)


def validate(model, run_dir, **kw):
    trainer = LitTrainer(run_dir=str(run_dir), **{**FAST, **kw})
    return trainer.validate(model, datamodule=dm(), verbose=False)[0]


def direct_val_loss(model) -> float:
    ds = make_blobs(21, 8, 3, seed=1)
    model.eval()
    with torch.no_grad():
        logits = model({"x": ds.x})
    return torch.nn.functional.cross_entropy(logits, ds.y).item()


def test_f36_f37_two_process_curriculum_with_lazy_layer_and_unpadded_evaluation(tmp_path):
    run_dir = tmp_path / "ddp"
    trainer = LitTrainer(run_dir=str(run_dir), **{**FAST, "strategy": "ddp_spawn", "devices": 2})
    model = ToyModule()
    trainer.curriculum(model, dm(), stages(("encoder", 1, ["encoder", "head"]), ("head", 1, ["head"])),
                       test_after=False)
    results = json.loads((run_dir / "results.json").read_text())
    assert [results["stages"][s]["status"] for s in ("encoder", "head")] == ["done", "done"]

    fresh = ToyModule()
    load_weights(fresh, run_dir / "stages" / "01_head" / "final.ckpt", dm_ready())
    one = validate(fresh, tmp_path / "v1")
    # the 2-process run validated these final weights at the end of its last stage
    two = results["stages"]["head"]["metrics"]
    assert abs(one["val/loss"] - two["head/val/loss"]) < 1e-6
    assert abs(one["val/acc"] - two["head/val/acc"]) < 1e-6
    assert abs(one["val/loss"] - direct_val_loss(fresh)) < 1e-5


def dm_ready() -> ToyDataModule:
    d = dm()
    d.setup("fit")
    return d


def test_f37_padding_sampler_would_count_samples_twice():
    """The bug the eval loader avoids: Lightning's default DistributedSampler pads 21 samples to 22."""
    ds = make_blobs(21, 8, 3, seed=1)
    padded = [i for r in range(2) for i in DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)]
    assert len(padded) == 22 and len(set(padded)) == 21

    class FakeTrainer:
        world_size, global_rank = 2, 0

    module = dm_ready()
    seen = []
    for rank in range(2):
        FakeTrainer.global_rank = rank
        module.trainer = FakeTrainer()
        seen += list(module.val_dataloader().sampler)
    assert sorted(seen) == list(range(21))


def test_stage_spec_round_trip_in_ddp_spawn_pickles():
    import pickle

    spec = StageSpec(name="a", max_epochs=1, trainable=["x"])
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_every_rank_destroys_its_process_group_at_exit(tmp_path, monkeypatch):
    """A spawned worker that exited with its gloo group alive aborted now and then (SIGABRT, "terminate called
    without an active exception") and failed the 2-process test above; LazyBuild.setup, which runs on every
    rank, registers the clean-up."""
    import atexit

    import torch.distributed as dist

    from lit_experiments.core import lazy

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(lazy, "_CLEANUP_REGISTERED", False)

    class Rank:
        world_size = 2

    lazy.LazyBuild().setup(Rank(), ToyModule(), "validate")
    assert registered == [lazy._destroy_process_group]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    registered[0]()  # what the interpreter runs at exit
    assert not dist.is_initialized()
