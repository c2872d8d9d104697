"""Splits that cannot leak (LESSONS F47): validation never equals or overlaps test, held-out ids written once.

* :func:`check_disjoint` - a datamodule passes the ids (image / clip / video ids, or file paths) of its
  validation and test splits; equal or overlapping splits raise :class:`SplitOverlapError` naming both, unless
  the config opts in (``allow_val_test_overlap: true``). With the opt-in the returned record says
  ``tuned_on_test: true``; the runner writes it to ``results.json["splits"]`` and the report marks every number
  of that run as tuned on its test split.
* :func:`ensure_holdout` - a seeded part of a training pool held out as validation, its ids written once to a
  JSON file (like ``folds.json``) with a fingerprint of the pool; every later run reads the same file.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

SPLITS_SECTION = "splits"


class SplitOverlapError(ConfigError):
    """The validation split equals or overlaps the test split."""


def check_disjoint(val_ids: Iterable[Any], test_ids: Iterable[Any], *, val_name: str, test_name: str,
                   allow_overlap: bool = False, what: str = "ids") -> dict[str, Any]:
    """Refuse a validation split that shares ``what`` with the test split; return the record for results.json.

    ``val_name`` / ``test_name`` say where each split comes from (an annotation file and image folder, a split
    name of a dataset), so the message names both.
    """
    val, test = {str(v) for v in val_ids}, {str(t) for t in test_ids}
    shared = val & test
    record: dict[str, Any] = {"validation": val_name, "test": test_name, "n_validation": len(val),
                              "n_test": len(test), "overlap": len(shared), "tuned_on_test": False}
    same_source = val_name == test_name
    if not shared and not same_source:
        return record
    if not allow_overlap:
        how = "are the same split" if same_source or shared == val == test else f"share {len(shared)} {what}"
        example = ", ".join(sorted(shared)[:3])
        raise SplitOverlapError(
            f"validation ({val_name}) and test ({test_name}) {how}"
            + (f" (e.g. {example})" if example else "")
            + ": calibrations, thresholds and checkpoint selection fitted on validation would be tuned on the "
            "test images. Hold out part of the training data as validation (see the study's README section), or "
            "set allow_val_test_overlap: true to accept it; every number of the run is then marked as tuned "
            "on test")
    record["tuned_on_test"] = True
    return record


def pool_fingerprint(ids: Sequence[Any]) -> str:
    return hashlib.sha1(json.dumps([str(i) for i in ids]).encode()).hexdigest()[:16]


def ensure_holdout(path: str | Path, pool_ids: Sequence[Any], fraction: float, seed: int,
                   groups: Sequence[Any] | None = None) -> list[str]:
    """The held-out validation ids of ``pool_ids``: read from ``path``, or drawn once (seeded) and written there.

    ``groups`` (one per id, e.g. a video id) keeps every id of a group on one side. A file written for another
    pool (its fingerprint differs) is an error naming the file; delete it to draw again.
    """
    path = Path(path)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction {fraction}: expected a number between 0 and 1")
    fp = pool_fingerprint(pool_ids)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err}); delete it to draw the validation ids again") from err
        if data.get("pool_fingerprint") != fp:
            raise ConfigError(f"{path}: written for another training pool (fingerprint {data.get('pool_fingerprint')}"
                              f", this pool {fp}); delete it to draw the validation ids again")
        return [str(i) for i in data["validation_ids"]]
    keys = [str(g) for g in groups] if groups is not None else [str(i) for i in pool_ids]
    unique = sorted(set(keys))
    rng = random.Random(seed)
    rng.shuffle(unique)
    n_val = max(1, round(fraction * len(unique)))
    if n_val >= len(unique):
        raise ConfigError(f"validation fraction {fraction} of {len(unique)} groups leaves no training data")
    held = set(unique[:n_val])
    val_ids = [str(i) for i, k in zip(pool_ids, keys) if k in held]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"pool_fingerprint": fp, "seed": seed, "fraction": fraction,
                               "n_pool": len(pool_ids), "validation_ids": val_ids}, indent=1))
    os.replace(tmp, path)
    return val_ids
