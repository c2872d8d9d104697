"""The seed's A/B plan as YAML deltas: each arm differs from the baseline only in its fix, and the fixed arm is
the seed config itself."""
from __future__ import annotations

from pathlib import Path

from lit_experiments.core.configs import load_composed
from lit_experiments.experiments.report import flatten

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "distill"
CAP = {"model.init_args.distill_loss.init_args.max_matches", "model.init_args.distill_loss.init_args.min_teacher_score"}


def diff(a: str, b: str) -> set[str]:
    fa, fb = flatten(load_composed(CONFIGS / a)), flatten(load_composed(CONFIGS / b))
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def test_each_arm_of_the_ab_plan_changes_only_its_fix():
    assert diff("ab_baseline.yaml", "ab_cap.yaml") == CAP
    assert diff("ab_baseline.yaml", "ab_prompts.yaml") and all(
        k.startswith("data.init_args.prompts") for k in diff("ab_baseline.yaml", "ab_prompts.yaml"))
    assert diff("ab_prompts.yaml", "ab_prompts_cap.yaml") == CAP
    assert diff("ab_prompts_cap.yaml", "seed_sam3.yaml") == set()  # both fixes = the seed config


def test_ab_deltas_on_the_demo_say_only_what_they_change():
    """The A/B runs on the demo (`lit-exp sweep -c demo.yaml --list ab_*.yaml`): each arm keeps the demo's regime
    (two prompts per image, its model sizes) and changes only the prompt set and the matcher (F48)."""
    from lit_experiments.core.configs import composition, merge

    demo = load_composed(CONFIGS / "demo.yaml")
    for arm in ("ab_baseline", "ab_prompts", "ab_cap", "ab_prompts_cap"):
        files = composition(CONFIGS / "demo.yaml")
        files += [f for f in composition(CONFIGS / f"{arm}.yaml") if f.resolve() not in {x.resolve() for x in files}]
        composed: dict = {}
        for f in files:
            composed = merge(composed, _plain(f))
        changed = {k for k in flatten(composed).keys() | flatten(demo).keys()
                   if flatten(composed).get(k) != flatten(demo).get(k)}
        assert changed <= {*CAP, "data.init_args.prompts.ratios.category", "data.init_args.prompts.ratios.generic",
                           "data.init_args.prompts.ratios.negative", "data.init_args.prompts.generic"}, (arm, changed)
        prompts = composed["data"]["init_args"]["prompts"]
        assert prompts["per_image"] == 2
        if arm in ("ab_baseline", "ab_cap"):
            assert prompts["ratios"] == {"category": 0.0, "generic": 1.0, "negative": 0.0}


def _plain(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}
