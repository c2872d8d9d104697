"""MultilabelModule through the CLI: thresholds from validation only (F41), excluded classes counted (F30), kNN
inference against brute force, frozen towers, checkpoints tied to their towers (the learning check: test_learning.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import f1_score, roc_auc_score

from lit_experiments.cli import main
from lit_experiments.core.configs import load_composed
from lit_experiments.metrics.multilabel import multilabel_metrics, tune_thresholds
from lit_experiments.studies.multilabel.datamodule import MultilabelDataModule
from lit_experiments.studies.multilabel.module import MultilabelModule
from lit_experiments.studies.multilabel.sources import ShapesCaptionSource
from lit_experiments.studies.multilabel.towers import SiglipTowers

from .helpers import CONFIGS, fit, module_and_data, write_config
from .helpers import run_test as test_results
from .tiny import tiny


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


def test_f41_test_f1_at_the_tuned_thresholds_is_scored_at_the_validation_thresholds(tmp_path):
    """The test's ``test/tuned/*`` numbers are the test outputs scored at the thresholds tuned on validation
    (sklearn on the module's own test outputs); a test step that tuned on the test labels scores higher."""
    args = write_config(tmp_path)
    ckpt = fit(args, tmp_path)
    res = test_results(tmp_path, args, ckpt)["test"]
    module, dm = module_and_data(ckpt, args)
    val, test = outputs(module, dm.split("val")), outputs(module, dm.split("test"))
    th = tune_thresholds(val["probs"], val["targets"]).numpy()
    y, p = test["targets"].numpy().astype(int), test["probs"].numpy()
    want = f1_score(y, (p >= th).astype(int), average="macro", zero_division=0)
    assert res["test/tuned/f1_macro"] == pytest.approx(want, abs=1e-6)
    on_test = tune_thresholds(test["probs"], test["targets"]).numpy()  # the bug's thresholds give another number
    assert f1_score(y, (p >= on_test).astype(int), average="macro", zero_division=0) > want + 1e-3


def test_f30_classes_without_positives_are_excluded_and_counted_in_the_test(tmp_path):
    args = write_config(tmp_path, source={"label_space": "color_x_category"})
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
        tiny(CONFIGS / "demo.yaml", load_composed(CONFIGS / "demo.yaml"), tmp_path)["data"]["init_args"]["frozen"][
            "init_args"]["config"])))
    digest = towers.weights_digest()
    dm = MultilabelDataModule(frozen=towers, source=ShapesCaptionSource(n_pool=48, n_test=16, world={"image_size": 16}),
                              batch_size=16, cache_dir=str(tmp_path / "c"))
    module = MultilabelModule()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path))
    from lit_experiments.core.lazy import LazyBuild

    trainer.callbacks.append(LazyBuild())
    trainer.fit(module, datamodule=dm)
    assert all(not p.requires_grad and p.grad is None for p in towers.parameters())
    assert not ({id(p) for p in module.parameters()} & {id(p) for p in towers.parameters()})
    assert towers.weights_digest() == digest and not towers.training


def test_f01_towers_left_trainable_are_caught_by_health_guard(tmp_path, monkeypatch, capsys, caplog):
    """The study declares the frozen towers as the source of the embeddings its head learns from; the bug put into
    the product's towers (``freeze`` leaves the weights trainable) stops the fit at its first steps (F01)."""
    from lit_experiments.core.health import TrainingHealthError

    def no_freeze(self):  # the towers' freeze lost: the weights keep requires_grad
        self.model.requires_grad_(True)
        return self

    args = write_config(tmp_path)
    monkeypatch.setattr(SiglipTowers, "freeze", no_freeze)
    with pytest.raises((TrainingHealthError, SystemExit)) as err:
        main(["fit", *args])
    seen = capsys.readouterr()
    said = str(err.value) + seen.out + seen.err + caplog.text
    assert "target_grad" in said and "image_emb" in said and "F01" in said


def test_a_checkpoint_of_other_towers_is_refused(tmp_path, capsys):
    args = write_config(tmp_path)
    ckpt = fit(args, tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text("data: {init_args: {frozen: {init_args: {init_seed: 7}}}}\n")
    with pytest.raises(SystemExit) as err:
        main(["test", *args, "-c", str(other), f"--ckpt_path={ckpt}"])
    assert err.value.code == 2
    assert "other towers" in capsys.readouterr().err


def test_product_quantiser_knn_without_faiss_is_a_clear_config_error(monkeypatch):
    import builtins

    from lit_experiments.core.errors import ConfigError
    from lit_experiments.studies.multilabel.module import MultilabelKnn

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match="knn.index: pq: .*faiss"):
        MultilabelModule(knn=MultilabelKnn(index="pq"))
    with pytest.raises(ConfigError, match="knn.index='ivf'"):
        MultilabelModule(knn=MultilabelKnn(index="ivf"))
