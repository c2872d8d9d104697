"""wandb: offline in a temp dir records both stages under distinct prefixes; no API key means offline (F38)."""

from __future__ import annotations

import time

import pytest

from lit_experiments.core import loggers
from lit_experiments.core.loggers import WandbSpec, resolve_wandb_mode
from lit_experiments.core.trainer import LitTrainer

from .toys import FAST, RecordingToy, data, stages


def test_f35_wandb_offline_records_two_stages_under_distinct_prefixes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    kw = {k: v for k, v in FAST.items() if k != "logger"}
    trainer = LitTrainer(run_dir=str(tmp_path / "run"), wandb=WandbSpec(project="t"), **kw)
    assert [type(lg).__name__ for lg in trainer.loggers] == ["CSVLogger", "WandbLogger"]
    trainer.curriculum(RecordingToy(), data(), stages(("encoder", 1, ["*"]), ("head", 1, ["head"])),
                       test_after=False)
    files = list((tmp_path / "run").rglob("*.wandb"))
    assert len(files) == 1, files  # one wandb run for the whole curriculum
    deadline = time.time() + 30  # wandb's writer is a separate process: wait for it to flush
    while True:
        blob = files[0].read_bytes()
        if b"head/val/acc" in blob or time.time() > deadline:
            break
        time.sleep(0.5)
    assert b"encoder/train/loss" in blob and b"head/train/loss" in blob
    assert b"encoder/val/acc" in blob and b"head/val/acc" in blob


def test_f38_without_an_api_key_wandb_goes_offline_and_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setattr(loggers, "_told_offline", False)
    with caplog.at_level("INFO"):
        assert resolve_wandb_mode(WandbSpec()) == "offline"
        assert resolve_wandb_mode(WandbSpec()) == "offline"
    assert sum("no API key" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode(WandbSpec()) == "online"
    assert resolve_wandb_mode(WandbSpec(mode="disabled")) == "disabled"
    with pytest.raises(ValueError, match="sometimes"):
        resolve_wandb_mode(WandbSpec(mode="sometimes"))


def test_third_party_deprecation_noise_is_filtered_on_import():
    """torchao (imported by transformers' SigLIP / SAM3 models) made torch print two deprecation lines on every
    distill and multilabel command; the package filters exactly those."""
    import subprocess
    import sys

    code = "import lit_experiments, logging; import transformers.models.siglip.modeling_siglip"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "register_constant() on Enum subclasses" not in done.stderr
