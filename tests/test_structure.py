"""The house's shape (issue 23): imports point one way, no import circle, one name per class, small datamodules,
deltas shorter than their bases. Every check reads the product's own files, so a change that breaks the shape
fails here."""
from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_experiments"

#: wings, lowest first: a module may import its own wing or a lower one, never a higher one
RANKS = {"core": 0, "registry": 0, "": 0, "data": 1, "metrics": 1, "backbones": 1,
         "experiments": 2, "deploy": 2, "studies": 3, "cli": 4, "demo": 4, "__main__": 4}


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at any depth of the file; ``if TYPE_CHECKING:`` blocks, which
    never run, left out)."""
    mods = module_names()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            if _type_checking_only(node, parents):
                continue
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_point_one_way():
    """cli -> studies -> experiments / deploy -> data / metrics / backbones -> core: never back, no study
    imports another, and the two tool wings do not import each other."""
    bad = []
    for src, targets in import_graph().items():
        for dst in targets:
            a, b = wing(src), wing(dst)
            if RANKS[b] > RANKS[a]:
                bad.append(f"{src} -> {dst} (upward: {a or 'package'} below {b})")
            elif a == "studies" and b == "studies" and src.split(".")[2] != dst.split(".")[2]:
                bad.append(f"{src} -> {dst} (one study imports another)")
            elif {a, b} == {"experiments", "deploy"}:
                bad.append(f"{src} -> {dst} (experiments and deploy are side by side)")
    assert not bad, "imports against the wing order:\n" + "\n".join(sorted(bad))


def test_no_import_circle():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in module_names():
        if module not in index:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_no_two_classes_share_a_name():
    where = defaultdict(list)
    for name, path in module_names().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                where[node.name].append(name)
    twice = {k: v for k, v in where.items() if len(v) > 1}
    assert not twice, f"class names defined more than once: {twice}"


def study_datamodules() -> list[type]:
    import importlib

    import lightning as L

    found = []
    for name, path in module_names().items():
        if not name.startswith("lit_experiments.studies.") or not path.name == "datamodule.py":
            continue
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, L.LightningDataModule) and obj.__module__ == name):
                found.append(obj)
    return found


@pytest.mark.parametrize("limit", [10])
def test_datamodules_take_parts_not_fields(limit):
    """A datamodule takes its source, sampler and frozen network as parts: about ten arguments at most."""
    classes = study_datamodules()
    assert len(classes) >= 5
    wide = {c.__qualname__: n for c in classes
            if (n := len([p for p in inspect.signature(c.__init__).parameters if p != "self"])) > limit}
    assert not wide, f"datamodules with more than {limit} arguments: {wide}"


BASE_LINE = re.compile(r"^#\s*base:\s*(.+)$")


def _bases(path: Path) -> list[Path]:
    lines = path.read_text().splitlines()
    match = BASE_LINE.match(lines[0]) if lines else None
    return [path.parent / b.strip() for b in match.group(1).split(",") if b.strip()] if match else []


def _composed_lines(path: Path) -> int:
    """Lines of a file and of every base below it, each file once."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        f = todo.pop().resolve()
        if f not in seen:
            seen.add(f)
            todo.extend(_bases(f))
    return sum(len(f.read_text().splitlines()) for f in seen)


def test_every_delta_is_shorter_than_its_base():
    """A variant says only what changes: each delta under configs/ is shorter than what it composes onto."""
    long = []
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        bases = _bases(path)
        if not bases:
            continue
        base_len = sum(_composed_lines(b) for b in bases)
        n = len(path.read_text().splitlines())
        if n >= base_len:
            long.append(f"{path.relative_to(ROOT)}: {n} lines against {base_len} in its bases")
    assert not long, "deltas as long as their bases:\n" + "\n".join(long)
