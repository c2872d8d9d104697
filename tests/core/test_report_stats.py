"""`lit-exp report`'s statistics that fit n (F51: no interval below 10 pairs, corrected resampled t for folds, paired
bootstrap over test items) and its floor / reference rows and tuned-on-test marks (F49, F47)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lit_experiments.core.errors import ConfigError
from lit_experiments.core.results import reference_row, write_per_item
from lit_experiments.experiments import report, report_items, report_stats

from .test_report import METRIC, _Tables, corrected_t_by_hand, make_sweep, md_tables, row, width, write_run


def test_f51_corrected_resampled_t(tmp_path: Path, monkeypatch) -> None:
    """Runs of one fold set (2 seeds x 5 folds) are compared by the corrected resampled t-test, never as 10
    independent samples: its t, p and interval against the formula and scipy's plain paired t."""
    variants = {"base": (width(8), 0.0), "aug": (width(16), 0.03)}
    values = make_sweep(tmp_path / "cv", variants, seeds=[0, 1], folds=5)
    out = report.build_report([str(tmp_path / "cv")], tmp_path / "rep")
    r = row(md_tables((out / "report.md").read_text()), f"Metric {METRIC} (baseline base)", "aug")
    keys = [(s, f) for s in (0, 1) for f in range(5)]
    d = np.array([values[("aug", *k)] - values[("base", *k)] for k in keys])
    assert r["variance from"] == "seeds and folds" and r["n"] == "10" and r["pairs"] == "10"
    assert r["test"] == report_stats.CORRECTED_T and "1/10 + 8/32" in r["note"]
    t, p, half = corrected_t_by_hand(d, tmp_path / "cv" / "folds.json")
    assert float(r["statistic"]) == pytest.approx(t, abs=6e-5) and float(r["p"]) == pytest.approx(p, abs=6e-5)
    lo, hi = (float(x) for x in r["95% CI of delta"].strip("[]").split(","))
    assert lo == pytest.approx(d.mean() - half, abs=6e-5) and hi == pytest.approx(d.mean() + half, abs=6e-5)
    # against scipy: without the correction the statistic is the plain paired t of the 10 differences
    plain = stats.ttest_rel([values[("aug", *k)] for k in keys], [values[("base", *k)] for k in keys])
    assert t * np.sqrt(1 + len(d) * 8 / 32) == pytest.approx(plain.statistic, rel=1e-9)
    assert float(r["p"]) > plain.pvalue + 1e-3
    # the bug put back (folds taken as independent samples: variance / J) gives scipy's plain t: the check sees it
    monkeypatch.setattr(report_stats, "variance_inflation", lambda n, n_test, n_train: 1 / n)
    r = row(md_tables((report.build_report([str(tmp_path / "cv")], tmp_path / "r2") / "report.md").read_text()),
            f"Metric {METRIC} (baseline base)", "aug")
    assert float(r["statistic"]) == pytest.approx(plain.statistic, abs=6e-5) and abs(float(r["statistic"]) - t) > 0.1
    one_seed = [x for x in report.collect([str(tmp_path / "cv")])[0] if x.seed == 0 and x.variant == "base"]
    assert report.variance_source(one_seed) == "folds"


def test_f51_no_interval_below_10(tmp_path: Path, monkeypatch) -> None:
    variants = {"w8": (width(8), 0.0), "w16": (width(16), 0.05)}
    title = f"Metric {METRIC} (baseline w8)"
    for n in (2, 9):
        make_sweep(tmp_path / f"s{n}", variants, seeds=list(range(n)))
        r = row(md_tables((report.build_report([str(tmp_path / f"s{n}")]) / "report.md").read_text()), title, "w16")
        assert r["95% CI of delta"] == f"descriptive, n = {n}" and r["pairs"] == str(n)
    values = make_sweep(tmp_path / "s10", variants, seeds=list(range(10)))
    text = (report.build_report([str(tmp_path / "s10")]) / "report.md").read_text()
    r = row(md_tables(text), title, "w16")
    d = np.array([values[("w16", s, None)] - values[("w8", s, None)] for s in range(10)])
    lo, hi = (float(x) for x in r["95% CI of delta"].strip("[]").split(","))
    means = d[np.random.default_rng(1).integers(0, 10, (20000, 10))].mean(1)  # numpy percentile bootstrap
    ref = np.percentile(means, [2.5, 97.5])
    assert abs(lo - ref[0]) < 0.1 * (ref[1] - ref[0]) and abs(hi - ref[1]) < 0.1 * (ref[1] - ref[0])
    assert float(r["p"]) == pytest.approx(stats.wilcoxon(d).pvalue, abs=6e-5)
    # the threshold put back to 2 prints an interval from 2 pairs: the check sees it
    monkeypatch.setattr(report_stats, "MIN_INTERVAL_N", 2)
    r = row(md_tables((report.build_report([str(tmp_path / "s2")], tmp_path / "r2") / "report.md").read_text()),
            title, "w16")
    assert r["95% CI of delta"].startswith("[")


def joint_bootstrap(a: np.ndarray, b: np.ndarray, joint: bool = True, seed: int = 1) -> np.ndarray:
    """Brute-force numpy percentile bootstrap of mean(a) - mean(b): items drawn jointly, or (the bug) apart."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (20000, len(a)))
    other = idx if joint else rng.integers(0, len(a), (20000, len(a)))
    return np.percentile(a[idx].mean(1) - b[other].mean(1), [2.5, 97.5])


def test_f51_paired_bootstrap_items(tmp_path: Path) -> None:
    """Two models on one test set: items paired by id (B saved in another order) and resampled jointly; the interval
    against a brute-force numpy bootstrap, far narrower than resampling the models apart; other ids refused."""
    rng = np.random.default_rng(3)
    ids = [f"img{i:04d}" for i in range(300)]
    hard = rng.random(300)  # per-item difficulty shared by both models: what pairing removes
    a = np.clip(hard + rng.normal(0, 0.05, 300), 0, 1)
    b = np.clip(hard + 0.02 + rng.normal(0, 0.05, 300), 0, 1)
    order = rng.permutation(300)
    for name, scores, item_ids in (("base", a, ids), ("new", b[order], [ids[i] for i in order])):
        write_run(tmp_path / name, float(scores.mean()), width(8), seed=0)
        write_per_item(tmp_path / name, "test", item_ids, {"iou": scores.tolist()})
        write_per_item(tmp_path / name, "rule", item_ids, {"iou": (scores * 0 + 0.5).tolist()})
    write_run(tmp_path / "other", 0.5, width(8), seed=0)
    write_per_item(tmp_path / "other", "test", ids[:-1] + ["img9999"], {"iou": a.tolist()})
    out = report.build_report([f"base={tmp_path / 'base'}", f"new={tmp_path / 'new'}",
                               f"other={tmp_path / 'other'}"], tmp_path / "rep", items=["test:rule"])
    tables = md_tables((out / "report.md").read_text())
    across = {r["A"]: r for r in next(v for k, v in tables.items() if k.startswith("Paired bootstrap over test items:"
                                                                                  " variant vs baseline base"))}
    r = across["new"]
    assert r["B"] == "base" and r["per-item scores"] == "test: iou" and r["items"] == "300"
    assert float(r["mean A"]) == pytest.approx(b.mean(), abs=6e-5) and float(r["mean B"]) == pytest.approx(a.mean(),
                                                                                                          abs=6e-5)
    assert float(r["mean diff A - B"]) == pytest.approx((b - a).mean(), abs=6e-5)
    lo, hi = (float(x) for x in r["95% interval of diff"].strip("[]").split(","))
    ref = joint_bootstrap(b, a)
    assert abs(lo - ref[0]) < 0.1 * (ref[1] - ref[0]) and abs(hi - ref[1]) < 0.1 * (ref[1] - ref[0])
    apart = joint_bootstrap(b, a, joint=False)  # the models resampled independently: the bug
    assert apart[1] - apart[0] > 3 * (hi - lo) and lo > 0 and "A higher" in r["note"]
    assert "different test items" in across["other"]["note"] and "img9999" in across["other"]["note"]
    within = next(v for k, v in tables.items() if "test vs rule within each run" in k)
    assert {w["A"] for w in within} == {"base: test", "new: test"}
    assert float(next(w for w in within if w["A"] == "new: test")["mean diff A - B"]) == pytest.approx(
        b.mean() - 0.5, abs=6e-5)
    with pytest.raises(ConfigError, match="different test items"):
        report_items.paired_bootstrap_items(ids, a, ids[:-1] + ["x"], b)
    small = report_items.paired_bootstrap_items(ids[:5], a[:5], ids[:5], b[:5])
    assert small.ci is None and small.diff == pytest.approx((a[:5] - b[:5]).mean())  # F51: no interval from 5 items
    with pytest.raises(ConfigError, match="expected A:B"):
        report.build_report([str(tmp_path / "base")], tmp_path / "r2", items=["test"])


def test_f49_report_prints_floors(tmp_path: Path) -> None:
    """Floor and reference rows under each headline metric (mean +- std over a variant's runs), the gap above the
    strongest floor in stds, a warning for a headline without floor, and tuned-on-test marks in md and html."""
    variants = {"w8": (width(8), 0.0), "w16": (width(16), 0.05)}
    values = make_sweep(tmp_path / "sw", variants, seeds=[0, 1, 2])
    nothing = {s: 0.40 + 0.013 * s ** 2 for s in range(3)}
    for (name, seed, _), _value in values.items():
        path = tmp_path / "sw" / f"{name}-s{seed}" / "results.json"
        res = json.loads(path.read_text())
        res["references"] = {METRIC: [
            reference_row("predict nothing", nothing[seed], "floor", "empty masks"),
            reference_row("prompt-blind", 0.6, "floor", "every object for every prompt"),
            reference_row("probe", 0.65 + (0.01 if name == "w16" else 0) + 0.001 * seed, "reference", "linear probe")]}
        if (name, seed) == ("w16", 0):
            res["splits"] = {"validation": "val2017", "test": "val2017", "tuned_on_test": True}
        path.write_text(json.dumps(res))
    out = report.build_report([str(tmp_path / "sw")])
    text = (out / "report.md").read_text()
    table = md_tables(text)[f"Metric {METRIC} (baseline w8)"]
    labels = [r["variant"] for r in table]
    assert labels == ["w8", "w16", "floor: predict nothing", "floor: prompt-blind", "reference: probe (w8)",
                      "reference: probe (w16)"]
    floor = row({"t": table}, "t", "floor: predict nothing")
    ref = np.array(list(nothing.values()))
    assert floor["n"] == "3" and float(floor["mean"].split()[0]) == pytest.approx(ref.mean(), abs=6e-5)
    assert float(floor["std"].split()[0]) == pytest.approx(ref.std(ddof=1), abs=6e-5)
    assert floor["note"] == "empty masks" and floor["mean"].endswith("[tuned on test]")  # w16-s0 shares it
    probe = row({"t": table}, "t", "reference: probe (w8)")
    assert float(probe["mean"]) == pytest.approx(0.651, abs=6e-5) and float(probe["std"]) == pytest.approx(0.001)
    assert row({"t": table}, "t", "reference: probe (w16)")["mean"] == "0.6610 [tuned on test]"
    w8 = np.array([values[("w8", s, None)] for s in range(3)])
    gap = row({"t": table}, "t", "w8")["above strongest floor"]
    assert gap == f"{w8.mean() - 0.6:+.4f} ({(w8.mean() - 0.6) / w8.std(ddof=1):.1f} std) over prompt-blind"
    # every number of the tuned run is marked, in md and html; the other variant's are not
    w16 = row({"t": table}, "t", "w16")
    assert w16["mean"].endswith("[tuned on test]") and w16["95% CI of delta"].endswith("[tuned on test]")
    assert not row({"t": table}, "t", "w8")["mean"].endswith("]")
    runs = {r["run"]: r for r in md_tables(text)["Runs"]}
    assert runs["w16-s0"][METRIC].endswith("[tuned on test]") and not runs["w16-s1"][METRIC].endswith("]")
    assert "⚠ tuned on test: w16-s0" in text
    page = _Tables()
    page.feed((out / "report.html").read_text())
    html_rows = [dict(zip(page.tables[0][0], r, strict=True)) for r in page.tables[0][1:]]
    assert html_rows == table
    # a headline without a floor row is flagged
    write_run(tmp_path / "bare", 0.7, width(8), seed=0, refs=[reference_row("probe", 0.6, "reference")])
    bare = (report.build_report([str(tmp_path / "bare")]) / "report.md").read_text()
    assert f"⚠ bare: headline {METRIC} has no floor row" in bare and "F49" in bare


def test_cv_tests_bring_their_references_items_and_tuned_marks(tmp_path: Path) -> None:
    """`lit-exp cv --test` writes the test's results.json and per-item scores under the fold run's eval/ folder: the
    report reads the floors, the per-item scores and the splits record from there."""
    make_sweep(tmp_path / "cv", {"base": (width(8), 0.0), "aug": (width(16), 0.03)}, seeds=[0], folds=2)
    sweep = json.loads((tmp_path / "cv" / "sweep.json").read_text())
    rng = np.random.default_rng(0)
    ids = [str(i) for i in range(40)]
    for entry in sweep["runs"]:
        ev = tmp_path / "cv" / entry["name"] / "eval" / "test-20260101-000000"
        ev.mkdir(parents=True)
        floor = {"test/map": [reference_row("chance", 0.25, "floor", "mean positive rate")]}
        splits = {"tuned_on_test": entry["name"] == "aug-s0-f1"}
        (ev / "results.json").write_text(json.dumps({"test": {"test/map": 0.5}, "references": floor, "splits": splits}))
        write_per_item(ev, "test", ids, {"ap": rng.random(40).tolist(), "floor/chance": [0.25] * 40})
        entry.update(test=f"{entry['name']}/eval/test-20260101-000000/results.json", test_metrics={"test/map": 0.5})
    (tmp_path / "cv" / "sweep.json").write_text(json.dumps(sweep))
    text = (report.build_report([str(tmp_path / "cv")], metrics=["test/map"]) / "report.md").read_text()
    tables = md_tables(text)
    assert row(tables, "Metric test/map (baseline base)", "floor: chance")["n"] == "2"
    items = next(v for k, v in tables.items() if k.startswith("Paired bootstrap over test items"))
    assert [(r["A"], r["B"], r["per-item scores"]) for r in items] == [("aug-s0-f0", "base-s0-f0", "test: ap"),
                                                                       ("aug-s0-f1", "base-s0-f1", "test: ap")]
    assert items[1]["mean A"].endswith("[tuned on test]") and not items[0]["mean A"].endswith("]")
    assert "floor/chance identical in both, left out" in text and "⚠ tuned on test: aug-s0-f1" in text
