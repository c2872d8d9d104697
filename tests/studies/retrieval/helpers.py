"""Builders shared by the retrieval tests: tiny curriculum runs through the product's CLI."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lit_experiments.cli import main
from lit_experiments.core.configs import composition, load_composed, merge

from .tiny import tiny

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "configs" / "retrieval" / "demo.yaml"


def tiny_overlay(tmp: Path, stages: list[dict[str, Any]] | None = None, steps: int = 1,
                 **trainer: Any) -> dict[str, Any]:
    """The tiny override of ``demo.yaml`` (tests/studies/retrieval/tiny.py), ``steps`` per stage, run in ``tmp``.

    ``stages``: replaces the stage list (each entry merged over the demo's stage of the same name)."""
    tmp.mkdir(parents=True, exist_ok=True)
    raw = load_composed(DEMO)
    override = tiny(DEMO, raw, tmp)
    by_name = {s["name"]: s for s in override["stages"]}
    chosen = stages if stages is not None else [{"name": s["name"]} for s in override["stages"]]
    override["stages"] = [merge({**by_name[s["name"]], "max_steps": steps}, s) for s in chosen]
    override["trainer"].update({"run_dir": str(tmp / "run"), "limit_test_batches": 1, "num_sanity_val_steps": 0,
                                **trainer})
    override["test_after"] = False
    return override


def run_curriculum(tmp: Path, overlay: dict[str, Any]) -> Path:
    """``lit-exp curriculum -c demo.yaml (bases first) -c <overlay>``; returns the run directory."""
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(overlay))
    args = [a for f in [*composition(DEMO), path] for a in ("-c", str(f))]
    main(["curriculum", *args])
    return Path(overlay["trainer"]["run_dir"])


def results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())
