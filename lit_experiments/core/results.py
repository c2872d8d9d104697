"""results.json: the final metrics of a run, stage by stage, written atomically by rank zero."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import types
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


def error_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for results.json."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def finite_or_null(value: Any, notes: dict[str, str], path: str = "", nulls: set[str] | None = None) -> Any:
    """``value`` with every non-finite float replaced by ``None``; ``notes[path] = "nan" | "inf" | "-inf"``.

    ``nulls`` collects the paths of every ``None`` in the result (an earlier note stays valid only there).
    """
    nulls = set() if nulls is None else nulls
    if isinstance(value, float) and not math.isfinite(value):
        notes[path] = str(value)
        value = None
    if value is None:
        nulls.add(path)
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v, notes, f"{path}.{k}" if path else str(k), nulls) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_null(v, notes, f"{path}.{i}", nulls) for i, v in enumerate(value)]
    return value


def skipped_samples(datamodule: Any, depth: int = 5) -> dict[str, Any] | None:
    """What the datamodule's readers skipped under ``on_bad_sample: skip``: ``{"skipped_samples": n,
    "skipped_files": [first 20]}`` (a reader keeps a ``skipped_files`` list, data/errors.py), or ``None`` when it
    has no such reader. Found by walking the datamodule's attributes (sources, datasets, subsets), each once."""
    seen: set[int] = set()
    files: list[str] = []
    found = False

    def walk(obj: Any, level: int) -> None:
        nonlocal found
        if level > depth or id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return
        seen.add(id(obj))
        listed = getattr(obj, "skipped_files", None) if not isinstance(obj, (dict, list, tuple)) else None
        if isinstance(listed, list):
            found = True
            files.extend(str(f) for f in listed)
            return
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj)[:64]
        elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            children = [v for k, v in vars(obj).items() if k not in ("trainer", "_trainer")]
        else:
            return
        for child in children:
            if hasattr(child, "parameters") and callable(child.parameters):  # a network: no reader inside
                continue
            walk(child, level + 1)

    walk(datamodule, 0)
    if not found:
        return None
    unique = list(dict.fromkeys(files))
    return {"skipped_samples": len(unique), "skipped_files": unique[:20]}


#: a console metric table of more metrics than this is cut to the headline block and the first others
TABLE_LINES = 15
#: the other metrics a cut table still shows however long its headline block is
TABLE_MIN_OTHERS = 5


def format_test_table(data: dict[str, Any], path: str | Path) -> str:
    """A short aligned table of a run's test metrics (empty string when it has none): the headline metrics with
    their floors / references first, then the others up to :data:`TABLE_LINES` lines; the rest are counted in
    one last line naming ``path`` (the run's results.json, which keeps every metric)."""
    return format_metric_table(f"test metrics ({data.get('run_name', 'run')})", data.get("test") or {},
                               headline=list(data.get("headline") or {}), references=data.get(REFERENCES) or {},
                               more_in=str(path))


def _shown(value: Any) -> str:
    return "nan/inf (null)" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_metric_table(title: str, metrics: dict[str, Any], headline: list[str] | tuple[str, ...] = (),
                        references: dict[str, list[dict[str, Any]]] | None = None,
                        more_in: str = "results.json", limit: int = TABLE_LINES) -> str:
    """``title:`` then one aligned ``name  value`` line per metric (empty string when there is none).

    The ``headline`` metrics come first, each followed by its floor / reference rows (``references``, as in
    results.json); they are always shown. A table of at most ``limit`` metrics shows them all; a longer one shows
    the other metrics until ``limit`` lines are filled (at least :data:`TABLE_MIN_OTHERS`; top-level names such as
    ``test/miou`` before nested ones such as ``test/video/teacher/miou``) and ends with ``… and N more in
    <more_in>``: nothing is lost, results.json keeps every metric."""
    if not metrics:
        return ""
    heads = [k for k in dict.fromkeys(headline) if k in metrics]
    rows: list[tuple[str, str, str]] = []  # (label, value, note)
    for key in heads:
        rows.append((key, _shown(metrics[key]), "headline"))
        for ref in (references or {}).get(key) or []:
            rows.append((f"  {ref.get('kind', 'floor')} {ref.get('name', '?')}", _shown(ref.get("value")), ""))
    others = [k for k in metrics if k not in heads]
    hidden: list[str] = []
    if len(metrics) > limit:
        room = max(limit - len(rows), TABLE_MIN_OTHERS)
        ranked = sorted(range(len(others)), key=lambda i: (others[i].count("/"), i))[:room]
        if len(others) - len(ranked) > 1:  # never a "1 more" line in place of the one metric it hides
            keep = set(ranked)
            hidden = [k for i, k in enumerate(others) if i not in keep]
            others = [k for i, k in enumerate(others) if i in keep]
    rows += [(k, _shown(metrics[k]), "") for k in others]
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{title}:"]
    lines += [f"  {label:<{width}}  {value}" + (f"  {note}" if note else "") for label, value, note in rows]
    if hidden:
        lines.append(f"  … and {len(hidden)} more in {more_in}")
    return "\n".join(lines)


def to_float_dict(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            continue
    return out


REFERENCES = "references"  # results.json section: {headline metric: [reference rows]}
FLOOR, REFERENCE = "floor", "reference"
PER_ITEM_DIR = "per_item"  # <run_dir>/per_item/<name>.json: per-test-item scores for paired bootstraps


def reference_row(name: str, value: float | None, kind: str = FLOOR, what: str = "") -> dict[str, Any]:
    """One row beside a headline (F49): ``kind`` is ``floor`` (predict nothing, chance, random ranking, an untrained
    model, a side-input rule) or ``reference`` (a baseline or probe), computed by the same metric code on the same
    test units; ``what`` says in a few words what it is."""
    if kind not in (FLOOR, REFERENCE):
        raise ValueError(f"reference kind {kind!r}: expected {FLOOR!r} or {REFERENCE!r}")
    return {"name": name, "kind": kind, "value": None if value is None else float(value), "what": what}


def check_floors(data: dict[str, Any]) -> list[str]:
    """Problems of a results.json's headline (F49): each headline metric needs at least one floor row."""
    problems = []
    refs = data.get(REFERENCES, {})
    for metric in data.get("headline", {}):
        rows = refs.get(metric, [])
        if not any(r.get("kind") == FLOOR for r in rows):
            problems.append(f"headline {metric} has no floor row in results.json[{REFERENCES!r}]")
    return problems


def write_per_item(run_dir: str | Path, name: str, ids: list[Any], scores: dict[str, list[float]],
                   meta: dict[str, Any] | None = None) -> Path:
    """``<run_dir>/per_item/<name>.json``: one score per test item and metric (same order as ``ids``), written
    atomically, so the report can compare two models on one test set with a paired bootstrap over items (F51)."""
    n = len(ids)
    for key, values in scores.items():
        if len(values) != n:
            raise ValueError(f"per-item scores {name}/{key}: {len(values)} values for {n} items")
    path = Path(run_dir) / PER_ITEM_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    notes: dict[str, str] = {}
    blob = finite_or_null({"name": name, "ids": [str(i) for i in ids], "scores": scores, "meta": meta or {}}, notes)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(blob, allow_nan=False))
    os.replace(tmp, path)
    return path


def read_per_item(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every per-item file of a run, by name (empty when the run saved none)."""
    out = {}
    for path in sorted((Path(run_dir) / PER_ITEM_DIR).glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
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
        if os.environ.get("PL_GLOBAL_SEED") is not None:  # set by seed_everything; a sweep / report reads it
            self.data.setdefault("seed", int(os.environ["PL_GLOBAL_SEED"]))
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
        """Write strict JSON: non-finite numbers become ``null`` and their keys are listed in ``nonfinite``."""
        old: dict[str, str] = dict(self.data.get("nonfinite", {}))
        notes: dict[str, str] = {}
        nulls: set[str] = set()
        self.data = finite_or_null({k: v for k, v in self.data.items() if k != "nonfinite"}, notes, "", nulls)
        notes = {**{k: v for k, v in old.items() if k in nulls}, **notes}
        if notes:
            self.data["nonfinite"] = notes
        if rank_zero_only.rank != 0:
            return self.path
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=str, allow_nan=False))
        os.replace(tmp, self.path)
        return self.path
