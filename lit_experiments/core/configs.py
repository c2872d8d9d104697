"""Configs as a base plus deltas: the ``# base:`` header line and the one composition rule.

A variant or ablation YAML says only what changes. Its first line names the file(s) it builds on, relative to
its own folder::

    # base: _base_movi.yaml
    model:
      init_args:
        loss: {init_args: {kind: cosine}}

``lit-exp curriculum -c configs/slots/dinov2_mse.yaml`` then runs ``_base_movi.yaml`` composed with the delta
(the CLI inserts the bases, said once on stderr); ``-c _base_movi.yaml -c dinov2_mse.yaml`` is the same run. A
base may itself have a base.

One rule composes files, used by the CLI (every ``-c`` file of a Lightning subcommand, see
:func:`compose_config_args`) and by every tool (:func:`load_composed`, :func:`compose_files`; sweep, cv, demo,
export): :func:`merge`.

* Mappings merge key by key, at every depth: ``init_args`` of a part and dict-typed arguments (``prompts``,
  ``world``, ``clips``, ``augment``, ...) alike (F48). A later ``null`` replaces.
* A part whose ``class_path`` changes to another class starts from the new class: the old ``init_args`` are
  dropped, not carried over. The same class (or no ``class_path`` in the delta) merges ``init_args``.
* Lists replace whole (``trainable``, ``colors``, ...), except the top-level ``stages:`` list, which merges by
  stage ``name``: a listed stage with an existing name merges into that stage key by key (where it stands), a
  new name appends, and ``{name: X, delete: true}`` removes stage X (an error when no earlier file has it).

This module imports neither torch nor lightning.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

BASE_PREFIX = "# base:"
CONFIG_FLAGS = ("-c", "--config")
STAGES_KEY = "stages"
DELETE_KEY = "delete"


class ConfigCompositionError(ConfigError):
    """A ``# base:`` line names a file that does not exist, bases form a cycle, or a delta cannot be merged."""


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


def composition_of(paths: Sequence[str | Path]) -> list[Path]:
    """The files of several configs in order, each with its bases first, each file once."""
    files: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        for f in composition(path):
            if f.resolve() not in seen:
                files.append(f)
                seen.add(f.resolve())
    return files


# ------------------------------------------------------------------------------------------ the one rule
def _same_class(a: Any, b: Any) -> bool:
    """Two ``class_path`` values name one class (a bare class name matches a dotted path ending in it)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    if "." in a and "." in b:
        return False
    return a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def _where(path: tuple[str, ...]) -> str:
    return ".".join(path) or "<top>"


def _merge(base: Any, delta: Any, path: tuple[str, ...]) -> Any:
    if path == (STAGES_KEY,):
        return merge_stages(base, delta)
    if isinstance(base, str) and isinstance(delta, dict) and "init_args" in delta and "class_path" not in delta:
        base = {"class_path": base}  # `part: pkg.Class` (a class by its name) then init_args for it
    if not (isinstance(base, dict) and isinstance(delta, dict)):
        return delta
    if "class_path" in base and "class_path" in delta and not _same_class(base["class_path"], delta["class_path"]):
        base = {k: v for k, v in base.items() if k not in ("init_args", "dict_kwargs")}  # another class: start anew
    out = dict(base)
    for key, value in delta.items():
        out[key] = _merge(base[key], value, (*path, str(key))) if key in base else _merge(None, value, (*path, str(key)))
    return out


def merge(base: Any, delta: Any) -> Any:
    """The one composition rule (module docstring): ``delta`` over ``base``, neither changed."""
    return _merge(base, delta, ())


def _stage_name(item: Any, index: int, which: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise ConfigCompositionError(
            f"stages[{index}] of the {which}: expected a mapping with a `name:` (stages merge by name), got {item!r}")
    return item["name"]


def merge_stages(base: Any, delta: Any) -> Any:
    """``stages:`` by name: an existing name merges (key by key, in place), a new one appends, ``{name: X,
    delete: true}`` removes X. A ``stages:`` that is not a list (``null``) replaces."""
    if not isinstance(delta, list):
        return delta
    out = [dict(s) for s in base] if isinstance(base, list) else []
    names = [_stage_name(s, i, "earlier config") for i, s in enumerate(out)]
    listed: set[str] = set()
    for i, item in enumerate(delta):
        name = _stage_name(item, i, "delta")
        if name in listed:
            raise ConfigCompositionError(f"stages: {name!r} is listed twice in one file; say each stage once")
        listed.add(name)
        if DELETE_KEY in item:
            if item[DELETE_KEY] is not True or set(item) != {"name", DELETE_KEY}:
                raise ConfigCompositionError(
                    f"stages[{i}] {name!r}: `{DELETE_KEY}:` removes a stage and is written alone as "
                    f"`{{name: {name}, {DELETE_KEY}: true}}` (got {item!r})")
            if name not in names:
                have = ", ".join(names) or "none"
                raise ConfigCompositionError(f"stages[{i}]: cannot delete stage {name!r}: no earlier config has it "
                                             f"(stages so far: {have})")
            index = names.index(name)
            del out[index], names[index]
        elif name in names:
            index = names.index(name)
            out[index] = _merge(out[index], item, (STAGES_KEY, name))
        else:
            out.append(_merge(None, item, (STAGES_KEY, name)))
            names.append(name)
    return out


# ------------------------------------------------------------------------------------------- loading
_LOADER: Any = None


def yaml_loader() -> Any:
    """PyYAML's safe loader read the way the CLI's parser (jsonargparse) reads YAML: ``1e-3`` is a float (YAML
    1.1 wants ``1.0e-3``) and dates stay strings, so the tools and the CLI see the same values."""
    global _LOADER
    if _LOADER is None:
        import re

        import yaml

        class Loader(yaml.SafeLoader):
            pass

        Loader.yaml_implicit_resolvers = {
            first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:timestamp",
                                                                       "tag:yaml.org,2002:float")]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
        Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
            [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+][0-9]+)?
            |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))
        _LOADER = Loader
    return _LOADER


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml_loader())  # noqa: S506 - safe loader
    except OSError as err:
        raise ConfigCompositionError(f"config {path} cannot be read ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        raise ConfigCompositionError(f"{path}: not valid YAML ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigCompositionError(f"{path}: a config is a mapping of keys, got a {type(data).__name__}")
    return data


def compose_files(files: Sequence[str | Path]) -> dict[str, Any]:
    """``files`` merged in order by :func:`merge` (no ``# base:`` lookup: give :func:`composition_of`'s list)."""
    merged: dict[str, Any] = {}
    for f in files:
        try:
            merged = merge(merged, _load_yaml(Path(f)))
        except ConfigCompositionError as err:
            if str(f) in str(err):
                raise
            raise ConfigCompositionError(f"{f}: {err}") from None
    return merged


def load_composed(*paths: str | Path) -> dict[str, Any]:
    """The merged dict of ``paths`` (in order) and their bases: what ``lit-exp ... -c P1 -c P2`` runs."""
    return compose_files(composition_of(paths))


# ------------------------------------------------------------------------------------------- the CLI
def config_args(argv: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(position, width, file)`` of every ``-c FILE`` / ``--config FILE`` / ``--config=FILE`` in ``argv``."""
    found = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            found.append((i, 2, argv[i + 1]))
            i += 2
            continue
        if arg.startswith("--config="):
            found.append((i, 1, arg.split("=", 1)[1]))
        i += 1
    return found


def compose_config_args(argv: Sequence[str]) -> tuple[list[str], list[Path], list[Path]]:
    """The CLI's side of the one rule: every ``-c`` file (each with its ``# base:`` files first) composed by
    :func:`merge` into one mapping, given to the parser as one ``--config`` (a YAML string) where the first
    ``-c`` stood; the other ``-c`` arguments are dropped, every other argument stays where it was (options after
    the config override it, as before).

    Returns the new arguments, the files composed (in order) and the base files that were not given (to say
    once what was composed). Without ``-c``: ``argv`` unchanged.
    """
    import yaml

    found = config_args(argv)
    if not found:
        return list(argv), [], []
    given = [value for _, _, value in found]
    files = composition_of(given)
    given_keys = {Path(g).resolve() for g in given}
    inserted = [f for f in files if f.resolve() not in given_keys]
    text = yaml.safe_dump(compose_files(files), sort_keys=False)
    drop = {i + k for i, width, _ in found[1:] for k in range(width)}
    first, width, _ = found[0]
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i == first:
            out += ["--config", text]
        elif first < i < first + width or i in drop:
            continue
        else:
            out.append(arg)
    return out, files, inserted
