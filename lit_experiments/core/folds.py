"""Fold files: k folds written once to ``<sweep>/folds.json`` and read by every run of a cross-validation (F31, F45).

The folds are drawn once from a datamodule's pool (``StudyDataModule.fold_pool()``: the sample count and the
labels): 2-D 0/1 labels -> iterstrat ``MultilabelStratifiedKFold``, 1-D labels -> sklearn ``StratifiedKFold``,
no labels -> ``KFold``. ``folds.json`` holds the index lists and a fingerprint (sha256 of the index lists and
of the pool's data fingerprint); a run's datamodule checks the data fingerprint before it splits its pool.
The ``lit-exp cv`` command that writes them is :mod:`lit_experiments.experiments.cv`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .jsonfile import write_json

FOLDS_FILE = "folds.json"


# ------------------------------------------------------------------------------------------------ folds
def label_kind(labels: Any) -> str:
    """``multilabel-stratified`` (2-D), ``stratified`` (1-D) or ``kfold`` (no labels)."""
    import numpy as np

    if labels is None:
        return "kfold"
    arr = np.asarray(labels)
    if arr.ndim == 2:
        return "multilabel-stratified"
    if arr.ndim == 1:
        return "stratified"
    raise ConfigError(f"fold_pool() labels have shape {arr.shape}; expected (N,) class ids, (N, C) 0/1 or None")


def data_fingerprint(n_samples: int, labels: Any) -> str:
    """sha256 of the pool's sample count and labels (what the folds were drawn from)."""
    import numpy as np

    h = hashlib.sha256(f"n={int(n_samples)};".encode())
    if labels is not None:
        arr = np.ascontiguousarray(np.asarray(labels).astype(np.int64))
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def folds_fingerprint(folds: list[dict[str, list[int]]], data_fp: str) -> str:
    """sha256 of the sorted index lists of every fold and of the data fingerprint."""
    canon = [{"train": sorted(int(i) for i in f["train"]), "val": sorted(int(i) for i in f["val"])} for f in folds]
    return hashlib.sha256((json.dumps(canon, separators=(",", ":")) + data_fp).encode()).hexdigest()


def make_folds(n_samples: int, labels: Any, n_folds: int, seed: int) -> list[dict[str, list[int]]]:
    """Seeded k-fold split of ``range(n_samples)``: multi-label stratified, stratified or plain."""
    import numpy as np

    if n_folds < 2:
        raise ConfigError(f"--folds {n_folds}: expected at least 2")
    if n_samples < n_folds:
        raise ConfigError(f"--folds {n_folds}: the pool has only {n_samples} samples")
    kind = label_kind(labels)
    x = np.zeros((n_samples, 1))
    if kind == "multilabel-stratified":
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter: Any = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    elif kind == "stratified":
        from sklearn.model_selection import StratifiedKFold

        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        from sklearn.model_selection import KFold

        splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    y = None if labels is None else np.asarray(labels)
    return [{"train": sorted(map(int, tr)), "val": sorted(map(int, va))} for tr, va in splitter.split(x, y)]


def read_folds(path: str | Path) -> dict[str, Any]:
    """folds.json, its fingerprint checked against its own index lists."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"folds file {path} does not exist; `lit-exp cv` writes it")
    data = json.loads(path.read_text())
    if folds_fingerprint(data["folds"], data["data_fingerprint"]) != data["fingerprint"]:
        raise ConfigError(f"{path}: its fingerprint does not match its folds (edited by hand?); draw new folds "
                          "in a new cv folder")
    return data


def fold_sizes(data: dict[str, Any]) -> tuple[float, float]:
    """(mean held-out size, mean training size) over the folds: n_test / n_train of the corrected t-test."""
    folds = data["folds"]
    return (sum(len(f["val"]) for f in folds) / len(folds), sum(len(f["train"]) for f in folds) / len(folds))


def ensure_folds(path: Path, n_samples: int, labels: Any, n_folds: int, seed: int) -> dict[str, Any]:
    """The folds at ``path``: read when they exist (same data, same k, else an error), written otherwise."""
    data_fp = data_fingerprint(n_samples, labels)
    if path.is_file():
        data = read_folds(path)
        if data["data_fingerprint"] != data_fp:
            raise ConfigError(f"{path} was drawn from other data (data fingerprint {data['data_fingerprint'][:12]}, "
                              f"this config's data {data_fp[:12]}, {n_samples} samples); use a new cv folder "
                              "(--out) for other data")
        if data["n_folds"] != n_folds:
            raise ConfigError(f"{path} holds {data['n_folds']} folds, --folds asks {n_folds}; use a new --out")
        print(f"cv: reusing {path} ({n_folds} folds, fingerprint {data['fingerprint'][:12]})", flush=True)
        return data
    folds = make_folds(n_samples, labels, n_folds, seed)
    data = {"n_folds": n_folds, "kind": label_kind(labels), "seed": seed, "n_samples": int(n_samples),
            "data_fingerprint": data_fp, "fingerprint": folds_fingerprint(folds, data_fp),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "folds": folds}
    write_json(path, data)
    print(f"cv: wrote {path} ({n_folds} {data['kind']} folds, fingerprint {data['fingerprint'][:12]})", flush=True)
    return data


def load_fold(datamodule: Any, spec: dict[str, Any]) -> tuple[list[int], list[int], dict[str, Any]]:
    """The train / val indices of fold ``spec["index"]`` of ``spec["file"]``, checked against the datamodule's
    data, and the info a run records in results.json (``file``, ``fingerprint``, ``index``, ``n_folds``)."""
    if not isinstance(spec, dict) or "file" not in spec or "index" not in spec:
        raise ConfigError(f"{type(datamodule).__name__}: fold={spec!r}; expected {{'file': folds.json, 'index': k}}")
    data = read_folds(spec["file"])
    index = int(spec["index"])
    if not 0 <= index < data["n_folds"]:
        raise ConfigError(f"fold index {index}: {spec['file']} has folds 0..{data['n_folds'] - 1}")
    n, labels = datamodule.fold_pool()
    if data_fingerprint(n, labels) != data["data_fingerprint"]:
        raise ConfigError(f"{type(datamodule).__name__}: its data ({n} samples) differ from the data the folds in "
                          f"{spec['file']} were drawn from ({data['n_samples']} samples); the folds do not apply")
    fold = data["folds"][index]
    info = {"file": str(Path(spec["file"]).resolve()), "fingerprint": data["fingerprint"], "index": index,
            "n_folds": data["n_folds"], "kind": data["kind"], "fold_sizes": list(fold_sizes(data))}
    return list(fold["train"]), list(fold["val"]), info
