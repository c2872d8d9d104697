"""results.json: the final metrics of a run, stage by stage, written atomically by rank zero."""

from __future__ import annotations

import json
import os
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "transformers", "timm", "open_clip_torch",
            "jsonargparse", "wandb", "scikit-learn", "lit_experiments")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_sha(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def to_float_dict(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            continue
    return out


class RunResults:
    """Reads, updates and atomically rewrites ``<run_dir>/results.json``; only rank zero writes."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}: not valid JSON ({err}); move it away to start a new run") from err

    def init_run(self, run_name: str, study: str, config_files: list[str] | None = None,
                 plan: list[str] | None = None) -> None:
        self.data.setdefault("run_name", run_name)
        self.data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.data["study"] = study
        self.data["config_files"] = [str(c) for c in (config_files or self.data.get("config_files", []))]
        self.data["git_sha"] = git_sha()
        self.data["versions"] = library_versions()
        if plan is not None:
            self.data["plan"] = plan
        self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict[str, Any]:
        return self.data.setdefault("stages", {}).get(name, {})

    def set_stage(self, name: str, record: dict[str, Any]) -> None:
        self.data.setdefault("stages", {})[name] = record

    def merge(self, section: str, values: dict[str, Any]) -> None:
        self.data.setdefault(section, {}).update(values)

    def set_headline(self, names: list[str]) -> None:
        """Copy the study's headline metrics (looked up in test, final, then stage metrics) to ``headline``."""
        found = {}
        sources = [self.data.get("test", {}), self.data.get("final", {})]
        sources += [s.get("metrics", {}) for s in self.data.get("stages", {}).values()]
        for name in names:
            for source in sources:
                if name in source:
                    found[name] = source[name]
                    break
        self.data["headline"] = found

    def save(self) -> Path:
        if rank_zero_only.rank != 0:
            return self.path
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=str))
        os.replace(tmp, self.path)
        return self.path
