"""Shared helpers of the multilabel tests: a tiny run through the CLI (fit, test, results), the parts of a config
as jsonargparse builds them, and a datamodule of a config's ``data`` section without its towers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from lit_experiments.cli import main
from lit_experiments.core.configs import load_composed, merge
from lit_experiments.studies.multilabel.datamodule import MultilabelDataModule
from lit_experiments.studies.multilabel.module import MultilabelModule

from .tiny import tiny

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs" / "multilabel"


def write_config(tmp: Path, variant: str = "mlp.yaml", name: str = "run", source: dict | None = None,
                 **data: Any) -> list[str]:
    """``-c`` args: the demo (over the seed config), a variant and a tiny override with ``data`` (datamodule
    arguments) and ``source`` (the source's arguments) on top."""
    raw = load_composed(CONFIGS / "demo.yaml")
    over = merge(tiny(CONFIGS / "demo.yaml", raw, tmp), {
        "data": {"init_args": {"source": {"init_args": {"n_pool": 64, "n_test": 32, **(source or {})}},
                               "batch_size": 16, **data}},
        "trainer": {"max_epochs": 3, "num_sanity_val_steps": 0, "run_dir": str(tmp / name)}})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(over))
    return ["-c", str(CONFIGS / "seed_siglip2.yaml"), "-c", str(CONFIGS / "demo.yaml"), "-c", str(CONFIGS / variant),
            "-c", str(path)]


def fit(args: list[str], tmp: Path, name: str = "run") -> Path:
    assert main(["fit", *args]) in (0, None)
    ckpts = sorted((tmp / name).rglob("*.ckpt"))
    assert ckpts
    return ckpts[-1]


def run_test(tmp: Path, args: list[str], ckpt: Path, name: str = "run") -> dict:
    """``lit-exp test`` of ``ckpt``: the results.json it wrote."""
    before = set((tmp / name).rglob("results.json"))
    assert main(["test", *args, f"--ckpt_path={ckpt}"]) in (0, None)
    new = sorted(set((tmp / name).rglob("results.json")) - before)
    return json.loads(new[-1].read_text())


run_test.__test__ = False  # imported as `test_results` by the tests: a helper, not a test


def module_and_data(ckpt: Path, args: list[str]) -> tuple[MultilabelModule, MultilabelDataModule]:
    """The fitted module (weights of ``ckpt``) and its datamodule, built as the CLI builds them."""
    from lit_experiments.experiments.cv import pool_of

    files = [a for a in args if a != "-c"]
    dm = pool_of(files)[0]
    module = MultilabelModule(**model_parts(files))
    dm.setup("fit")
    module.dry_run(next(iter(dm.train_dataloader())))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    return module.eval(), dm


def model_parts(files: list[str]) -> dict:
    """``head``, ``loss`` and ``knn`` of the composed ``model`` sections of ``files`` (built by jsonargparse)."""
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    cfg = None
    for f in files:
        section = (yaml.safe_load(Path(f).read_text()) or {}).get("model")
        if section is not None:
            cfg = parser.parse_object({"model": section}, cfg_base=cfg, defaults=cfg is None)
    model = parser.instantiate_classes(cfg).model
    return {"head": model.head, "loss": model.loss, "knn": model.knn_args}


def build_data(init_args: dict[str, Any]) -> MultilabelDataModule:
    """A ``MultilabelDataModule`` of composed ``data.init_args`` (parts as ``class_path`` / ``init_args``), built by
    jsonargparse as the CLI builds it; without ``frozen`` (captions and targets need no towers)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultilabelDataModule, "data")
    args = {k: v for k, v in init_args.items() if k != "frozen"}
    return parser.instantiate_classes(parser.parse_object({"data": args})).data


def demo_datamodule(tmp_path: Path, source: dict | None = None, **over: Any) -> tuple[MultilabelDataModule, dict]:
    """The demo config's datamodule (its data and caption settings; no towers: captions need none), with
    ``source`` merged into the source's ``init_args`` and ``over`` into the datamodule's; returns it and the
    composed ``data.init_args``."""
    args = dict(load_composed(CONFIGS / "demo.yaml")["data"]["init_args"])
    args.pop("num_workers", None)
    args = merge(args, {"cache_dir": str(tmp_path / "cache"), "source": {"init_args": source or {}}, **over})
    return build_data(args), args
