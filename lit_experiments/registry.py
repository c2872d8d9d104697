"""Extension points by name: backbones and command-line tools.

The core registers its own entries; a study registers its entries in ``studies/<study>/plugin.py``, a small
module without heavy imports that the registry imports on first look-up. Adding a study therefore edits
nothing in ``core/``, ``cli.py`` or ``backbones/__init__.py``::

    # lit_experiments/studies/mystudy/plugin.py
    from lit_experiments.registry import register_backbone, register_tool

    register_tool("mystudy-report", "lit_experiments.studies.mystudy.report")          # module with main(argv)
    register_backbone("my_encoder", "lit_experiments.studies.mystudy.encoders:build_my_encoder")

A backbone target is a callable (or a ``"module:attr"`` string resolved on first use) called as
``target(name, pretrained=..., layers=..., img_size=..., model_kwargs=..., **wrapper_kwargs)``.
A target registered with ``prefix=True`` serves every name that starts with the registered prefix
(``open_clip:ViT-B-16``). This module imports neither torch nor lightning, so ``lit-exp --help`` stays fast.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from typing import Any

BackboneTarget = Callable[..., Any] | str

_BACKBONES: dict[str, BackboneTarget] = {}
_BACKBONE_PREFIXES: dict[str, BackboneTarget] = {}
_TOOLS: dict[str, str] = {}
_DEMOS: dict[str, str] = {}
_PLUGINS_LOADED = False

STUDIES_PACKAGE = "lit_experiments.studies"


class RegistryError(ValueError):
    """A name registered twice with different targets, or looked up but never registered."""


def _put(table: dict[str, Any], kind: str, name: str, target: Any) -> None:
    if not name:
        raise RegistryError(f"{kind} name must be non-empty")
    old = table.get(name)
    if old is not None and old != target:
        raise RegistryError(f"{kind} {name!r} is registered twice: {old!r} and {target!r}")
    table[name] = target


def register_backbone(name: str, target: BackboneTarget, prefix: bool = False) -> None:
    """Register a backbone factory under ``name`` (or, with ``prefix=True``, every name starting with it)."""
    _put(_BACKBONE_PREFIXES if prefix else _BACKBONES, "backbone", name, target)


def register_tool(name: str, module: str) -> None:
    """Register ``lit-exp NAME``: ``module`` is a dotted module path with ``main(argv) -> int | None``."""
    _put(_TOOLS, "tool", name, module)


def register_demo(study: str, tool: str) -> None:
    """``lit-exp demo`` runs ``configs/<study>/demo.yaml`` as ``lit-exp TOOL -c demo.yaml --run_dir DIR`` instead
    of ``fit`` / ``curriculum`` (a demo that is more than one run, e.g. a cross-validation and its report).
    The tool writes ``DIR/results.json`` with a ``headline``."""
    _put(_DEMOS, "demo", study, tool)


def demo_tool(study: str) -> str | None:
    """The tool registered to run ``study``'s demo, or None (the demo is a plain fit / curriculum)."""
    load_plugins()
    return _DEMOS.get(study)


def load_plugins() -> None:
    """Import every ``lit_experiments.studies.<study>.plugin`` module once (they register their entries)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    package = importlib.import_module(STUDIES_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        name = f"{STUDIES_PACKAGE}.{info.name}.plugin"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def resolve(target: BackboneTarget) -> Callable[..., Any]:
    """A callable from a callable or a ``"module:attr"`` string."""
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def backbone_factory(name: str) -> Callable[..., Any] | None:
    """The factory serving ``name``: an exact entry first, then the longest matching prefix; ``None`` if none."""
    load_plugins()
    if name in _BACKBONES:
        return resolve(_BACKBONES[name])
    matches = [p for p in _BACKBONE_PREFIXES if name.startswith(p)]
    if matches:
        return resolve(_BACKBONE_PREFIXES[max(matches, key=len)])
    return None


def backbone_names() -> list[str]:
    load_plugins()
    return sorted(_BACKBONES) + sorted(f"{p}<name>" for p in _BACKBONE_PREFIXES)


def tools() -> dict[str, str]:
    """Every registered tool: name -> module."""
    load_plugins()
    return dict(sorted(_TOOLS.items()))
