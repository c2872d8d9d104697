"""Every YAML under configs/ is parsed, built and run: one training step (per stage) plus `test`.

* A study config ``configs/<study>/*.yaml`` (composed with the bases of its ``# base:`` line) runs with the
  study's tiny override, ``tests/studies/<study>/tiny.py: tiny(config, raw, tmp) -> dict``.
* A fragment (a file that composes to no ``model:``, e.g. ``configs/trainer/gpu.yaml``) runs after
  ``configs/toy/curriculum.yaml``, with the toy study's tiny override.
* With ``stages:`` -> ``lit-exp curriculum`` (each stage 1 step, then test); without -> ``lit-exp fit``
  (1 step), then ``lit-exp test --ckpt_path`` on that fit's checkpoint.
* A study config's run records its validation / test split check (results.json ``splits``): disjoint ids (F47).
* A config that needs CUDA (``trainer.accelerator: gpu | cuda``) is skipped where there is none.

A YAML dropped into configs/ is covered without editing this file.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lit_experiments.cli import main
from lit_experiments.core.configs import composition, composition_of, load_composed, merge

ROOT = Path(__file__).resolve().parents[1]
CONFIG_ROOT = ROOT / "configs"
CONFIGS = sorted(CONFIG_ROOT.rglob("*.yaml"))
HOST = CONFIG_ROOT / "toy" / "curriculum.yaml"  # what a trainer / logger fragment is composed with
CUDA_ACCELERATORS = ("gpu", "cuda")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def study_of(config: Path) -> str:
    parts = config.relative_to(CONFIG_ROOT).parts
    assert len(parts) > 1, f"{rel(config)}: a config belongs in configs/<study>/ (or is a fragment in a folder)"
    return parts[0]


def tiny_for(study: str) -> Callable[[Path, dict, Path], dict]:
    path = ROOT / "tests" / "studies" / study / "tiny.py"
    if not path.is_file():
        pytest.fail(f"configs/{study}/ has no tiny override: add {rel(path)} with "
                    "`def tiny(config: Path, raw: dict, tmp: Path) -> dict` (small data / model sizes)")
    return importlib.import_module(f"tests.studies.{study}.tiny").tiny


def plan(config: Path) -> tuple[list[Path], dict[str, Any], Callable]:
    """The files to pass with ``-c`` (bases first), their merged content and the tiny override that applies."""
    files = composition(config)
    raw = load_composed(config)
    if "model" not in raw:  # a fragment: composed after the toy curriculum
        files = composition_of([HOST, config])
        raw = load_composed(HOST, config)  # the CLI's composition of the same files (one rule, F48)
        return files, raw, tiny_for("toy")
    return files, raw, tiny_for(study_of(config))


def one_step_overlay(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What this test adds after the tiny override: one step per stage, one eval batch, its own run dir."""
    trainer: dict[str, Any] = {"run_dir": str(run_dir), "limit_val_batches": 1, "limit_test_batches": 1,
                               "num_sanity_val_steps": 0, "enable_progress_bar": False}
    if torch.cuda.device_count() > 1:  # devices: -1 would start more processes, each re-running pytest
        trainer["devices"] = 1
    overlay: dict[str, Any] = {"trainer": trainer}
    if "stages" in raw:
        overlay["stages"] = [{**stage, "max_steps": 1} for stage in raw["stages"]]
        overlay["test_after"] = True
    else:
        trainer["max_steps"] = 1
    return overlay


def run_cli(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as exc:  # LightningCLI exits on configuration errors
        if exc.code not in (0, None):
            pytest.fail(f"lit-exp {' '.join(args)} exited with {exc.code}")


def not_finite_numbers(section: dict[str, Any]) -> dict[str, Any]:
    """Entries that are not finite numbers (NaN, inf, null, strings, lists): a test section holds metrics only."""
    return {k: v for k, v in section.items()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}


def read_section(run_dir: Path, name: str) -> dict[str, Any]:
    """Section ``name`` of the run's results.json (or of a results.json the test command wrote below it): the
    ``test`` metrics, or the ``splits`` record of core.splits.check_disjoint (F47)."""
    for path in [run_dir / "results.json", *sorted(run_dir.rglob("results.json"))]:
        if path.is_file():
            section = json.loads(path.read_text()).get(name)
            if section:
                return section
    return {}


@pytest.mark.parametrize("config", CONFIGS, ids=[rel(c) for c in CONFIGS])
def test_config_runs_one_step_and_test(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, raw, tiny = plan(config)
    override = tiny(config, raw, tmp_path)
    merged = merge(raw, override)
    accelerator = str(merged.get("trainer", {}).get("accelerator", "auto")).lower()
    if accelerator in CUDA_ACCELERATORS and not torch.cuda.is_available():
        pytest.skip(f"needs CUDA: {rel(config)}")
    if merged.get("trainer", {}).get("wandb") is not None:  # really logged, offline, into this test's dir
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    last = tmp_path / "tiny.yaml"
    last.write_text(yaml.safe_dump(merge(override, one_step_overlay(merged, run_dir))))
    config_args = [a for f in [*files, last] for a in ("-c", str(f))]

    curriculum = "stages" in merged
    run_cli(["curriculum" if curriculum else "fit", *config_args])
    results = json.loads((run_dir / "results.json").read_text())
    expected = [s["name"] for s in merged["stages"]] if curriculum else ["fit"]
    assert list(results["stages"]) == expected
    for name, stage in results["stages"].items():
        assert stage["status"] == "done", f"{rel(config)}: stage {name!r} is {stage['status']!r}"
        assert stage["steps"] >= 1, f"{rel(config)}: stage {name!r} ran no training step"
    if not curriculum:
        checkpoints = sorted(run_dir.rglob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
        assert checkpoints, f"{rel(config)}: fit wrote no checkpoint under {run_dir}"
        run_cli(["test", *config_args, f"--ckpt_path={checkpoints[0]}"])
    section = read_section(run_dir, "test")
    assert section, f"{rel(config)}: results.json has no test metrics"
    bad = not_finite_numbers(section)
    assert not bad, f"{rel(config)}: test entries that are not finite numbers: {bad}"
    if "model" in load_composed(config) and study_of(config) != "toy":  # every study checks its val / test ids disjoint (F47)
        splits = read_section(run_dir, "splits")
        assert splits, f"{rel(config)}: results.json has no `splits` record (core.splits.check_disjoint)"
        assert splits["n_validation"] > 0 and splits["n_test"] > 0, f"{rel(config)}: {splits}"
        assert splits["overlap"] == 0 and not splits["tuned_on_test"], f"{rel(config)}: {splits}"
    if merged.get("trainer", {}).get("wandb") is not None:
        assert list(tmp_path.rglob("offline-run-*")), f"{rel(config)}: wandb wrote no offline run"


def test_the_glob_finds_the_configs_and_the_fragment_host():
    assert HOST.is_file(), f"{rel(HOST)} (the study that trainer / logger fragments run with) is missing"
    found = {c.relative_to(CONFIG_ROOT).parts[0] for c in CONFIGS}
    assert {"toy", "trainer", "logger"} <= found, f"configs/ globbed to {sorted(found)}"
