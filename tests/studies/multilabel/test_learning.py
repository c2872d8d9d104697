"""The multilabel study's one reduced learning check: a head on tiny tower embeddings beats the prevalence ranking."""
from __future__ import annotations

from lit_experiments.studies.multilabel.sources import ShapesCaptioned, default_world

from .helpers import fit, write_config
from .helpers import run_test as test_results


def test_learning_check_the_heads_learn_from_tower_embeddings(tmp_path):
    """Reduced learning check: random tiny towers still pass caption words through; the baseline head fitted on
    128 pool images beats the prevalence ranking (mAP = mean positive rate) on held-out images by a margin."""
    args = write_config(tmp_path, source={"n_pool": 160, "n_test": 64})
    (tmp_path / "longer.yaml").write_text("trainer: {max_epochs: 12}\n")
    args += ["-c", str(tmp_path / "longer.yaml")]
    ckpt = fit(args, tmp_path)
    res = test_results(tmp_path, args, ckpt)["test"]
    targets = ShapesCaptioned(64, 3, {**default_world(), "image_size": 16}).targets
    chance = float(targets.mean(0)[targets.sum(0) > 0].mean())
    assert res["test/map"] > chance + 0.2, (res["test/map"], chance)
