"""Configs as a base plus deltas: the ``# base:`` header line and composition of YAML files.

A variant or ablation YAML says only what changes. Its first line names the file(s) it builds on, relative to
its own folder::

    # base: _base_movi.yaml
    model:
      init_args:
        loss: {init_args: {kind: cosine}}

``lit-exp curriculum -c configs/slots/dinov2_mse.yaml`` then runs ``_base_movi.yaml`` composed with the delta
(the CLI inserts the bases, said once); ``-c _base_movi.yaml -c dinov2_mse.yaml`` is the same run. Composition
follows jsonargparse: mappings merge key by key (``init_args`` of a part included), lists (``stages``) are
replaced whole. A base may itself have a base. This module imports neither torch nor lightning.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError

BASE_PREFIX = "# base:"


class ConfigCompositionError(ConfigError):
    """A ``# base:`` line names a file that does not exist, or bases form a cycle."""


def declared_bases(path: str | Path) -> list[Path]:
    """The files named on ``path``'s first line ``# base: a.yaml [b.yaml ...]`` (empty when there is none)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            first = fh.readline().strip()
    except OSError:
        return []
    if not first.startswith(BASE_PREFIX):
        return []
    names = first[len(BASE_PREFIX):].split()
    if not names:
        raise ConfigCompositionError(f"{path}:1: '# base:' names no file; expected '# base: _base.yaml'")
    bases = [path.parent / name for name in names]
    for base in bases:
        if not base.is_file():
            raise ConfigCompositionError(f"{path}:1: base config {base} does not exist")
    return bases


def composition(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """Every file that makes up ``path``, bases first (depth first, each file once), ``path`` last."""
    path = Path(path)
    key = path.resolve()
    if key in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, key))
        raise ConfigCompositionError(f"config bases form a cycle: {chain}")
    files: list[Path] = []
    for base in declared_bases(path):
        for f in composition(base, (*_seen, key)):
            if f.resolve() not in {x.resolve() for x in files}:
                files.append(f)
    files.append(path)
    return files


def expand_config_args(argv: list[str]) -> tuple[list[str], list[Path]]:
    """Insert the declared bases of every ``-c/--config FILE`` before it (unless given earlier).

    Returns the new argument list and the inserted base files (to say once what was composed).
    """
    out: list[str] = []
    given: set[Path] = set()
    inserted: list[Path] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("-c", "--config") and i + 1 < len(argv):
            value, step = argv[i + 1], 2
        elif arg.startswith("--config="):
            value, step = arg.split("=", 1)[1], 1
        if value is None:
            out.append(arg)
            i += 1
            continue
        for f in composition(value)[:-1]:
            if f.resolve() not in given:
                out += ["-c", str(f)]
                given.add(f.resolve())
                inserted.append(f)
        out += ["-c", value]
        given.add(Path(value).resolve())
        i += step
    return out, inserted


def merge(base: Any, delta: Any) -> Any:
    """jsonargparse-like merge: mappings recursively, everything else (lists included) replaced."""
    if isinstance(base, dict) and isinstance(delta, dict):
        out = dict(base)
        for key, value in delta.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return delta


def load_composed(path: str | Path) -> dict[str, Any]:
    """The merged dict of ``path`` and its bases (for tools and tests; the CLI lets jsonargparse compose)."""
    import yaml

    merged: dict[str, Any] = {}
    for f in composition(path):
        try:
            data = yaml.safe_load(Path(f).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigCompositionError(f"{f}: not valid YAML ({err})") from err
        merged = merge(merged, data)
    return merged
