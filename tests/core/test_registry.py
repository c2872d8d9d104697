"""Extension points: a study registers backbones and CLI tools in its own plugin.py; the core finds them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import lit_experiments.studies as studies_pkg
from lit_experiments import registry
from lit_experiments.backbones import build_backbone

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
from lit_experiments.registry import register_backbone, register_tool

register_tool("fakestudy-hello", "lit_experiments.studies.fakestudy.hello")
register_backbone("fake_identity", "lit_experiments.studies.fakestudy.hello:build")
'''
HELLO = '''
import torch

CALLS = []


def main(argv):
    CALLS.append(list(argv))
    return 0


def build(name, pretrained=False, layers=None, img_size=None, model_kwargs=None):
    return torch.nn.Identity()
'''


@pytest.fixture
def fake_study(tmp_path, monkeypatch):
    """A study package that exists only in a temp folder: nothing in core/, cli.py or backbones/ names it."""
    pkg = tmp_path / "fakestudy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A study added without touching the core."""\n')
    (pkg / "plugin.py").write_text(PLUGIN)
    (pkg / "hello.py").write_text(HELLO)
    registry.load_plugins()  # the shipped studies' entries stay registered after this test
    monkeypatch.setattr(studies_pkg, "__path__", [*studies_pkg.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    monkeypatch.setattr(registry, "_TOOLS", dict(registry._TOOLS))
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))
    yield
    for name in [m for m in sys.modules if m.startswith("lit_experiments.studies.fakestudy")]:
        del sys.modules[name]


def test_a_new_study_adds_a_tool_and_a_backbone_without_editing_the_core(fake_study):
    from lit_experiments.cli import main

    assert main(["fakestudy-hello", "--x", "1"]) == 0
    assert sys.modules["lit_experiments.studies.fakestudy.hello"].CALLS == [["--x", "1"]]
    assert "fakestudy-hello" in registry.tools()
    import torch

    assert isinstance(build_backbone("fake_identity"), torch.nn.Identity)


def test_colour_edge_is_registered_by_the_slots_study_not_by_the_core():
    core_sources = [ROOT / "lit_experiments" / "backbones" / "__init__.py", ROOT / "lit_experiments" / "cli.py",
                    ROOT / "lit_experiments" / "registry.py",
                    *sorted((ROOT / "lit_experiments").glob("core/*.py")),
                    *sorted((ROOT / "lit_experiments").glob("experiments/*.py")),
                    *sorted((ROOT / "lit_experiments").glob("deploy/*.py"))]
    for source in core_sources:
        text = source.read_text()
        assert "colour_edge" not in text and "slots-analyze" not in text, source
    assert "colour_edge" in registry.backbone_names()
    assert registry.tools()["slots-analyze"] == "lit_experiments.studies.slots.analyze"
    backbone = build_backbone("colour_edge", model_kwargs={"dim": 16})
    assert type(backbone).__module__ == "lit_experiments.studies.slots.datamodule"


def test_colour_edge_refuses_pretrained_weights():
    with pytest.raises(ValueError, match="colour_edge.*no pretrained weights"):
        build_backbone("colour_edge", pretrained=True)


def test_registering_one_name_twice_with_different_targets_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "_TOOLS", dict(registry._TOOLS))
    registry.register_tool("twice", "a.module")
    registry.register_tool("twice", "a.module")  # same target: idempotent
    with pytest.raises(registry.RegistryError, match="'twice' is registered twice"):
        registry.register_tool("twice", "another.module")


def test_unknown_backbone_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown backbone 'not_a_model'.*colour_edge"):
        build_backbone("not_a_model")
