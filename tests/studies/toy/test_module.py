"""The toy study's own contract: its exportable parts chain into the model, its test metrics."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_experiments.deploy.export import ExportPart
from lit_experiments.studies.toy.datamodule import ToyDataModule
from lit_experiments.studies.toy.module import ToyModule, predict_class


def test_export_parts_chain_into_the_model_and_keep_the_decision_outside():
    torch.manual_seed(0)
    model = ToyModule(hidden=16)
    batch = {"x": torch.randn(5, 8), "y": torch.zeros(5, dtype=torch.long)}
    model.train()(batch)  # builds the lazy head, moves BatchNorm's running statistics
    model.eval()
    parts = model.export_parts(batch)
    assert list(parts) == ["encoder", "head"] and all(isinstance(p, ExportPart) for p in parts.values())
    assert not model.training and not any(m.training for p in parts.values() for m in p.module.modules())
    encoder, head = parts["encoder"], parts["head"]
    assert (list(encoder.input_names), list(encoder.output_names)) == (["x"], ["features"])
    assert (list(head.input_names), list(head.output_names)) == (["features"], ["logits"])
    assert list(encoder.dynamic_batch) == ["x"] and list(head.dynamic_batch) == ["features"]
    with torch.no_grad():
        logits = model(batch)
        torch.testing.assert_close(head.args[0], encoder.module(*encoder.args), rtol=0, atol=0)
        torch.testing.assert_close(head.module(*head.args), logits, rtol=0, atol=0)
    assert encoder.postprocess is None and head.postprocess is predict_class
    assert torch.equal(head.postprocess(logits), logits.argmax(-1))
    assert head.postprocess_name() == "lit_experiments.studies.toy.module.predict_class"


def test_test_metrics_are_the_accuracy_and_the_mean_cross_entropy(tmp_path):
    L.seed_everything(0, verbose=False)
    model, dm = ToyModule(hidden=16), ToyDataModule(n_train=32, n_val=8, n_test=16, batch_size=8)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    dm.setup("test")
    model.eval()
    with torch.no_grad():
        model.dry_run(next(iter(dm.test_dataloader())))
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert set(result) == {"test/acc", "test/loss"}
    x, y = dm.test_set.x, dm.test_set.y
    with torch.no_grad():
        logits = model({"x": x})
    assert result["test/loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), abs=1e-6)
    assert result["test/acc"] == pytest.approx(float((logits.argmax(-1) == y).float().mean()), abs=1e-6)
