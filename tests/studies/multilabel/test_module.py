"""MultilabelModule through the CLI: thresholds from validation only (F41), excluded classes counted (F30), kNN
inference against brute force, frozen towers, checkpoints tied to their towers, a reduced learning check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from lit_experiments.cli import main
from lit_experiments.core.configs import load_composed, merge
from lit_experiments.metrics.multilabel import multilabel_metrics, tune_thresholds
from lit_experiments.studies.multilabel import datamodule as dm_mod
from lit_experiments.studies.multilabel.datamodule import MultilabelDataModule
from lit_experiments.studies.multilabel.module import MultilabelModule
from lit_experiments.studies.multilabel.towers import SiglipTowers

from .tiny import tiny

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs" / "multilabel"


def write_config(tmp: Path, variant: str = "mlp.yaml", name: str = "run", **data) -> list[str]:
    """``-c`` args: the demo (over the seed config), a variant and a tiny override with ``data`` on top."""
    raw = load_composed(CONFIGS / "demo.yaml")
    over = merge(tiny(CONFIGS / "demo.yaml", raw, tmp), {
        "data": {"init_args": {"n_pool": 64, "n_test": 32, "batch_size": 16, **data}},
        "trainer": {"max_epochs": 3, "num_sanity_val_steps": 0, "run_dir": str(tmp / name)}})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(over))
    return ["-c", str(CONFIGS / "seed_siglip2.yaml"), "-c", str(CONFIGS / "demo.yaml"), "-c", str(CONFIGS / variant),
            "-c", str(path)]


def fit(args: list[str], tmp: Path, name: str = "run") -> Path:
    assert main(["fit", *args]) in (0, None)
    ckpts = sorted((tmp / name).rglob("*.ckpt"))
    assert ckpts
    return ckpts[-1]


def test_results(tmp: Path, args: list[str], ckpt: Path, name: str = "run") -> dict:
    before = set((tmp / name).rglob("results.json"))
    assert main(["test", *args, f"--ckpt_path={ckpt}"]) in (0, None)
    new = sorted(set((tmp / name).rglob("results.json")) - before)
    return json.loads(new[-1].read_text())


test_results.__test__ = False  # a helper, not a test


def module_and_data(ckpt: Path, args: list[str]) -> tuple[MultilabelModule, MultilabelDataModule]:
    """The fitted module (weights of ``ckpt``) and its datamodule, built as the CLI builds them."""
    from lit_experiments.experiments.cv import pool_of

    files = [a for a in args if a != "-c"]
    dm = pool_of(files)[0]
    module = MultilabelModule(**_model_parts(files))
    dm.setup("fit")
    module.dry_run(next(iter(dm.train_dataloader())))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    return module.eval(), dm


def _model_parts(files: list[str]) -> dict:
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    cfg = None
    for f in files:
        section = (yaml.safe_load(Path(f).read_text()) or {}).get("model")
        if section is not None:
            cfg = parser.parse_object({"model": section}, cfg_base=cfg, defaults=cfg is None)
    model = parser.instantiate_classes(cfg).model
    return {"head": model.head, "loss": model.loss, "knn": model.knn_args}


@torch.no_grad()
def outputs(module: MultilabelModule, dataset) -> dict[str, torch.Tensor]:
    batch = {k: torch.stack([dataset[i][k] for i in range(len(dataset))]) for k in dataset[0]}
    out = module(batch)
    return {"probs": torch.sigmoid(out["logits"]).double(), "targets": batch["targets"], **out}


def test_f41_stored_thresholds_come_from_validation_and_test_labels_do_not_move_them(tmp_path, monkeypatch):
    args = write_config(tmp_path)
    ckpt = fit(args, tmp_path)
    module, dm = module_and_data(ckpt, args)
    val = outputs(module, dm.split("val"))
    want = tune_thresholds(val["probs"], val["targets"])
    torch.testing.assert_close(module.thresholds, want.double())  # tuned on the validation split, stored

    plain = test_results(tmp_path, args, ckpt)
    real_split = MultilabelDataModule.split

    def flipped(self, name):
        ds = real_split(self, name)
        if name == "test":
            ds.targets = 1.0 - ds.targets  # the test labels flipped: a tuner that saw them would move
        return ds

    monkeypatch.setattr(MultilabelDataModule, "split", flipped)
    flip = test_results(tmp_path, args, ckpt)
    assert flip["thresholds"]["tuned"] == plain["thresholds"]["tuned"] == pytest.approx(want.tolist())
    assert flip["test"]["test/map"] != pytest.approx(plain["test"]["test/map"])  # the flip reached the metrics


def test_f30_classes_without_positives_are_excluded_and_counted_in_the_test(tmp_path):
    args = write_config(tmp_path, label_space="color_x_category")
    ckpt = fit(args, tmp_path)
    res = test_results(tmp_path, args, ckpt)["test"]
    module, dm = module_and_data(ckpt, args)
    test = outputs(module, dm.split("test"))
    y, p = test["targets"].numpy(), test["probs"].numpy()
    ok = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    assert res["test/auc_excluded_classes"] == y.shape[1] - len(ok) > 0
    want = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in ok])
    assert res["test/auc_macro"] == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("variant, metric", [("agch.yaml", "hamming"), ("mlp.yaml", "cosine")])
def test_knn_inference_matches_brute_force(tmp_path, variant, metric):
    args = write_config(tmp_path, variant)
    ckpt = fit(args, tmp_path)
    res = test_results(tmp_path, args, ckpt)
    assert res["knn"]["metric"] == metric
    module, dm = module_and_data(ckpt, args)
    test, bank = outputs(module, dm.split("test")), outputs(module, dm.split("train"))
    key = "hash" if metric == "hamming" else "fused"
    q, b = test[key].double().numpy(), bank[key].double().numpy()
    if metric == "hamming":
        q, b = np.where(q >= 0, 1.0, -1.0), np.where(b >= 0, 1.0, -1.0)
        sim = -(q[:, None, :] != b[None, :, :]).sum(-1)  # minus the Hamming distance
    else:
        q, b = q / np.linalg.norm(q, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
        sim = q @ b.T
    k = module.knn_args.k
    order = np.lexsort((np.tile(np.arange(len(b)), (len(q), 1)), -sim))[:, :k]  # ties: lower bank index first
    scores = bank["targets"].numpy()[order].mean(1)
    want = multilabel_metrics(torch.from_numpy(scores), test["targets"])["map"]
    assert res["test"]["test/knn_map"] == pytest.approx(float(want), abs=1e-6)


def test_towers_get_no_gradient_and_do_not_change(tmp_path):
    import lightning as L

    towers = SiglipTowers(config=yaml.safe_load(yaml.safe_dump(
        tiny(CONFIGS / "demo.yaml", load_composed(CONFIGS / "demo.yaml"), tmp_path)["data"]["init_args"]["towers"][
            "init_args"]["config"])))
    digest = towers.weights_digest()
    dm = MultilabelDataModule(towers=towers, n_pool=48, n_test=16, batch_size=16, cache_dir=str(tmp_path / "c"),
                              shapes={"image_size": 16})
    module = MultilabelModule()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path))
    from lit_experiments.core.lazy import LazyBuild

    trainer.callbacks.append(LazyBuild())
    trainer.fit(module, datamodule=dm)
    assert all(not p.requires_grad and p.grad is None for p in towers.parameters())
    assert not ({id(p) for p in module.parameters()} & {id(p) for p in towers.parameters()})
    assert towers.weights_digest() == digest and not towers.training


def test_a_checkpoint_of_other_towers_is_refused(tmp_path, capsys):
    args = write_config(tmp_path)
    ckpt = fit(args, tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text("data: {init_args: {towers: {init_args: {init_seed: 7}}}}\n")
    with pytest.raises(SystemExit) as err:
        main(["test", *args, "-c", str(other), f"--ckpt_path={ckpt}"])
    assert err.value.code == 2
    assert "other towers" in capsys.readouterr().err


def test_learning_check_the_heads_learn_from_tower_embeddings(tmp_path):
    """Reduced learning check: random tiny towers still pass caption words through; the baseline head fitted on
    128 pool images beats the prevalence ranking (mAP = mean positive rate) on held-out images by a margin."""
    args = write_config(tmp_path, n_pool=160, n_test=64)
    (tmp_path / "longer.yaml").write_text("trainer: {max_epochs: 12}\n")
    args += ["-c", str(tmp_path / "longer.yaml")]
    ckpt = fit(args, tmp_path)
    res = test_results(tmp_path, args, ckpt)["test"]
    targets = dm_mod.ShapesCaptioned(64, 3, {**dm_mod.default_world(), "image_size": 16}).targets
    chance = float(targets.mean(0)[targets.sum(0) > 0].mean())
    assert res["test/map"] > chance + 0.2, (res["test/map"], chance)


def test_product_quantiser_knn_without_faiss_is_a_clear_config_error(monkeypatch):
    import builtins

    from lit_experiments.core.errors import ConfigError
    from lit_experiments.studies.multilabel.module import KnnArgs

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match="knn.index: pq: .*faiss"):
        MultilabelModule(knn=KnnArgs(index="pq"))
    with pytest.raises(ConfigError, match="knn.index='ivf'"):
        MultilabelModule(knn=KnnArgs(index="ivf"))
