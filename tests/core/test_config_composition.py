"""Configs as a base plus deltas: the `# base:` line, its errors, and the one composition rule (F48).

The CLI (`lit-exp fit/curriculum/... -c A -c B`) and every tool (`core.configs.load_composed`: sweep, cv, demo,
export) compose files by `core.configs.merge`: mappings key by key (dict-typed arguments too), lists replace,
`stages:` merge by stage name, a part whose `class_path` changes starts from the new class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lit_experiments.cli import main
from lit_experiments.core.configs import (
    ConfigCompositionError,
    compose_config_args,
    composition,
    declared_bases,
    load_composed,
    merge,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG_ROOT = ROOT / "configs"
HOST = CONFIG_ROOT / "toy" / "curriculum.yaml"  # what a trainer / logger fragment is composed with
TOY = HOST


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_delta_composes_after_its_bases(tmp_path):
    base = write(tmp_path / "_base.yaml", "model: {init_args: {a: 1, b: {x: 1, y: 2}, l: [1, 2]}}\n"
                                          "stages: [{name: s1, max_epochs: 1}, {name: s2, max_epochs: 2}]\n")
    mid = write(tmp_path / "mid.yaml", "# base: _base.yaml\nmodel: {init_args: {b: {y: 3}, l: [9]}}\n")
    leaf = write(tmp_path / "leaf.yaml", "# base: mid.yaml\n# notes\nstages: [{name: only, max_steps: 1}]\n")
    assert declared_bases(leaf) == [mid]
    assert composition(leaf) == [base, mid, leaf]
    merged = load_composed(leaf)
    assert merged["model"]["init_args"] == {"a": 1, "b": {"x": 1, "y": 3}, "l": [9]}  # mappings merge, lists replace
    assert [s["name"] for s in merged["stages"]] == ["s1", "s2", "only"]  # a new stage name appends
    assert load_composed(base, leaf) == merged  # several configs: each file once, bases first


def test_missing_base_and_cycles_are_named(tmp_path):
    bad = write(tmp_path / "bad.yaml", "# base: nope.yaml\n")
    with pytest.raises(ConfigCompositionError, match=r"bad.yaml:1: base config .*nope.yaml does not exist"):
        composition(bad)
    write(tmp_path / "a.yaml", "# base: b.yaml\n")
    write(tmp_path / "b.yaml", "# base: a.yaml\n")
    with pytest.raises(ConfigCompositionError, match="cycle"):
        composition(tmp_path / "a.yaml")


def test_stages_merge_by_name_append_and_delete():
    base = {"stages": [{"name": "a", "max_epochs": 1, "optimizer": {"name": "SGD", "lr": 0.1}, "trainable": ["x"]},
                       {"name": "b", "max_epochs": 2}]}
    delta = {"stages": [{"name": "c", "max_steps": 5}, {"name": "a", "optimizer": {"lr": 0.5}, "trainable": ["y"]}]}
    out = merge(base, delta)
    assert out["stages"] == [
        {"name": "a", "max_epochs": 1, "optimizer": {"name": "SGD", "lr": 0.5}, "trainable": ["y"]},  # in place
        {"name": "b", "max_epochs": 2},
        {"name": "c", "max_steps": 5}]  # appended
    assert base["stages"][0]["optimizer"] == {"name": "SGD", "lr": 0.1}  # the base is not changed
    assert merge(out, {"stages": [{"name": "a", "delete": True}]})["stages"] == out["stages"][1:]
    assert merge(base, {"stages": None})["stages"] is None  # not a list: replaces
    with pytest.raises(ConfigCompositionError, match=r"cannot delete stage 'z': no earlier config has it.*a, b"):
        merge(base, {"stages": [{"name": "z", "delete": True}]})
    for bad in ({"name": "a", "delete": True, "max_epochs": 3}, {"name": "a", "delete": False},
                {"name": "a", "delete": "yes"}):
        with pytest.raises(ConfigCompositionError, match=r"written alone as `\{name: a, delete: true\}`"):
            merge(base, {"stages": [bad]})
    with pytest.raises(ConfigCompositionError, match="expected a mapping with a `name:`"):
        merge(base, {"stages": [{"max_epochs": 3}]})
    with pytest.raises(ConfigCompositionError, match="listed twice"):
        merge(base, {"stages": [{"name": "b"}, {"name": "b"}]})
    with pytest.raises(ConfigCompositionError, match="cannot delete"):  # nothing to delete in a first file
        merge({}, {"stages": [{"name": "a", "delete": True}]})


def test_a_part_that_changes_class_starts_from_the_new_class():
    base = {"model": {"class_path": "pkg.A", "init_args": {"x": 1, "sub": {"class_path": "pkg.E", "init_args":
                                                                               {"k": 1, "j": 2}}}}}
    other = merge(base, {"model": {"class_path": "pkg.B", "init_args": {"y": 2}}})
    assert other["model"] == {"class_path": "pkg.B", "init_args": {"y": 2}}  # A's x is not carried to B
    same = merge(base, {"model": {"class_path": "A", "init_args": {"y": 2}}})  # a bare name of the same class
    assert same["model"]["init_args"] == {"x": 1, "y": 2, "sub": base["model"]["init_args"]["sub"]}
    nested = merge(base, {"model": {"init_args": {"sub": {"class_path": "pkg.F"}}}})
    assert nested["model"]["init_args"]["sub"] == {"class_path": "pkg.F"} and nested["model"]["init_args"]["x"] == 1
    assert merge(base, {"model": {"init_args": {"sub": {"init_args": {"j": 3}}}}})["model"]["init_args"]["sub"] == {
        "class_path": "pkg.E", "init_args": {"k": 1, "j": 3}}


def test_cli_arguments_compose_into_one_config(tmp_path):
    base = write(tmp_path / "_base.yaml", "seed_everything: 1\nmodel: {init_args: {d: {a: 1, b: 2}}}\nlr: 1e-3\n")
    delta = write(tmp_path / "d.yaml", "# base: _base.yaml\nmodel: {init_args: {d: {b: 3}}}\n")
    more = write(tmp_path / "m.yaml", "seed_everything: 5\n")
    args, files, inserted = compose_config_args(["curriculum", "-c", str(delta), "--trainer.max_epochs", "1",
                                                 f"--config={more}", "--only", "x"])
    assert files == [base, delta, more] and inserted == [base]
    assert args[0] == "curriculum" and args[1] == "--config" and args[3:] == ["--trainer.max_epochs", "1",
                                                                              "--only", "x"]
    assert yaml.safe_load(args[2]) == {"seed_everything": 5, "model": {"init_args": {"d": {"a": 1, "b": 3}}},
                                       "lr": 0.001}  # 1e-3 is a float, as the CLI's parser reads it
    assert load_composed(delta, more) == yaml.safe_load(args[2])  # the tools' path: the same mapping
    assert compose_config_args(["fit", "--trainer.max_epochs", "1"]) == (["fit", "--trainer.max_epochs", "1"], [], [])


# ------------------------------------------------------------------ the CLI and the tools agree (F48)
def print_config(args: list[str], capsys) -> tuple[dict[str, Any], str]:
    """The CLI's parsed config (`--print_config`: the product's own parse path) and its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main([*[str(a) for a in args], "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code in (0, None), captured.err[-2000:]
    return yaml.safe_load(captured.out), captured.err  # stdout is the YAML alone (the notice is on stderr)


def assert_sets(expected: Any, printed: Any, where: str) -> None:
    """Every key ``expected`` sets has the same value in ``printed`` (stages matched by name, in order)."""
    if isinstance(expected, dict):
        assert isinstance(printed, dict), f"{where}: the CLI has {printed!r}, the tools {expected!r}"
        for key, value in expected.items():
            if value is None and key not in printed:
                continue
            assert key in printed, f"{where}.{key}: set by the tools' composition, missing in the CLI's"
            assert_sets(value, printed[key], f"{where}.{key}")
    elif isinstance(expected, list) and where == "stages":
        assert [s.get("name") for s in printed] == [s["name"] for s in expected], where
        for stage, got in zip(expected, printed):
            assert_sets(stage, got, f"stages[{stage['name']}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(printed, (list, tuple)) and len(printed) == len(expected), \
            f"{where}: the CLI has {printed!r}, the tools {expected!r}"
        for i, (value, got) in enumerate(zip(expected, printed)):
            assert_sets(value, got, f"{where}[{i}]")
    elif isinstance(expected, str) and isinstance(printed, dict) and "class_path" in printed:
        assert printed["class_path"].split(".")[-1] == expected.split(".")[-1], where  # `part: pkg.Class` shorthand
    else:
        assert printed == expected, f"{where}: the CLI has {printed!r}, the tools {expected!r}"


CONFIGS = sorted(CONFIG_ROOT.rglob("*.yaml"))


def test_f48_cli_and_tools_compose_alike(capsys, tmp_path):
    """Every YAML under configs/ (with its `# base:` files; a fragment after the toy curriculum) composed by the
    CLI's parser equals the tools' `load_composed` on every key the composition sets; for a composition of several
    files, the CLI's whole parsed config (defaults included) equals its parse of `load_composed`'s mapping as one
    file (a part whose class changed carries none of the old class's arguments)."""
    assert len(CONFIGS) > 20, CONFIGS
    for config in CONFIGS:
        given = [config] if "model" in load_composed(config) else [HOST, config]
        expected = load_composed(*given)
        sub = "curriculum" if "stages" in expected else "fit"
        printed, err = print_config([sub, *[a for f in given for a in ("-c", f)]], capsys)
        assert_sets(expected, printed, "")
        if len(composition(config)) > 1 or len(given) > 1:
            assert "composing" in err or len(given) > 1, config  # the bases are said once, on stderr
            one = write(tmp_path / "composed.yaml", yaml.safe_dump(expected))
            assert printed == print_config([sub, "-c", one], capsys)[0], config


def test_f48_dict_argument_delta_keeps_the_base_keys_in_the_cli(tmp_path, capsys):
    """A delta that sets one key of a dict-typed argument (distill `prompts`) keeps the base's other keys (its
    `per_image`) in the run the CLI builds, as the tools compose it; jsonargparse alone replaced the dict whole."""
    demo = CONFIG_ROOT / "distill" / "demo.yaml"
    base = load_composed(demo)["data"]["init_args"]["prompts"]
    assert {"ratios", "per_image"} <= set(base), base
    delta = write(tmp_path / "ab.yaml", "data:\n  init_args:\n    prompts: {generic: [object, thing]}\n")
    printed, _ = print_config(["curriculum", "-c", demo, "-c", delta], capsys)
    prompts = printed["data"]["init_args"]["prompts"]
    assert prompts == load_composed(demo, delta)["data"]["init_args"]["prompts"]
    assert prompts["per_image"] == base["per_image"] and prompts["ratios"] == base["ratios"]
    assert prompts["generic"] == ["object", "thing"]


def test_stage_deltas_through_the_cli(tmp_path, capsys):
    base = load_composed(TOY)["stages"]
    assert [s["name"] for s in base] == ["encoder", "head"]
    delta = write(tmp_path / "d.yaml", "stages:\n  - {name: head, max_epochs: 3}\n  - {name: extra, max_epochs: 1}\n")
    printed, _ = print_config(["curriculum", "-c", TOY, "-c", delta], capsys)
    assert [s["name"] for s in printed["stages"]] == ["encoder", "head", "extra"]
    head = printed["stages"][1]
    assert head["max_epochs"] == 3 and head["optimizer"]["name"] == base[1]["optimizer"]["name"]  # kept from base
    gone = write(tmp_path / "g.yaml", "stages: [{name: encoder, delete: true}]\n")
    printed, _ = print_config(["curriculum", "-c", TOY, "-c", gone], capsys)
    assert [s["name"] for s in printed["stages"]] == ["head"]
    missing = write(tmp_path / "x.yaml", "stages: [{name: nope, delete: true}]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["curriculum", "-c", str(TOY), "-c", str(missing), "--print_config"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "x.yaml" in err and "'nope'" in err and "Traceback" not in err



def test_f48_tools_building_a_study_compose_like_the_cli(tmp_path, monkeypatch):
    """``deploy.build.build_study`` (export / quantize / study demos) and ``experiments.cv.pool_of`` (cv) compose a
    delta key by key, as the CLI does: the distill A/B delta keeps the demo's ``prompts.per_image`` (a dict-typed
    argument), a multilabel delta that changes one key of the towers keeps the others."""
    from lit_experiments.core.configs import load_composed
    from lit_experiments.deploy.build import build_study
    from lit_experiments.experiments.cv import pool_of

    root = Path(__file__).resolve().parents[2] / "configs"
    from lit_experiments.studies.distill.components.teacher import tiny_config

    teacher = {"class_path": "lit_experiments.studies.distill.components.teacher.Sam3Teacher",  # no stand-in training
               "init_args": {"checkpoint": None, "config": tiny_config(image_size=32, patch_size=8, hidden=32,
                                                                       num_queries=4)}}
    tiny = tmp_path / "tiny_teacher.yaml"
    tiny.write_text(yaml.safe_dump({"data": {"init_args": {
        "frozen": teacher, "source": {"init_args": {"n_train": 6, "n_val": 3, "n_test": 3}},
        "cache_dir": str(tmp_path / "c")}}}))
    files = [str(root / "distill/demo.yaml"), str(root / "distill/ab_baseline.yaml"), str(tiny)]
    expected = load_composed(*files)["data"]["init_args"]["prompts"]
    assert "per_image" in expected
    _, dm, _ = build_study(files)
    for key, value in expected.items():
        assert getattr(dm.prompts, key) == value, key

    delta = tmp_path / "fewer_steps.yaml"
    delta.write_text("data: {init_args: {source: {init_args: {n_pool: 64, n_test: 32}},\n"
                     "                   frozen: {init_args: {steps: 3}}}}\n")
    ml = [str(root / "multilabel/demo.yaml"), str(delta)]
    towers = load_composed(*ml)["data"]["init_args"]["frozen"]["init_args"]
    assert towers["steps"] == 3 and "threads" in towers
    from lit_experiments.studies.multilabel.datamodule import MultilabelDataModule

    monkeypatch.setattr(MultilabelDataModule, "fold_pool", lambda self: (4, [0, 1, 0, 1]))  # no stand-in training
    dm_cv, _, _ = pool_of(ml)
    for key, value in towers.items():
        if hasattr(dm_cv.frozen, key):
            assert getattr(dm_cv.frozen, key) == value, key
