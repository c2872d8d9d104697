"""`lit-exp report`: numbers against numpy / scipy, config diff flags (F29), fold pairing (F45), statistics that
fit n (F51), floors (F49), HTML in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from lit_experiments import cli
from lit_experiments.core import folds as folds_mod
from lit_experiments.core.errors import ConfigError
from lit_experiments.experiments import report, report_html, report_stats

METRIC = "toy/test/acc"


FLOOR = [{"name": "chance", "kind": "floor", "value": 0.5, "what": "uniform random labels"}]


def write_run(run_dir: Path, value: float | None, cfg: dict, seed: int, fold: int | None = None,
              fingerprint: str | None = None, status: str = "done", curve: bool = False,
              refs: list[dict] | None = None, extra: dict | None = None) -> None:
    run_dir.mkdir(parents=True)
    cfg = {"seed_everything": seed, "trainer": {"run_dir": str(run_dir), "max_epochs": 30},
           "model": {"class_path": "toy.Module", "init_args": {"width": 8, "lr": 0.001}},
           "data": {"init_args": {"batch_size": 16}}, **{k: v for k, v in cfg.items() if k != "_overrides"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = {"run_name": run_dir.name, "study": "ToyModule", "status": status, "seed": seed,
           "stages": {"fit": {"status": status, "metrics": {"toy/val/acc": value}, "epochs": 3, "steps": 30}},
           "test": {METRIC: value, "toy/test/loss": 1 - (value or 0)}, "headline": {METRIC: value},
           "references": {METRIC: FLOOR if refs is None else refs}, **(extra or {})}
    if fold is not None:
        res["folds"] = {"file": "folds.json", "fingerprint": fingerprint, "index": fold, "n_folds": 5}
    (run_dir / "results.json").write_text(json.dumps(res))
    if curve:
        stage = run_dir / "stages" / "00_fit"
        stage.mkdir(parents=True)
        rows = ["epoch,step,toy/val/acc"] + [f"{e},{10 * e + 9},{value * (e + 1) / 3:.6f}" for e in range(3)]
        (stage / "metrics.csv").write_text("\n".join(rows) + "\n")
        (run_dir / "figures" / "fit").mkdir(parents=True)
        import matplotlib.pyplot as plt

        plt.imsave(run_dir / "figures" / "fit" / "val_masks.png", np.full((8, 8), value))


def make_sweep(root: Path, variants: dict[str, tuple[dict, float]], seeds: list[int], folds: int | None = None,
               fingerprints: dict[str, str] | None = None, grid: dict | None = None, curve: bool = False,
               rng_seed: int = 7) -> dict[tuple[str, int, int | None], float]:
    """A sweep dir with sweep.json; returns the value of every run by (variant, seed, fold)."""
    rng = np.random.default_rng(rng_seed)
    runs, values = [], {}
    if folds is not None:  # a real folds file (40 samples) beside the runs: the corrected t-test reads its sizes
        root.mkdir(parents=True)
        drawn = folds_mod.ensure_folds(root / "folds.json", 40, None, folds, 0)
        fingerprints = {n: (fingerprints or {}).get(n, drawn["fingerprint"]) for n in variants}
    for seed in seeds:
        for fold in ([None] if folds is None else range(folds)):
            base = 0.7 + rng.normal(0, 0.03)
            for name, (cfg, delta) in variants.items():
                value = float(base + delta + rng.normal(0, 0.01))
                run_name = f"{name}-s{seed}" + ("" if fold is None else f"-f{fold}")
                fp = (fingerprints or {}).get(name, "fp-same")
                write_run(root / run_name, value, cfg, seed, fold, fp if fold is not None else None, curve=curve)
                values[(name, seed, fold)] = value
                runs.append({"name": run_name, "variant": name, "overrides": {}, "seed": seed, "fold": fold,
                             "status": "done", "results": f"{run_name}/results.json", "run_dir": run_name,
                             "error": None})
    grid = grid if grid is not None else {"model.init_args.width": [8, 16, 32]}
    for r in runs:
        r["overrides"] = {k: v for k, v in variants[r["variant"]][0].get("_overrides", {}).items()}
    (root / "sweep.json").write_text(json.dumps({"kind": "sweep" if folds is None else "cv", "base": ["b.yaml"],
                                                 "grid": grid, "variants": list(variants), "seeds": seeds,
                                                 "runs": runs}))
    return values


def width(w: int, **extra) -> dict:
    model = {"class_path": "toy.Module", "init_args": {"width": w, "lr": 0.001}}
    return {"model": model, "_overrides": {"model.init_args.width": w}, **extra}


def md_tables(text: str) -> dict[str, list[dict[str, str]]]:
    tables, title, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            title, header = line[3:], None
        elif line.startswith("|") and title and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if header is None:
                header = cells
                tables[title] = []
            else:
                tables[title].append(dict(zip(header, cells, strict=True)))
    return tables


def row(tables: dict, title: str, variant: str) -> dict[str, str]:
    return next(r for r in tables[title] if r.get("variant") == variant)


def test_sweep_report_numbers_match_numpy_and_scipy(tmp_path: Path) -> None:
    variants = {"w8": (width(8), 0.0), "w16": (width(16), 0.05), "w32": (width(32), -0.02)}
    values = make_sweep(tmp_path / "sw", variants, seeds=[0, 1, 2], curve=True)
    assert report.main([str(tmp_path / "sw")]) == 0
    out = tmp_path / "sw" / "report"
    tables = md_tables((out / "report.md").read_text())
    title = f"Metric {METRIC} (baseline w8)"
    base = np.array([values[("w8", s, None)] for s in range(3)])
    for name in variants:
        v = np.array([values[(name, s, None)] for s in range(3)])
        r = row(tables, title, name)
        assert r["n"] == "3" and r["variance from"] == "seeds"
        assert float(r["mean"]) == pytest.approx(v.mean(), abs=6e-5)
        assert float(r["std"]) == pytest.approx(v.std(ddof=1), abs=6e-5)
        if name == "w8":
            continue
        d = v - base
        assert float(r["delta"]) == pytest.approx(d.mean(), abs=6e-5)
        assert float(r["delta %"]) == pytest.approx(100 * d.mean() / base.mean(), abs=6e-3)
        w = stats.wilcoxon(d)
        assert r["test"] == report_stats.WILCOXON
        assert float(r["statistic"]) == pytest.approx(w.statistic, abs=6e-5)
        assert float(r["p"]) == pytest.approx(w.pvalue, abs=6e-5)
        assert "too small" in r["note"] and r["pairs"] == "3"
        assert r["95% CI of delta"] == "descriptive, n = 3"  # F51: no interval from 3 pairs
    cfg = tables["Config differences between variants"]
    assert [c["key"] for c in cfg] == ["model.init_args.width"] and cfg[0]["studied factor"] == "yes"
    assert "⚠" not in (out / "report.md").read_text().split("## ")[0]
    assert (out / "figures" / "curves_toy_val_acc.png").stat().st_size > 1000
    assert (out / "figures" / f"metric_{report_html.slug(METRIC)}.png").is_file()
    assert (out / "runs" / "w16-s1" / "fit" / "val_masks.png").is_file()
    assert "runs/w16-s1/fit/val_masks.png" in (out / "report.md").read_text()


def corrected_t_by_hand(d: np.ndarray, folds_file: Path) -> tuple[float, float, float]:
    """t, two-sided p and half-width of the 95% interval of Nadeau and Bengio (2003), from the folds file."""
    folds = json.loads(folds_file.read_text())["folds"]
    ratio = np.mean([len(f["val"]) for f in folds]) / np.mean([len(f["train"]) for f in folds])
    se = np.sqrt((1 / len(d) + ratio) * d.var(ddof=1))
    t = d.mean() / se
    return t, 2 * stats.t.sf(abs(t), len(d) - 1), stats.t.ppf(0.975, len(d) - 1) * se


def test_f29_report_flags_a_difference_besides_the_studied_factor(tmp_path: Path, monkeypatch) -> None:
    variants = {"w8": (width(8), 0.0), "w16": (width(16, trainer={"max_epochs": 20}), 0.05)}
    make_sweep(tmp_path / "sw", variants, seeds=[0, 1], grid={"model.init_args.width": [8, 16]})
    text = (report.build_report([str(tmp_path / "sw")]) / "report.md").read_text()
    assert "⚠ differs besides the studied factor: trainer.max_epochs (w8: 30, w16: 20) [epochs/steps]" in text
    cfg = {c["key"]: c for c in md_tables(text)["Config differences between variants"]}
    assert cfg["trainer.max_epochs"]["studied factor"] == "⚠ no" and cfg["model.init_args.width"]["studied factor"] == "yes"
    assert not any(k.startswith(("trainer.run_dir", "seed_everything")) for k in cfg)
    # the flag comes from the product's own factor check: a check that calls everything studied loses it
    monkeypatch.setattr(report, "is_studied", lambda key, factors: True)
    text = (report.build_report([str(tmp_path / "sw")], tmp_path / "r2") / "report.md").read_text()
    assert "differs besides the studied factor" not in text


def test_f45_runs_with_different_folds_are_not_paired_and_the_report_says_why(tmp_path: Path) -> None:
    variants = {"base": (width(8), 0.0), "aug": (width(16), 0.03)}
    make_sweep(tmp_path / "cv", variants, seeds=[0], folds=5, fingerprints={"base": "aaa111", "aug": "bbb222"})
    text = (report.build_report([str(tmp_path / "cv")]) / "report.md").read_text()
    r = row(md_tables(text), f"Metric {METRIC} (baseline base)", "aug")
    assert r["pairs"] == "0" and r["p"] == "-" and r["95% CI of delta"] == "-"
    assert "folds fingerprint differs" in r["note"] and "F45" in r["note"] and "aaa111" in r["note"]
    assert "⚠ differs besides the studied factor: folds.fingerprint" in text
    assert r["variance from"] == "folds"


def test_failed_and_missing_runs_are_listed_and_the_report_still_builds(tmp_path: Path) -> None:
    variants = {"w8": (width(8), 0.0), "w16": (width(16), 0.05)}
    make_sweep(tmp_path / "sw", variants, seeds=[0, 1, 2])
    sweep = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    shutil.rmtree(tmp_path / "sw" / "w16-s1")
    sweep["runs"][3].update(status="failed", error="RuntimeError: boom")  # w16-s1
    (tmp_path / "sw" / "w8-s2" / "results.json").unlink()
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps(sweep))
    text = (report.build_report([str(tmp_path / "sw")]) / "report.md").read_text()
    tables = md_tables(text)
    bad = {r["run"]: r for r in tables["Failed or missing runs"]}
    assert bad["w16-s1"]["status"] == "failed" and bad["w16-s1"]["error"] == "RuntimeError: boom"
    assert bad["w8-s2"]["status"] == "missing" and "results.json does not exist" in bad["w8-s2"]["error"]
    r = row(tables, f"Metric {METRIC} (baseline w8)", "w16")
    assert r["n"] == "2" and r["pairs"] == "1" and "too few pairs" in r["note"]


def test_a_dir_without_results_or_sweep_is_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty holds neither results.json nor sweep.json"):
        report.main([str(tmp_path / "empty")])
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(tmp_path / "nope")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope does not exist" in err and "Traceback" not in err
    make_sweep(tmp_path / "sw", {"a": (width(8), 0.0)}, seeds=[0])
    with pytest.raises(ConfigError, match="--baseline 'zz' is not a variant"):
        report.main([str(tmp_path / "sw"), "--baseline", "zz"])


def test_wandb_tables_only_when_wandb_is_on(monkeypatch) -> None:
    logged = []
    fake = types.SimpleNamespace(run=types.SimpleNamespace(log=logged.append),
                                 Table=lambda columns, data: ("table", columns, data))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tables = [report.Table("Metric x", ["variant", "mean"], [["a", "0.5000"]])]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert report_html.log_wandb(tables) is False and logged == []
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report_html.log_wandb(tables) is True
    assert logged == [{"report/Metric_x": ("table", ["variant", "mean"], [["a", "0.5000"]])}]


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.imgs: list[str] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(dict(attrs)["src"])
        elif tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_report_html_opens_in_chromium_with_the_numbers_of_report_md(tmp_path: Path) -> None:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    if browser is None:
        pytest.skip("no chromium binary (apt-get install -y chromium; .ci/run installs it)")
    variants = {"w8": (width(8), 0.0), "w16": (width(16, trainer={"max_epochs": 20}), 0.05)}
    make_sweep(tmp_path / "sw", variants, seeds=[0, 1, 2], curve=True)
    out = report.build_report([str(tmp_path / "sw")])
    page = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    res = subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", page],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "Uncaught" not in dom.stderr and "Failed to load" not in dom.stderr
    parsed = _Tables()
    parsed.feed(dom.stdout)
    md = md_tables((out / "report.md").read_text())
    assert len(parsed.tables) == len(md) >= 3
    for html_rows, (title, md_rows) in zip(parsed.tables, md.items(), strict=True):
        header = html_rows[0]
        assert [dict(zip(header, r, strict=True)) for r in html_rows[1:]] == md_rows, title
    assert parsed.imgs and all((out / src).is_file() for src in parsed.imgs)
    assert parsed.links and all((out / href).is_file() for href in parsed.links)


def test_report_over_a_toy_sweep_run_by_lit_exp_sweep(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).resolve().parents[2] / "configs" / "toy" / "fit.yaml")
    cli.main(["sweep", "-c", config, "--grid", "data.init_args.batch_size=16,32", "--grid", "trainer.max_epochs=1",
              "--seeds", "0,1", "--out", "sw"])
    sweep = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert report.main(["sw", "--metric", "val/loss", "--baseline", sweep["variants"][1]]) == 0
    text = (tmp_path / "sw" / "report" / "report.md").read_text()
    values = {}
    for r in sweep["runs"]:
        res = json.loads((tmp_path / "sw" / r["results"]).read_text())
        values[(r["variant"], r["seed"])] = res["final"]["val/loss"]
    base, other = sweep["variants"][1], sweep["variants"][0]
    t = md_tables(text)[f"Metric val/loss (baseline {base})"]
    b = np.array([values[(base, s)] for s in (0, 1)])
    v = np.array([values[(other, s)] for s in (0, 1)])
    r = next(x for x in t if x["variant"] == other)
    assert float(r["mean"]) == pytest.approx(v.mean(), abs=6e-5)
    assert float(r["std"]) == pytest.approx(v.std(ddof=1), abs=6e-5)
    assert float(r["delta"]) == pytest.approx((v - b).mean(), abs=6e-5) and r["variance from"] == "seeds"
    assert float(r["p"]) == pytest.approx(stats.wilcoxon(v - b).pvalue, abs=6e-5)
    cfg = md_tables(text)["Config differences between variants"]
    assert [(c["key"], c["studied factor"]) for c in cfg] == [("data.init_args.batch_size", "yes")]
    assert (tmp_path / "sw" / "report" / "figures" / "curves_val_loss.png").is_file()


def test_list_variants_study_the_keys_of_their_files(tmp_path: Path) -> None:
    delta = tmp_path / "wide.yaml"
    delta.write_text("model:\n  init_args:\n    width: 16\ntrainer:\n  max_epochs: 20\n")
    assert report.list_factors({"config": str(delta)}, tmp_path) == {
        "model.init_args.width", "trainer.max_epochs"}
    with pytest.raises(ConfigError, match="missing.yaml is not readable"):
        report.list_factors({"config": str(tmp_path / "missing.yaml")}, tmp_path)


def test_report_over_toy_cv_runs_matches_cv_json_and_refuses_other_folds(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).resolve().parents[2] / "configs" / "toy" / "fit.yaml")
    common = ["-c", config, "--grid", "trainer.max_epochs=1", "--folds", "3", "--test", "none"]
    cli.main(["cv", *common, "--grid", "data.init_args.batch_size=16,32", "--out", "cv"])
    cli.main(["cv", *common, "--grid", "data.init_args.batch_size=32", "--fold_seed", "1", "--out", "cv2"])
    assert report.main(["cv", "other_folds=cv2", "--metric", "val/loss"]) == 0
    text = (tmp_path / "cv" / "report" / "report.md").read_text()
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    sweep = json.loads((tmp_path / "cv" / "sweep.json").read_text())
    base, b32 = sweep["variants"]
    t = {r["variant"]: r for r in md_tables(text)[f"Metric val/loss (baseline {base})"]}
    for v in (base, b32):
        assert float(t[v]["mean"]) == pytest.approx(cv["variants"][v]["val/loss"]["mean"], abs=6e-5)
        assert t[v]["variance from"] == "folds" and t[v]["n"] == "3"
    vals = {(r["variant"], r["fold"]): json.loads((tmp_path / "cv" / r["results"]).read_text())["final"]["val/loss"]
            for r in sweep["runs"]}
    d = np.array([vals[(b32, f)] - vals[(base, f)] for f in range(3)])
    assert t[b32]["pairs"] == "3" and float(t[b32]["delta"]) == pytest.approx(d.mean(), abs=6e-5)
    assert t[b32]["test"] == report_stats.CORRECTED_T and t[b32]["95% CI of delta"] == "descriptive, n = 3"
    stat, p, _ = corrected_t_by_hand(d, tmp_path / "cv" / "folds.json")
    assert float(t[b32]["statistic"]) == pytest.approx(stat, abs=6e-5)
    assert float(t[b32]["p"]) == pytest.approx(p, abs=6e-5)
    assert t["other_folds"]["pairs"] == "0" and "folds fingerprint differs" in t["other_folds"]["note"]
    assert "⚠ differs besides the studied factor: folds.fingerprint" in text


def test_f29_a_switched_part_class_implies_its_own_arguments_but_not_other_keys(tmp_path: Path, monkeypatch) -> None:
    """A variant that swaps a part's class (MLP -> AGCH head) brings that class's own arguments: they are part of
    the studied switch; a different epoch count beside it is still flagged."""
    def head(cls: str, **args) -> dict:
        return {"model": {"class_path": "M", "init_args": {"head": {"class_path": cls, "init_args": args}}},
                "trainer": {"max_epochs": 20}}

    agch = head("AGCH", dim=512, magnitude_hidden=16)
    agch["trainer"]["max_epochs"] = 30
    make_sweep(tmp_path / "sw", {"mlp": (head("MLP", hidden=[512]), 0.0), "agch": (agch, -0.1)}, seeds=[0],
               grid={"model.init_args.head.class_path": ["MLP", "AGCH"]})
    text = (report.build_report([str(tmp_path / "sw")]) / "report.md").read_text()
    cfg = {c["key"]: c for c in md_tables(text)["Config differences between variants"]}
    assert cfg["model.init_args.head.init_args.magnitude_hidden"]["studied factor"] == "yes"
    assert cfg["model.init_args.head.init_args.hidden"]["studied factor"] == "yes"
    assert cfg["trainer.max_epochs"]["studied factor"] == "⚠ no"
    assert "⚠ differs besides the studied factor: trainer.max_epochs" in text
    assert "magnitude_hidden (" not in text.split("## ")[0]  # no warning line for the implied argument


# ------------------------------------------------------------------ a report that cannot mislead (issue 25, item 2)
def test_a_corrupt_results_json_is_listed_as_unreadable_and_the_rest_reported(tmp_path: Path) -> None:
    make_sweep(tmp_path / "sw", {"w8": (width(8), 0.0), "w16": (width(16), 0.05)}, seeds=[0, 1, 2])
    bad = tmp_path / "sw" / "w16-s1" / "results.json"
    bad.write_text(bad.read_text()[:30])
    text = (report.build_report([str(tmp_path / "sw")]) / "report.md").read_text()
    tables = md_tables(text)
    failed = {r["run"]: r for r in tables["Failed or missing runs"]}
    assert failed["w16-s1"]["status"] == "unreadable" and str(bad) in failed["w16-s1"]["error"]
    rows = {r["variant"]: r for r in tables[f"Metric {METRIC} (baseline w8)"]}
    assert rows["w8"]["n"] == "3" and rows["w16"]["n"] == "2"


def test_a_half_finished_sweep_lists_its_unfinished_runs_and_flags_nothing_false(tmp_path: Path) -> None:
    make_sweep(tmp_path / "sw", {"w8": (width(8), 0.0), "w16": (width(16), 0.05)}, seeds=[0, 1])
    shutil.rmtree(tmp_path / "sw" / "w16-s1")  # pending: no folder yet
    (tmp_path / "sw" / "w8-s1" / "config.yaml").unlink()
    (tmp_path / "sw" / "w8-s1" / "results.json").unlink()
    text = (report.build_report([str(tmp_path / "sw")]) / "report.md").read_text()
    assert "differs besides the studied factor" not in text and "differs within variant" not in text
    missing = {r["run"] for r in md_tables(text)["Failed or missing runs"]}
    assert missing == {"w16-s1", "w8-s1"}


def test_a_metric_no_run_has_is_an_error_naming_the_metrics_that_exist(tmp_path: Path, capsys) -> None:
    make_sweep(tmp_path / "sw", {"w8": (width(8), 0.0), "w16": (width(16), 0.05)}, seeds=[0, 1])
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(tmp_path / "sw"), "--metric", "toy/test/accc"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "toy/test/accc" in err and "did you mean toy/test/acc" in err
    assert "Traceback" not in err and not (tmp_path / "sw" / "report").exists()


def test_runs_of_different_studies_are_refused(tmp_path: Path) -> None:
    write_run(tmp_path / "a", 0.7, {}, seed=0)
    write_run(tmp_path / "b", 0.6, {"model": {"class_path": "other.Study", "init_args": {"width": 8}}}, seed=0)
    with pytest.raises(ConfigError, match="different studies.*toy.Module.*other.Study"):
        report.build_report([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}"])


def test_a_variant_that_differs_besides_the_studied_factor_is_not_paired(tmp_path: Path) -> None:
    longer = width(16, trainer={"max_epochs": 60})
    make_sweep(tmp_path / "sw", {"w8": (width(8), 0.0), "w16": (longer, 0.05), "w32": (width(32), 0.02)},
               seeds=list(range(10)))
    text = (report.build_report([str(tmp_path / "sw")]) / "report.md").read_text()
    rows = {r["variant"]: r for r in md_tables(text)[f"Metric {METRIC} (baseline w8)"]}
    assert rows["w16"]["delta"] == "-" and rows["w16"]["p"] == "-"
    assert "not paired with w8: differs besides the studied factor in trainer.max_epochs" in rows["w16"]["note"]
    assert rows["w32"]["delta"] != "-" and rows["w32"]["pairs"] == "10"  # a fair variant is still compared


def test_after_cv_the_fold_comparison_is_the_default(tmp_path: Path) -> None:
    make_sweep(tmp_path / "cv", {"w8": (width(8), 0.0), "w16": (width(16), 0.05)}, seeds=[0], folds=3)
    for run in (tmp_path / "cv").glob("w*/results.json"):
        data = json.loads(run.read_text())
        data["final"] = {"toy/val/acc": data["test"][METRIC]}
        run.write_text(json.dumps(data))
    text = (report.build_report([str(tmp_path / "cv")]) / "report.md").read_text()
    titles = [line[3:] for line in text.splitlines() if line.startswith("## Metric ")]
    assert titles[0] == "Metric toy/val/acc (baseline w8)"
    rows = {r["variant"]: r for r in md_tables(text)[titles[0]]}
    assert rows["w16"]["variance from"] == "folds" and rows["w16"]["pairs"] == "3"


def test_every_figure_of_a_run_is_linked(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    make_sweep(tmp_path / "sw", {"w8": (width(8), 0.0), "w16": (width(16), 0.05)}, seeds=[0])
    (tmp_path / "sw" / "w8-s0" / "tables").mkdir()
    plt.imsave(tmp_path / "sw" / "w8-s0" / "tables" / "per_class.png", np.zeros((4, 4)))
    out = report.build_report([str(tmp_path / "sw")])
    assert (out / "runs" / "w8-s0" / "tables" / "per_class.png").is_file()
    assert "(runs/w8-s0/tables/per_class.png)" in (out / "report.md").read_text()
