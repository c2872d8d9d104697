"""F50: the distill run's random choices follow `seed_everything` unless the YAML pins them: the training order,
the training prompts, the stand-in teacher's training; `lit-exp distill-demo --seed_everything N` seeds the run."""
from __future__ import annotations

import subprocess

import pytest

from lit_experiments.studies.distill import demo
from lit_experiments.studies.distill.components import standin

from .helpers import make_dm


def draws(tmp_path, **kw) -> tuple[list, list]:
    dm = make_dm(teacher=None, n_train=24, n_val=2, n_test=2, shapes={"image_size": 32},
                           cache_dir=str(tmp_path), batch_size=4, **kw)
    dm.setup("fit")
    order = [i for i, _, _ in dm.train_dataloader().sampler]
    prompts = [dm.split("train")[(i, 0, 0)]["prompt"] for i in range(len(dm.unit_source("train")))]
    return order, prompts


def test_f50_distill_order_and_prompts_follow_seed_everything(tmp_path, monkeypatch):
    runs = {}
    for seed in ("0", "1"):
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        runs[seed] = draws(tmp_path)
    assert runs["0"][0] != runs["1"][0]  # data order
    assert runs["0"][1] != runs["1"][1]  # training prompts
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    assert draws(tmp_path) == runs["0"]  # the same seed: the same draws
    pinned = {}
    for seed in ("0", "1"):  # a YAML that pins them keeps them whatever seed_everything is
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        pinned[seed] = draws(tmp_path, shuffle_seed=7, prompts={"seed": 7})
    assert pinned["0"] == pinned["1"]


class _Stop(Exception):
    pass


def test_f50_standin_seed_follows_seed_everything(monkeypatch):
    seeds = []

    def fake(*args, seed, **kw):
        seeds.append(seed)
        raise _Stop

    monkeypatch.setattr(standin, "train_standin_teacher", fake)
    for env in ("0", "1"):
        monkeypatch.setenv("PL_GLOBAL_SEED", env)
        with pytest.raises(_Stop):
            standin.StandinTeacher()
    with pytest.raises(_Stop):
        standin.StandinTeacher(seed=5)
    assert seeds[0] != seeds[1] and seeds[2] == 5


def test_f50_distill_demo_seed_everything_reaches_the_run(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    cfg = demo.Path(__file__).resolve().parents[3] / "configs" / "distill" / "demo.yaml"
    assert demo.main(["-c", str(cfg), "--run_dir", str(tmp_path / "run"), "--seed_everything", "3"]) == 1
    cmd = seen["cmd"]
    assert cmd[cmd.index("--seed_everything") + 1] == "3" and seen["env"]["PL_GLOBAL_SEED"] == "3"
