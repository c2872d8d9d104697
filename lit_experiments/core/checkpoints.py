"""Load any checkpoint of a run into a freshly built study for ``lit-exp validate / test / predict``.

Two kinds of files exist: a stage's ``final.ckpt`` (weights only: ``{"state_dict", "study"}``, written by the
curriculum) and Lightning's ``last.ckpt`` / ``epoch=...ckpt`` (weights, optimizer state, hyper-parameters).
Both load the same way here: the study's lazy parts are built first with a dry run on the datamodule's example
batch (F09, F36), then the weights are loaded into the model, and Lightning is called with ``ckpt_path=None``.
A checkpoint of another study is refused with one line naming both studies.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .lazy import lazy_build

#: ``--ckpt_path init`` evaluates the model as the config builds it (no weights loaded), on purpose
NO_CHECKPOINT = "init"


@dataclass
class CheckpointInfo:
    """What was loaded: the file, its kind, its study (if recorded) and the run directory it belongs to."""

    path: Path
    kind: str  # "weights" (final.ckpt) | "lightning"
    study: str | None
    run_dir: Path | None
    stage: str | None  # the curriculum stage whose directory holds the file


def find_run_dir(path: Path) -> Path | None:
    """The nearest directory above ``path`` holding a ``results.json`` (the run the checkpoint belongs to)."""
    for parent in path.resolve().parents:
        if (parent / "results.json").is_file():
            return parent
    return None


def stage_of(path: Path, run_dir: Path | None) -> str | None:
    """``encoder`` for ``<run_dir>/stages/00_encoder/...``; ``None`` outside a stage directory."""
    if run_dir is None:
        return None
    try:
        parts = path.resolve().relative_to(run_dir).parts
    except ValueError:
        return None
    if len(parts) >= 2 and parts[0] == "stages" and "_" in parts[1]:
        return parts[1].split("_", 1)[1]
    return None


def read_checkpoint(path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
    """``torch.load`` with messages that name the file; ``weights_only=False`` only when asked for."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"--ckpt_path {p}: no such file (a run's checkpoints are "
                              "<run_dir>/stages/NN_<stage>/final.ckpt, .../checkpoints/last.ckpt, "
                              "or <run_dir>/checkpoints/last.ckpt for `fit`)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=weights_only is not False)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"--ckpt_path {p}: not a readable checkpoint of this workbench: corrupt, truncated or "
                              f"another kind of file ({type(err).__name__}); use the run's own final.ckpt / last.ckpt, "
                              "or retrain") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"--ckpt_path {p}: not a readable torch checkpoint: corrupt or truncated "
                              f"({_first_line(err)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"--ckpt_path {p}: no 'state_dict' in it; expected a stage's final.ckpt or a "
                              "Lightning checkpoint (last.ckpt)")
    return ckpt


def _first_line(err: BaseException, limit: int = 120) -> str:
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def checkpoint_study(ckpt: dict[str, Any], run_dir: Path | None) -> str | None:
    """The study class that wrote ``ckpt``: its ``study`` key, its hyper-parameters' class path, or results.json."""
    if ckpt.get("study"):
        return str(ckpt["study"]).rsplit(".", 1)[-1]
    class_path = (ckpt.get("hyper_parameters") or {}).get("_class_path")
    if class_path:
        return str(class_path).rsplit(".", 1)[-1]
    if run_dir is not None:
        try:
            study = json.loads((run_dir / "results.json").read_text()).get("study")
        except (OSError, json.JSONDecodeError):
            study = None
        if study:
            return str(study).rsplit(".", 1)[-1]
    return None


def _prefixes(keys: Any) -> set[str]:
    return {k.split(".", 1)[0] for k in keys}


def check_study(path: Path, model: torch.nn.Module, study: str | None, state: dict[str, Any]) -> None:
    """One-line refusal when the checkpoint belongs to another study than the config's model."""
    ours = type(model).__qualname__
    if study is not None and study != ours:
        raise CheckpointError(f"--ckpt_path {path} is a checkpoint of study {study}, but the config builds "
                              f"{ours}: pass that run's config (its config.yaml) or a checkpoint of {ours}")
    theirs, mine = _prefixes(state), _prefixes(model.state_dict())
    if study is None and theirs and not theirs & mine:
        raise CheckpointError(f"--ckpt_path {path} is a checkpoint of another model (parts {sorted(theirs)[:5]}), "
                              f"but the config builds {ours} (parts {sorted(mine)[:5]})")


def load_weights_for_eval(model: torch.nn.Module, datamodule: Any, path: str | Path,
                          weights_only: bool | None = None,
                          prepare: Callable[[str | None], None] | None = None) -> CheckpointInfo:
    """Build the lazy parts of ``model``, then load the weights of ``path`` (final.ckpt or a Lightning ckpt).

    ``prepare(stage)`` runs after the study check and before the lazy build, with the curriculum stage whose
    directory holds the file (``None`` outside a stage directory): the CLI puts the model in that stage.
    """
    p = Path(path)
    ckpt = read_checkpoint(p, weights_only)
    run_dir = find_run_dir(p)
    study = checkpoint_study(ckpt, run_dir)
    state = ckpt["state_dict"]
    check_study(p, model, study, state)
    stage = stage_of(p, run_dir)
    if prepare is not None:
        prepare(stage)
    if datamodule is not None and hasattr(datamodule, "example_batch"):
        lazy_build(model, datamodule.example_batch())  # lazily built parts must exist before loading (F09)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = [line.strip() for line in str(err).splitlines() if "size mismatch" in line][:3]
        raise CheckpointError(f"--ckpt_path {p}: the weights do not fit {type(model).__qualname__} as this config "
                              f"builds it: {'; '.join(detail) or err}; pass the config the checkpoint was trained "
                              "with (its run's config.yaml)") from err
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"--ckpt_path {p}: the weights do not fit {type(model).__qualname__} as this config builds it: "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}); "
            "pass the config the checkpoint was trained with (its run's config.yaml)")
    kind = "lightning" if "pytorch-lightning_version" in ckpt else "weights"
    return CheckpointInfo(path=p, kind=kind, study=study, run_dir=run_dir, stage=stage)
