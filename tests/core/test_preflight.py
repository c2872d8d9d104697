"""`lit-exp preflight` (issue 24): the table's numbers against independent measurements on the toy, the
out-of-memory path under a simulated cap, and weight files (missing: one block naming the path; present: digest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lit_experiments.cli import main
from lit_experiments.core.errors import ConfigError
from lit_experiments.core.lazy import lazy_build
from lit_experiments.experiments.preflight import config_weights, run_preflight, tensor_bytes
from lit_experiments.studies.toy.datamodule import ToyDataModule
from lit_experiments.studies.toy.module import ToyModule

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "configs" / "toy" / "curriculum.yaml"


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("preflight")
    report = run_preflight([str(TOY)], steps=2, device="cpu", gpu="rtx5080", out=out)
    return report, out


def independent_toy():
    """The toy curriculum's model and data, built by hand (hidden 32, 3 classes, 256 samples, batch 32)."""
    model, dm = ToyModule(hidden=32, num_classes=3), ToyDataModule(n_train=256, batch_size=32)
    dm.setup("fit")
    lazy_build(model, next(iter(dm.train_dataloader())))
    return model, dm


def step_flops(model, batch, trainable: list[str]) -> int:
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(t + ".") for t in trainable))
    model.train()
    with FlopCounterMode(display=False) as counter:
        loss = torch.nn.functional.cross_entropy(model.head(model.encoder(batch["x"])), batch["y"])
        loss.backward()
    return counter.get_total_flops()


def test_toy_numbers_match_independent_measurements(toy_report):
    report, out = toy_report
    assert report["ok"] and json.loads((out / "preflight.json").read_text())["stages"][0]["stage"] == "encoder"
    model, dm = independent_toy()
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    assert report["parameters"] == total
    encoder, head_stage = report["stages"]
    assert (encoder["trainable_params"], encoder["frozen_params"]) == (total, 0)
    assert (head_stage["trainable_params"], head_stage["frozen_params"]) == (head, total - head)
    # batch sizes: the datamodule's, then the head stage's `data: {batch_size: 64}`
    assert (encoder["batch_size"], head_stage["batch_size"]) == (32, 64)
    assert encoder["batch"].startswith("x: (32, 8) float32")
    # FLOPs of one training step (forward + backward), counted here on the same model and batch shapes
    batch32 = next(iter(dm.train_dataloader()))
    assert encoder["flops_per_step"] == step_flops(model, batch32, ["encoder", "head"])
    dm.batch_size = 64
    batch64 = next(iter(dm.train_dataloader()))
    assert head_stage["flops_per_step"] == step_flops(model, batch64, ["head"])
    # the projection: batches from len(train_dataloader) x the stage's max_epochs, times the measured batch time
    assert encoder["steps_per_epoch"] == len(_loader(32)) == 8
    assert head_stage["steps_per_epoch"] == len(_loader(64)) == 4
    assert (encoder["stage_batches"], head_stage["stage_batches"]) == (2 * 8, 1 * 4)
    for row in (encoder, head_stage):
        assert row["epoch_s"] == pytest.approx(row["steps_per_epoch"] * (row["step_s"] + row["data_s"]))
        assert row["stage_s"] == pytest.approx(row["stage_batches"] * (row["step_s"] + row["data_s"]) + row["val_runs"]
                                               * row["val_pass_s"] + row["stage_setup_s"])
        assert row["stage_setup_s"] >= 0 and row["val_runs"] == {"encoder": 2, "head": 1}[row["stage"]]
        # CPU peak: at least the parameters, their gradients and the batch
        assert row["peak_bytes"] > tensor_bytes(model)
        assert row["card"]["fits"] is True and row["card"]["step_s"] > 0
    assert report["weights"] == [{"key": "*", "source": "random init"}]


def _loader(batch_size: int):
    dm = ToyDataModule(n_train=256, batch_size=batch_size)
    dm.setup("fit")
    return dm.train_dataloader()


def test_the_table_is_printed_and_exit_code_zero(capsys, tmp_path):
    code = main(["preflight", "-c", str(TOY), "--steps", "1", "--out", str(tmp_path / "pf")])
    out = capsys.readouterr().out
    assert code == 0
    assert "encoder" in out and "head" in out and "FLOPs/step" in out and "ok:" in out
    assert (tmp_path / "pf" / "preflight.json").is_file()


def test_out_of_memory_names_the_largest_batch_that_fits_without_a_traceback(toy_report, capsys, tmp_path):
    report, _ = toy_report
    peak32 = report["stages"][0]["peak_bytes"]
    cap_gb = (peak32 - 1) / 2**30  # batch 32 does not fit by one byte
    code = main(["preflight", "-c", str(TOY), "--steps", "1", "--memory-cap-gb", repr(cap_gb),
                 "--out", str(tmp_path / "capped")])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.out + captured.err
    capped = json.loads((tmp_path / "capped" / "preflight.json").read_text())
    encoder = capped["stages"][0]
    fit = encoder["largest_batch"]
    assert fit is not None and fit < 32
    assert f"largest batch that fits: {fit}" in captured.out
    # independently: the named batch fits under the cap, twice that batch does not
    alone = run_preflight([str(TOY)], ["--data.init_args.batch_size", str(fit)], steps=1, device="cpu",
                          out=tmp_path / "alone")
    assert alone["stages"][0]["batch_size"] == fit
    assert alone["stages"][0]["peak_bytes"] <= cap_gb * 2**30
    if 2 * fit < 32:
        double = run_preflight([str(TOY)], ["--data.init_args.batch_size", str(2 * fit)], steps=1, device="cpu",
                               out=tmp_path / "double")
        assert double["stages"][0]["peak_bytes"] > cap_gb * 2**30


def test_missing_weight_file_is_one_block_naming_the_path(tmp_path, capsys):
    missing = tmp_path / "weights" / "resnet18_missing.pth"
    delta = tmp_path / "with_weights.yaml"
    delta.write_text(f"# base: {TOY}\nmodel:\n  init_args:\n    encoder:\n"
                     "      class_path: lit_experiments.backbones.TimmCNNBackbone\n"
                     f"      init_args: {{name: resnet18, pretrained: {missing}}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["preflight", "-c", str(delta), "--out", str(tmp_path / "pf")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "Traceback" not in err and err.startswith("lit-exp: error:")
    assert str(missing) in err and str(delta) in err and "model.init_args.encoder.init_args.pretrained" in err
    assert not (tmp_path / "pf").exists()


def test_a_weight_file_is_reported_with_its_sha256(tmp_path):
    weights = tmp_path / "encoder.safetensors"
    weights.write_bytes(b"not really weights, but bytes with a digest")
    config = tmp_path / "c.yaml"
    config.write_text("model: {init_args: {encoder: {init_args: {pretrained: x}}}}\n")
    raw = {"model": {"init_args": {"encoder": {"init_args": {"pretrained": str(weights)}},
                                   "text": {"init_args": {"checkpoint": "google/siglip2-base-patch16-224"}},
                                   "head": {"init_args": {"pretrained": False}}}}}
    found = config_weights(raw, [config])
    assert found[0] == {"key": "model.init_args.encoder.init_args.pretrained", "source": "file",
                        "path": str(weights.resolve()), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert found[1]["source"].startswith("hub id") and len(found) == 2
    raw["model"]["init_args"]["encoder"]["init_args"]["pretrained"] = str(tmp_path / "gone.pt")
    with pytest.raises(ConfigError, match="gone.pt"):
        config_weights(raw, [config])


# ------------------------------------------------------------------ performance switches (issue 24, item 2)
def test_switches_off_by_default_leave_trainer_and_loaders_as_they_were(tmp_path):
    from lit_experiments.core.trainer import LitTrainer, Speedups

    trainer = LitTrainer(run_dir=str(tmp_path / "run"), accelerator="cpu", logger=False)
    assert not any(isinstance(cb, Speedups) for cb in trainer.callbacks)
    dm = ToyDataModule()
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert (train.num_workers, train.pin_memory, train.persistent_workers) == (0, False, False)
    assert (val.num_workers, val.pin_memory, val.persistent_workers) == (0, False, False)
    assert dm.loader_kwargs() == {"num_workers": 0, "persistent_workers": False}


def test_switches_compile_trainable_parts_set_loader_and_carry_to_every_stage(tmp_path):
    from types import SimpleNamespace

    from lit_experiments.core.freezing import apply_stage_freeze
    from lit_experiments.core.specs import StageSpec
    from lit_experiments.core.trainer import LitTrainer, Speedups

    model, dm = independent_toy()
    apply_stage_freeze(model, ["head"], "head")
    switches = Speedups(compile=True, channels_last=True, loader={"pin_memory": True, "persistent_workers": True})
    switches.setup(SimpleNamespace(datamodule=dm), model, "fit")
    assert model.head._compiled_call_impl is not None and model.encoder._compiled_call_impl is None
    assert dm.pin_memory is True and dm.train_dataloader().pin_memory is True
    conv = torch.nn.Conv2d(3, 4, 3)
    Speedups(channels_last=True).setup(SimpleNamespace(datamodule=None), conv, "fit")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="pin_memroy"):
        Speedups(loader={"pin_memroy": True})
    frozen = torch.nn.Sequential(torch.nn.Linear(4, 4))
    frozen.always_frozen = True  # as a FrozenBackbone declares
    net = torch.nn.ModuleDict({"backbone": frozen, "head": torch.nn.Linear(4, 2)})
    Speedups(frozen_dtype="bf16").setup(SimpleNamespace(datamodule=None), net, "fit")
    assert frozen[0].weight.dtype == torch.bfloat16 and net["head"].weight.dtype == torch.float32
    with pytest.raises(ConfigError, match="frozen_dtype"):
        Speedups(frozen_dtype="int8")
    base = LitTrainer(run_dir=str(tmp_path / "run"), accelerator="cpu", logger=False, compile={"dynamic": False},
                      loader={"num_workers": 0}, frozen_dtype="bf16")
    stage = base.stage_trainer(StageSpec(name="s", max_epochs=1), tmp_path / "s", checkpoint=False)
    carried = [cb for cb in stage.callbacks if isinstance(cb, Speedups)]
    assert len(carried) == 1 and carried[0].compile == {"dynamic": False} and carried[0].loader == {"num_workers": 0}
    assert carried[0].frozen_dtype == "bf16"


def test_a_part_reports_the_weight_file_it_loaded(tmp_path):
    from lit_experiments.experiments.preflight_report import module_weights

    weights = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, weights)
    part = torch.nn.Linear(2, 2)
    part.weights = f"file:{weights}"  # what FrozenBackbone records for pretrained=PATH
    found = module_weights(torch.nn.Sequential(part))
    assert [(w["path"], w["sha256"]) for w in found] == [(str(weights.resolve()),
                                                          hashlib.sha256(weights.read_bytes()).hexdigest())]


def test_a_preflight_reads_caches_but_never_fills_them(tmp_path):
    from torchvision.transforms import v2

    from lit_experiments.backbones import build_backbone
    from lit_experiments.core import standins
    from lit_experiments.data.cache import FeatureCache
    from lit_experiments.data.shapes import ShapesWorld
    from lit_experiments.experiments.preflight_probe import caches_read_only

    torch.manual_seed(0)
    vit = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs={"depth": 2, "embed_dim": 32,
                                                                                 "num_heads": 2})
    world, resize = ShapesWorld(6, 32, seed=1), v2.Resize((28, 28), antialias=True)
    cache_dir, scratch = tmp_path / "cache", tmp_path / "scratch"
    with caches_read_only(scratch) as built:
        cache = FeatureCache(cache_dir, vit, world, transform=resize, batch_size=3, progress=False)
        standin = standins.cache_path(tmp_path / "standins", "x-standin", {"k": 1})
    assert not cache_dir.exists() or not any(cache_dir.iterdir())  # nothing written where the run keeps caches
    assert cache.path.parent == scratch / "features" and len(cache) == 6 and built[0]["cache"].startswith(str(cache_dir))
    assert standin.parent == scratch / "standins" and not (tmp_path / "standins").exists()
    real = FeatureCache(cache_dir, vit, world, transform=resize, batch_size=3, progress=False)  # a real run fills it
    assert real.built_now and standins.cache_path(tmp_path / "s", "p", {}).parent == tmp_path / "s"
    with caches_read_only(scratch) as built:
        again = FeatureCache(cache_dir, vit, world, transform=resize, batch_size=3, progress=False)
    assert again.path == real.path and not again.built_now and built == []  # on disk: read, not rebuilt


# ------------------------------------------------------------------ every demo config (issue 24: in make test)
DEMOS = ["slots", "satipatthana", "retrieval", "multilabel", "distill"]


@pytest.mark.parametrize("study", DEMOS)
def test_preflight_of_every_demo_config_runs_each_stage(study, tmp_path):
    """Each study's demo (with its tiny override, as tests/test_every_config.py runs it) passes preflight: every
    stage of the config is built, stepped and projected, with the parameters of the model it builds."""
    import importlib

    import yaml

    from lit_experiments.core.configs import load_composed

    config = ROOT / "configs" / study / "demo.yaml"
    raw = load_composed(config)
    override = importlib.import_module(f"tests.studies.{study}.tiny").tiny(config, raw, tmp_path)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(override, sort_keys=False))
    report = run_preflight([str(config), str(tiny)], steps=1, device="cpu", gpu="rtx5080", out=tmp_path / "out")
    composed = load_composed(config, tiny)
    names = [s["name"] for s in composed.get("stages") or [{"name": "fit"}]]
    assert report["ok"], report
    assert [s["stage"] for s in report["stages"]] == names
    for stage in report["stages"]:
        assert stage["trainable_params"] + stage["frozen_params"] == report["parameters"] > 0
        assert stage["ok"] and stage["step_s"] > 0 and stage["flops_per_step"] > 0 and stage["stage_s"] > 0


def test_a_stage_that_fails_unexpectedly_is_located_not_only_named(tmp_path, capsys, monkeypatch):
    """A bug in a study's step (here the toy's training_step) fails that stage; the row names the error and where it
    was raised (the innermost frames), in the table and in preflight.json, without a traceback."""
    def broken(self, batch, batch_idx):
        raise RuntimeError("zero-dimensional tensor (at position 0) cannot be concatenated")

    monkeypatch.setattr(ToyModule, "training_step", broken)
    code = main(["preflight", "-c", str(TOY), "--steps", "1", "--out", str(tmp_path / "pf")])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.out + captured.err
    row = json.loads((tmp_path / "pf" / "preflight.json").read_text())["stages"][0]
    assert row["ok"] is False and row["error"].startswith("RuntimeError: zero-dimensional")
    assert row["where"] and row["where"][-1].endswith("in broken") and __file__ in row["where"][-1]
    assert f"    at {row['where'][-1]}" in captured.out
