"""The seed's table as YAML deltas (F28) with equal epochs, data and folds (F29): each ablation differs from the
full head only in its switch, and the switch reaches the built parts."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_experiments.core.configs import load_composed
from lit_experiments.experiments.report import flatten
from lit_experiments.experiments.sweep import plan_from_args
from lit_experiments.studies.multilabel.heads import AGCHHead
from lit_experiments.studies.multilabel.losses import CombinedLoss

from .helpers import model_parts

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "multilabel"
HEAD, LOSS = "model.init_args.head.init_args.", "model.init_args.loss.init_args."


def diff(a: str, b: str) -> set[str]:
    fa, fb = flatten(load_composed(CONFIGS / a)), flatten(load_composed(CONFIGS / b))
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def parts(*files: str) -> dict:
    from lit_experiments.core.configs import composition

    paths = list(dict.fromkeys(str(p) for f in files for p in composition(CONFIGS / f)))
    return model_parts(paths)


def test_f28_no_hash_and_bce_only_are_deltas_of_the_full_head_and_reach_the_parts():
    assert diff("agch.yaml", "agch_no_hash.yaml") == {HEAD + "hash_bits", LOSS + "hash_weight"}
    assert diff("agch.yaml", "agch_bce_only.yaml") == {LOSS + "cosine_weight", LOSS + "hash_weight"}
    assert diff("agch.yaml", "agch_concat.yaml") == {HEAD + "fusion"}
    full, no_hash, bce = parts("agch.yaml"), parts("agch_no_hash.yaml"), parts("agch_bce_only.yaml")
    outs = {}
    for name, p in (("full", full), ("no_hash", no_hash), ("bce", bce)):
        assert isinstance(p["head"], AGCHHead) and isinstance(p["loss"], CombinedLoss)
        p["head"].build(8, 8, 3)
        p["head"].train()
        outs[name] = p["loss"](p["head"](torch.randn(4, 8), torch.randn(4, 8)), torch.ones(4, 3))
    assert "hash" in outs["full"] and "hash" not in outs["no_hash"]  # the switch removes the layer and the term
    assert no_hash["head"].hash_layer is None and full["head"].hash_layer is not None
    for name in ("full", "bce"):
        weighted = outs[name]["cls"] + parts_weight(name, full, bce, outs[name])
        assert outs[name]["loss"].item() == pytest.approx(weighted.item(), rel=1e-6)


def parts_weight(name: str, full: dict, bce: dict, out: dict) -> torch.Tensor:
    loss = (full if name == "full" else bce)["loss"]
    return loss.cosine_weight * out["cosine"] + loss.hash_weight * out["hash"]


@pytest.mark.parametrize("variant", ["mlp.yaml", "agch.yaml", "agch_no_hash.yaml", "agch_bce_only.yaml",
                                     "agch_concat.yaml", "probe.yaml"])
def test_f29_variants_keep_the_base_epochs_data_and_optimizer(variant):
    changed = diff("seed_siglip2.yaml", variant)
    assert all(k.startswith(("model.init_args.head", "model.init_args.loss")) for k in changed), changed


def test_demo_variants_compose_over_the_demo_config(tmp_path):
    import argparse

    args = argparse.Namespace(config=[str(CONFIGS / "demo.yaml")], grid=[], seeds="0", with_base=False,
                              list=[str(CONFIGS / "mlp.yaml"), str(CONFIGS / "agch.yaml")])
    plan = plan_from_args(args, kind="cv")
    assert [v[0] for v in plan.variants] == ["mlp", "agch"]
    assert plan.composed["trainer"]["max_epochs"] == load_composed(CONFIGS / "demo.yaml")["trainer"]["max_epochs"]
