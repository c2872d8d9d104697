"""Configs as a base plus deltas: the `# base:` line, its errors, and merging as jsonargparse does."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_experiments.core.configs import (
    ConfigCompositionError,
    composition,
    declared_bases,
    expand_config_args,
    load_composed,
)

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_delta_composes_after_its_bases(tmp_path):
    base = write(tmp_path / "_base.yaml", "model: {init_args: {a: 1, b: {x: 1, y: 2}}}\nstages: [{name: s1}, {name: s2}]\n")
    mid = write(tmp_path / "mid.yaml", "# base: _base.yaml\nmodel: {init_args: {b: {y: 3}}}\n")
    leaf = write(tmp_path / "leaf.yaml", "# base: mid.yaml\n# notes\nstages: [{name: only}]\n")
    assert declared_bases(leaf) == [mid]
    assert composition(leaf) == [base, mid, leaf]
    merged = load_composed(leaf)
    assert merged["model"]["init_args"] == {"a": 1, "b": {"x": 1, "y": 3}}  # mappings merge
    assert merged["stages"] == [{"name": "only"}]  # lists are replaced whole


def test_missing_base_and_cycles_are_named(tmp_path):
    bad = write(tmp_path / "bad.yaml", "# base: nope.yaml\n")
    with pytest.raises(ConfigCompositionError, match=r"bad.yaml:1: base config .*nope.yaml does not exist"):
        composition(bad)
    write(tmp_path / "a.yaml", "# base: b.yaml\n")
    write(tmp_path / "b.yaml", "# base: a.yaml\n")
    with pytest.raises(ConfigCompositionError, match="cycle"):
        composition(tmp_path / "a.yaml")


def test_cli_arguments_get_the_bases_inserted_once(tmp_path):
    base = write(tmp_path / "_base.yaml", "seed_everything: 1\n")
    delta = write(tmp_path / "d.yaml", "# base: _base.yaml\n")
    args, inserted = expand_config_args(["curriculum", "-c", str(delta), "--trainer.max_epochs", "1"])
    assert args == ["curriculum", "-c", str(base), "-c", str(delta), "--trainer.max_epochs", "1"]
    assert inserted == [base]
    args, inserted = expand_config_args(["curriculum", "-c", str(base), f"--config={delta}"])
    assert args == ["curriculum", "-c", str(base), "-c", str(delta)] and inserted == []


def test_merge_matches_the_cli_parser_on_a_shipped_delta(capsys):
    """load_composed (used by tools and tests) agrees with jsonargparse's own composition of every delta,
    and the CLI inserts a delta's bases by itself (`lit-exp curriculum -c delta.yaml --print_config`)."""
    from lit_experiments.cli import main

    deltas = [p for p in sorted((ROOT / "configs").glob("*/*.yaml")) if declared_bases(p)]
    assert deltas, "the shipped configs have no delta (a `# base:` first line)"
    for delta in deltas:
        merged = load_composed(delta)
        sub = "curriculum" if "stages" in merged else "fit"
        with pytest.raises(SystemExit) as exit_info:
            main([sub, "-c", str(delta), "--print_config"])
        assert exit_info.value.code in (0, None), delta
        out = capsys.readouterr().out
        printed = yaml.safe_load(out[out.index("seed_everything"):])
        assert printed["model"]["class_path"] == merged["model"]["class_path"], delta
        for key, value in merged["model"].get("init_args", {}).items():
            if not isinstance(value, dict):
                assert printed["model"]["init_args"][key] == value, (delta, key)
        if sub == "curriculum":
            assert [s["name"] for s in printed["stages"]] == [s["name"] for s in merged["stages"]], delta
