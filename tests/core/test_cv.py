"""`lit-exp cv`: folds written once and shared (F31), fold runs record their folds, cv.json against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lit_experiments.cli import main
from lit_experiments.core import folds as folds_mod
from lit_experiments.core.study import StudyDataModule
from lit_experiments.studies.toy.datamodule import ToyDataModule

ROOT = Path(__file__).resolve().parents[2]
CURRICULUM = str(ROOT / "configs" / "toy" / "curriculum.yaml")


def tiny(tmp_path: Path, n_train: int = 45) -> str:
    path = tmp_path / f"tiny{n_train}.yaml"
    path.write_text(f"data: {{init_args: {{n_train: {n_train}, n_val: 16, n_test: 16, batch_size: 8}}}}\n")
    return str(path)


def cv(tmp_path: Path, out: Path, *extra: str, n_train: int = 45) -> int:
    return main(["cv", "-c", CURRICULUM, "-c", tiny(tmp_path, n_train), "--out", str(out), *extra])


def runs_of(out: Path) -> list[dict]:
    return json.loads((out / "sweep.json").read_text())["runs"]


def test_f31_two_cv_calls_and_two_ablations_read_identical_folds(tmp_path):
    out = tmp_path / "cv"
    for name, hidden in (("narrow", 8), ("wide", 16), ("mid", 12)):
        (tmp_path / f"{name}.yaml").write_text(f"model: {{init_args: {{hidden: {hidden}}}}}\n")
    assert cv(tmp_path, out, "--folds", "3", "--test", "none", "--list", str(tmp_path / "narrow.yaml"),
              str(tmp_path / "wide.yaml")) == 0
    first = (out / "folds.json").read_text()
    # a second call (another ablation, another fold seed asked) reuses the folds file as it is
    assert cv(tmp_path, out, "--folds", "3", "--test", "none", "--fold_seed", "7",
              "--list", str(tmp_path / "mid.yaml")) == 0
    assert (out / "folds.json").read_text() == first
    saved = json.loads(first)
    runs = runs_of(out)
    assert sorted(r["variant"] for r in runs) == ["mid"] * 3 + ["narrow"] * 3 + ["wide"] * 3
    for run in runs:
        recorded = json.loads((out / run["results"]).read_text())["folds"]
        assert recorded["fingerprint"] == saved["fingerprint"] and recorded["index"] == run["fold"]
        assert recorded["n_folds"] == 3 and recorded["file"] == str((out / "folds.json").resolve())
    # the datamodule trains / validates on exactly the fold's indices of its pool
    dm = ToyDataModule(n_train=45, fold={"file": str(out / "folds.json"), "index": 1})
    dm.setup("fit")
    assert list(dm.train_set.indices) == saved["folds"][1]["train"]
    assert list(dm.val_set.indices) == saved["folds"][1]["val"]
    # other data: another fingerprint, and the old folder refuses it
    assert cv(tmp_path, tmp_path / "cv2", "--folds", "3", "--test", "none", "--print", n_train=48) == 0
    other = json.loads((tmp_path / "cv2" / "folds.json").read_text())
    assert other["data_fingerprint"] != saved["data_fingerprint"] and other["fingerprint"] != saved["fingerprint"]
    with pytest.raises(SystemExit) as exc:
        cv(tmp_path, out, "--folds", "3", "--test", "none", n_train=48)
    assert exc.value.code == 2


def test_f31_every_fold_run_trains_on_the_saved_folds_drawn_with_another_seed_than_the_datamodules(tmp_path,
                                                                                                   monkeypatch):
    """`--fold_seed 5` while the toy datamodule's seed is 0: every fold run of the cv call must split its pool by
    folds.json, not by a fold it re-draws from its own seed (the two draws differ here)."""
    seen = []
    original = StudyDataModule.use_fold

    def spy(self, train_idx, val_idx, info):  # records what each run's datamodule was given, changes nothing
        seen.append((info["index"], list(train_idx), list(val_idx)))
        return original(self, train_idx, val_idx, info)

    monkeypatch.setattr(StudyDataModule, "use_fold", spy)
    out = tmp_path / "cv"
    assert cv(tmp_path, out, "--folds", "3", "--test", "none", "--fold_seed", "5") == 0
    saved = json.loads((out / "folds.json").read_text())
    n, labels = ToyDataModule(n_train=45).fold_pool()
    redrawn = folds_mod.make_folds(n, labels, 3, 0)  # what a run would draw from the datamodule's seed
    assert redrawn != saved["folds"]
    assert sorted({index for index, _, _ in seen}) == [0, 1, 2]
    for index, train, val in seen:
        assert train == saved["folds"][index]["train"] and val == saved["folds"][index]["val"], index


def test_fold_of_other_data_is_refused_by_the_datamodule(tmp_path):
    n, labels = ToyDataModule(n_train=30).fold_pool()
    path = tmp_path / "folds.json"
    folds_mod.ensure_folds(path, n, labels, 3, 0)
    dm = ToyDataModule(n_train=33, fold={"file": str(path), "index": 0})
    with pytest.raises(ValueError, match="differ from the data"):
        dm.setup("fit")


def test_five_fold_cv_end_to_end_cv_json_against_numpy(tmp_path):
    out = tmp_path / "cv"
    assert cv(tmp_path, out, "--folds", "5", "--seeds", "0", "--test", "best", "--select", "val/loss") == 0
    summary = json.loads((out / "cv.json").read_text())
    saved = json.loads((out / "folds.json").read_text())
    assert summary["folds"] == {"file": str((out / "folds.json").resolve()), "fingerprint": saved["fingerprint"],
                                "n_folds": 5, "kind": "stratified"}
    runs = runs_of(out)
    assert [r["fold"] for r in runs] == [0, 1, 2, 3, 4] and all(r["status"] == "done" for r in runs)
    finals = [json.loads((out / r["results"]).read_text())["final"] for r in runs]
    stats = summary["variants"]["base"]
    assert summary["source"]["base"] == "val"
    for key in ("head/val/loss", "head/val/acc", "encoder/val/loss"):
        values = np.array([f[key] for f in finals])
        assert stats[key]["n"] == 5 and stats[key]["values"] == pytest.approx(values.tolist())
        assert stats[key]["mean"] == pytest.approx(values.mean())
        assert stats[key]["std"] == pytest.approx(values.std(ddof=1))
    best = int(np.argmin([f["head/val/loss"] for f in finals]))
    assert summary["best"]["base"]["fold"] == best
    tested = [r for r in runs if r.get("test")]
    assert [r["fold"] for r in tested] == [best]  # --test best: only the best fold touches the test split
    evaluated = json.loads((out / tested[0]["test"]).read_text())
    assert evaluated["test"] == tested[0]["test_metrics"] and "test/acc" in evaluated["test"]
    assert evaluated["folds"]["index"] == best
    assert summary["best"]["base"]["test"] == evaluated["test"]


def test_folds_are_disjoint_cover_the_pool_and_stratify(tmp_path):
    out = tmp_path / "cv"
    assert cv(tmp_path, out, "--folds", "5", "--print", n_train=90) == 0
    saved = json.loads((out / "folds.json").read_text())
    n, labels = ToyDataModule(n_train=90).fold_pool()
    assert saved["n_samples"] == n == 90 and saved["kind"] == "stratified" and saved["seed"] == 0
    vals = [set(f["val"]) for f in saved["folds"]]
    assert sum(len(v) for v in vals) == n and set().union(*vals) == set(range(n))
    for fold, val in zip(saved["folds"], vals):
        assert set(fold["train"]) == set(range(n)) - val
        for c in np.unique(labels):
            expected = (labels == c).sum() / 5
            assert abs((labels[sorted(val)] == c).sum() - expected) <= 1


def test_multilabel_and_unlabelled_pools():
    rng = np.random.default_rng(0)
    multi = (rng.random((60, 4)) < 0.3).astype(int)
    folds = folds_mod.make_folds(60, multi, 3, seed=0)
    assert folds_mod.label_kind(multi) == "multilabel-stratified"
    assert sorted(i for f in folds for i in f["val"]) == list(range(60))
    for f in folds:  # iterstrat keeps each label's positives close to 1/k per fold
        assert np.all(np.abs(multi[f["val"]].sum(0) - multi.sum(0) / 3) <= 2)
    plain = folds_mod.make_folds(10, None, 5, seed=0)
    assert folds_mod.label_kind(None) == "kfold" and sorted(i for f in plain for i in f["val"]) == list(range(10))
    assert plain == folds_mod.make_folds(10, None, 5, seed=0) != folds_mod.make_folds(10, None, 5, seed=1)


def test_datamodule_without_fold_pool_names_itself():
    class NoPool(StudyDataModule):
        pass

    with pytest.raises(NotImplementedError, match="NoPool defines no fold_pool"):
        NoPool().fold_pool()


def test_cv_test_all_scores_every_fold_and_aggregates_test_metrics(tmp_path):
    out = tmp_path / "cv"
    assert cv(tmp_path, out, "--folds", "3", "--test", "all", "--grid", "model.init_args.hidden=8") == 0
    summary = json.loads((out / "cv.json").read_text())
    runs = runs_of(out)
    assert summary["source"] == {"hidden=8": "test+val"} and all(r.get("test") for r in runs)
    tested = [json.loads((out / r["test"]).read_text()) for r in runs]
    assert [t["folds"]["index"] for t in tested] == [0, 1, 2]
    values = np.array([t["test"]["test/acc"] for t in tested])
    stats = summary["variants"]["hidden=8"]["test/acc"]
    assert stats["values"] == pytest.approx(values.tolist()) and stats["n"] == 3
    assert stats["mean"] == pytest.approx(values.mean()) and stats["std"] == pytest.approx(values.std(ddof=1))
    assert "head/val/acc" in summary["variants"]["hidden=8"]


def test_f54_cv_failed_test_exits_nonzero(tmp_path, monkeypatch, capsys):
    """A requested test that fails makes `lit-exp cv` exit non-zero; cv.json and the report list the failure."""
    from lit_experiments.experiments import report, sweep

    real = sweep.execute

    def test_breaks(args):  # training runs as usual; the product's test call fails
        if args[0] == "test":
            raise RuntimeError("scoring on the test split broke")
        return real(args)

    monkeypatch.setattr(sweep, "execute", test_breaks)
    out = tmp_path / "cv"
    assert cv(tmp_path, out, "--folds", "2", "--test", "all") != 0
    assert "FAILED test of" in capsys.readouterr().out
    summary = json.loads((out / "cv.json").read_text())
    failed = summary["failed_tests"]
    assert [(f["variant"], f["fold"]) for f in failed] == [("base", 0), ("base", 1)]
    assert all("scoring on the test split broke" in f["error"] for f in failed)
    assert summary["source"]["base"].startswith("val (test failed:")  # the test metrics do not silently vanish
    text = (report.build_report([str(out)]) / "report.md").read_text()
    assert "⚠" in text and "the requested test of base__seed0__fold0 (base) failed" in text
    listed = [line for line in text.splitlines() if line.startswith("| base__seed0__fold") and "test failed" in line]
    assert len(listed) == 2 and all("scoring on the test split broke" in line for line in listed)


def test_a_misspelt_select_stops_the_cv_before_any_fold_trains_and_says_why(tmp_path, monkeypatch, capsys):
    """Issue 25: `--select` with a typo was found only after every fold of every variant had trained, and no
    cv.json was written. A dry composition of the first run (one validation batch, no step) names the metrics."""
    from lit_experiments.experiments import sweep as sweep_mod

    calls = []
    real = sweep_mod.execute
    monkeypatch.setattr(sweep_mod, "execute", lambda args: (calls.append(args), real(args)))
    config = str(Path(__file__).resolve().parents[2] / "configs" / "toy" / "fit.yaml")
    out = tmp_path / "cv"
    with pytest.raises(SystemExit) as exc:
        main(["cv", "-c", config, "--trainer.max_epochs", "1", "--folds", "3", "--grid",
              "data.init_args.batch_size=16,32", "--select", "val/acuracy", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and calls == []  # none of the six fold runs trained
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["cv.json", "folds.json"]
    assert not [p for p in out.iterdir() if p.is_dir()]  # no run folder
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("results.json"))
    assert "val/acuracy" in err and "did you mean val/acc" in err and "Traceback" not in err
    assert "it logged val/acc, val/loss" in err and "No fold was trained" in err
    saved = json.loads((out / "cv.json").read_text())
    assert saved["select"] == "val/acuracy" and saved["metrics_found"] == ["val/acc", "val/loss"]
    assert saved["error"].startswith("--select val/acuracy: a dry composition of")
    with pytest.raises(SystemExit):  # a test metric never picks a model
        main(["cv", "-c", config, "--folds", "3", "--select", "test/acc", "--out", str(tmp_path / "cv2")])
    assert calls == []


def test_a_curriculum_select_is_checked_dry_against_every_stage(tmp_path, monkeypatch, capsys):
    """A curriculum logs <stage>/val/NAME: val/acc and head/val/acc pass the dry check, head/val/accuracy does
    not (did you mean head/val/acc), and the dry run leaves no run folder behind."""
    from lit_experiments.experiments import sweep as sweep_mod
    from lit_experiments.experiments.preflight import dry_val_metrics

    logged = dry_val_metrics([CURRICULUM, tiny(tmp_path)], ["--test_after", "false"])
    assert sorted(k for k in logged if "val/" in k) == ["encoder/val/acc", "encoder/val/loss", "head/val/acc",
                                                       "head/val/loss"]
    out = tmp_path / "cv"
    monkeypatch.setattr(sweep_mod, "execute", lambda args: pytest.fail("a fold trained"))
    with pytest.raises(SystemExit):
        cv(tmp_path, out, "--folds", "2", "--select", "head/val/accuracy")
    err = capsys.readouterr().err
    assert "did you mean head/val/acc" in err and "encoder/val/loss" in err
    assert not [p for p in out.iterdir() if p.is_dir()] and (out / "cv.json").is_file()


def test_the_first_finished_run_still_checks_select_when_the_dry_run_misses_it(tmp_path, monkeypatch, capsys):
    """Second line of defence: a metric the dry composition saw but the trained run did not log stops the cv after
    its first run, with cv.json saying why."""
    from lit_experiments.experiments import preflight
    from lit_experiments.experiments import sweep as sweep_mod

    calls = []
    real = sweep_mod.execute
    monkeypatch.setattr(sweep_mod, "execute", lambda args: (calls.append(args), real(args)))
    monkeypatch.setattr(preflight, "dry_val_metrics", lambda *a, **k: ["val/acuracy", "val/loss"])
    config = str(Path(__file__).resolve().parents[2] / "configs" / "toy" / "fit.yaml")
    out = tmp_path / "cv"
    with pytest.raises(SystemExit) as exc:
        main(["cv", "-c", config, "--trainer.max_epochs", "1", "--folds", "3", "--select", "val/acuracy",
              "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(calls) == 1  # one of three fold runs trained
    assert "the first finished run logged no such validation metric (did you mean val/acc" in err
    saved = json.loads((out / "cv.json").read_text())
    assert saved["select"] == "val/acuracy" and "val/acc" in saved["metrics_found"]


def test_a_metric_undefined_in_a_run_is_null_and_listed_not_dropped(tmp_path, capsys):
    """Issue 25: a metric undefined (NaN -> null) in one run of a variant vanished from cv.json."""
    from lit_experiments.experiments.cv import cv_summary, print_cv

    runs = []
    for variant, values in (("a", [0.5, 0.6, 0.7]), ("b", [0.4, None, 0.8])):
        for fold, value in enumerate(values):
            name = f"{variant}__seed0__fold{fold}"
            (tmp_path / name).mkdir()
            (tmp_path / name / "results.json").write_text(json.dumps(
                {"status": "done", "final": {"val/acc": value, "val/loss": 1.0 - fold / 10}}))
            runs.append({"name": name, "variant": variant, "status": "done", "fold": fold, "seed": 0,
                         "results": f"{name}/results.json"})
    folds = {"fingerprint": "fp", "n_folds": 3, "kind": "kfold"}
    summary = cv_summary(tmp_path, {"runs": runs}, folds, "val/loss", "min")
    assert summary["variants"]["a"]["val/acc"]["mean"] == pytest.approx(0.6)
    b = summary["variants"]["b"]["val/acc"]
    assert b["mean"] is None and b["n"] == 2 and b["undefined_in"] == ["b__seed0__fold1"]
    assert summary["undefined"] == [{"variant": "b", "metric": "val/acc", "runs": ["b__seed0__fold1"]}]
    print_cv({**summary, "source": {"a": "val", "b": "val"}})
    assert "undefined in b__seed0__fold1" in capsys.readouterr().out
