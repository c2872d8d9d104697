"""The seed's A/B plan as YAML deltas: each arm differs from the baseline only in its fix, and the fixed arm is
the seed config itself."""
from __future__ import annotations

from pathlib import Path

from lit_experiments.core.configs import load_composed
from lit_experiments.core.report import flatten

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
