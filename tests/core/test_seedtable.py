"""F50: demo headlines are mean +- std over seeds from results files, the README's tables are generated from them,
and `seed_everything` drives every seed a run derives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lit_experiments import demo, registry
from lit_experiments.core.errors import ConfigError
from lit_experiments.core.results import reference_row
from lit_experiments.core.seeding import run_seed
from lit_experiments.experiments import seedtable

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "docs" / "results" / "demo_seeds.json"

# fake runs: study -> seed -> (headline, {metric: [(name, kind, value)]}); None: the seed wrote no results.json
FAKE = {
    "alpha": {
        0: ({"test/acc": 0.91, "test/f1": 0.80}, {"test/acc": [("chance", "floor", 0.50), ("rule", "floor", 0.70),
                                                               ("probe", "reference", 0.85)],
                                                  "test/f1": [("predict_nothing", "floor", 0.0)]}),
        1: ({"test/acc": 0.88, "test/f1": 0.78}, {"test/acc": [("chance", "floor", 0.50), ("rule", "floor", 0.72),
                                                               ("probe", "reference", 0.83)],
                                                  "test/f1": [("predict_nothing", "floor", 0.0)]}),
        2: ({"test/acc": 0.93, "test/f1": 0.81}, {"test/acc": [("chance", "floor", 0.50), ("rule", "floor", 0.69),
                                                               ("probe", "reference", 0.86)],
                                                  "test/f1": [("predict_nothing", "floor", 0.0)]}),
    },
    "beta": {
        0: ({"test/miou": 0.60, "test/note": "text"}, {"test/miou": [("blind", "floor", 0.55)]}),
        1: None,
        2: ({"test/miou": 0.64}, {"test/miou": [("blind", "floor", 0.56)]}),
    },
}


def write_fake_runs(out: Path, fake: dict = FAKE) -> None:
    for study, by_seed in fake.items():
        for seed, run in by_seed.items():
            run_dir = seedtable.seed_dir(out, seed) / study
            run_dir.mkdir(parents=True, exist_ok=True)
            if run is None:
                continue
            headline, refs = run
            data = {"study": study, "seed": seed, "git_sha": "0123456789abcdef", "headline": headline,
                    "references": {m: [reference_row(n, v, k, f"{n} of {m}") for n, k, v in rows]
                                   for m, rows in refs.items()}}
            (run_dir / "results.json").write_text(json.dumps(data))


def test_f50_seed_table_numbers_from_results_files(tmp_path):
    """mean / std (ddof 1) / gap over the strongest floor against numpy, from the results files."""
    write_fake_runs(tmp_path)
    summary = seedtable.collect(tmp_path)
    alpha = summary["studies"]["alpha"]
    assert alpha["seeds"] == [0, 1, 2] and alpha["errors"] == {}
    acc = alpha["metrics"]["test/acc"]
    values = np.array([FAKE["alpha"][s][0]["test/acc"] for s in range(3)])
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(values.mean()) and acc["std"] == pytest.approx(
        values.std(ddof=1))
    refs = {r["name"]: r for r in acc["references"]}
    rule = np.array([FAKE["alpha"][s][1]["test/acc"][1][2] for s in range(3)])
    assert refs["rule"]["kind"] == "floor" and refs["rule"]["mean"] == pytest.approx(rule.mean())
    assert refs["rule"]["std"] == pytest.approx(rule.std(ddof=1))
    # the strongest floor is the rule (0.703), not chance, and never the reference row (the probe, 0.847)
    assert acc["strongest_floor"] == "rule"
    assert acc["gap_over_std"] == pytest.approx((values.mean() - rule.mean()) / values.std(ddof=1))
    f1 = alpha["metrics"]["test/f1"]
    assert f1["strongest_floor"] == "predict_nothing" and f1["references"][0]["std"] == 0.0
    # a seed without results: n counts the seeds that have the number, the failure is named; text is no metric
    beta = summary["studies"]["beta"]
    assert beta["errors"] == {"1": "no results.json"} and list(beta["metrics"]) == ["test/miou"]
    miou = beta["metrics"]["test/miou"]
    assert miou["n"] == 2 and miou["values"] == [0.60, None, 0.64]
    assert miou["std"] == pytest.approx(np.std([0.60, 0.64], ddof=1))
    table = seedtable.render_study(beta)
    assert "Seed 1 gave no numbers: no results.json." in table and "| `test/miou` | headline | 0.620 +- 0.028 | 0.600, -, 0.640 |" \
        in table
    json.dumps(summary, allow_nan=False)  # strict JSON: nothing non-finite


def test_f50_seed_table_one_seed_and_zero_std(tmp_path):
    """n = 1 has no std and no gap / std; a zero std gives the raw gap, never a division by zero."""
    one = seedtable.summarise_study("s", {0: {"headline": {"m": 0.7}, "references": {
        "m": [reference_row("f", 0.5)]}}})
    assert one["metrics"]["m"]["std"] is None and one["metrics"]["m"]["gap_over_std"] is None
    assert "+0.200 (n < 2)" in seedtable.render_study(one)
    flat = seedtable.summarise_study("s", {s: {"headline": {"m": 1.0}, "references": {"m": [reference_row("f", 0.5)]}}
                                           for s in (0, 1)})
    assert flat["metrics"]["m"]["std"] == 0.0 and "+0.500 (std 0)" in seedtable.render_study(flat)


README_TEMPLATE = """# t

intro

<!-- results:alpha -->
old text
<!-- /results:alpha -->

middle

<!-- results:beta -->
<!-- /results:beta -->

<!-- results:gamma -->
<!-- /results:gamma -->
end
"""


def test_f50_readme_blocks_generated_and_hand_edits_found(tmp_path):
    write_fake_runs(tmp_path / "runs")
    summary_path = tmp_path / "docs" / "demo_seeds.json"
    readme = tmp_path / "README.md"
    readme.write_text(README_TEMPLATE)
    assert seedtable.main(["--collect", str(tmp_path / "runs"), "--summary", str(summary_path), "--readme",
                           str(readme)]) == 0
    summary = seedtable.load_summary(summary_path)
    text = readme.read_text()
    assert seedtable.check_readme(text, summary) == []
    assert seedtable.main(["--summary", str(summary_path), "--readme", str(readme), "--check"]) == 0
    blocks = seedtable.readme_blocks(text)
    assert blocks["alpha"] == seedtable.render_study(summary["studies"]["alpha"])
    assert blocks["gamma"] == seedtable.placeholder("gamma")  # no runs yet: the line saying how to fill it
    assert "middle" in text and text.endswith("end\n") and "old text" not in text
    assert summary_path.with_suffix(".md").read_text() == seedtable.render_all(summary)
    # a number typed by hand into the block is found
    mean = f"{summary['studies']['alpha']['metrics']['test/acc']['mean']:.3f}"
    edited = text.replace(f"| {mean} +- ", "| 0.950 +- ", 1)
    assert edited != text
    assert seedtable.check_readme(edited, summary) == [
        "README: block results:alpha differs from the summary (hand-edited, or regenerate it)"]
    readme.write_text(edited)
    assert seedtable.main(["--summary", str(summary_path), "--readme", str(readme), "--check"]) == 1
    # a summarised study without a block, an unclosed marker
    assert any("no <!-- results:alpha --> block" in p for p in seedtable.check_readme("nothing\n", summary))
    with pytest.raises(ConfigError, match="results:beta --> has no closing"):
        seedtable.fill_readme("<!-- results:beta -->\nx\n", summary)


def test_f50_readme_numbers_match_results():
    """The README's result blocks are exactly what the committed summary generates (no hand-typed numbers), and
    every study with a demo has its block."""
    readme = (ROOT / "README.md").read_text()
    summary = seedtable.load_summary(SUMMARY)
    assert seedtable.check_readme(readme, summary, "README.md") == []
    blocks = seedtable.readme_blocks(readme)
    demos = {p.parent.name for p in (ROOT / "configs").glob("*/demo.yaml")}
    assert demos <= set(blocks), f"README.md lacks <!-- results:STUDY --> blocks for {sorted(demos - set(blocks))}"
    if SUMMARY.is_file():
        assert SUMMARY.with_suffix(".md").read_text() == seedtable.render_all(summary)


def test_f50_demo_seeds_runs_each_seed(tmp_path, monkeypatch):
    """`lit-exp demo --seeds` gives each run its seed (LightningCLI flag for a curriculum, the option of a demo
    tool), one run dir per seed, then the tables; plain `lit-exp demo` passes no seed. The child process is
    replaced by one writing a results.json whose headline depends on the seed it was given."""
    calls: list[list[str]] = []

    def fake_run(cmd, env=None, **kwargs):
        if cmd[0] == "git":  # the tree has uncommitted changes: the table says so
            return subprocess.CompletedProcess(cmd, 0, stdout=" M lit_experiments/x.py\n", stderr="")
        calls.append(cmd)
        if "report" in cmd:
            return subprocess.CompletedProcess(cmd, 0)
        if "--run_dir" in cmd:
            run_dir, seed = Path(cmd[cmd.index("--run_dir") + 1]), None
            if "--seed_everything" in cmd:
                seed = int(cmd[cmd.index("--seed_everything") + 1])
        else:
            run_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("--trainer.run_dir=")))
            seed = next((int(a.split("=", 1)[1]) for a in cmd if a.startswith("--seed_everything=")), None)
        run_dir.mkdir(parents=True)
        value = 0.5 + 0.1 * (seed or 0)
        (run_dir / "results.json").write_text(json.dumps({
            "headline": {"test/m": value}, "references": {"test/m": [reference_row("floor", 0.2)]}}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:satipatthana -->\n<!-- /results:satipatthana -->\n"
                      "<!-- results:multilabel -->\n<!-- /results:multilabel -->\n")
    out = tmp_path / "seeds"
    configs = str(ROOT / "configs")
    code = demo.main(["--configs", configs, "--seeds", "0", "1", "--only", "satipatthana", "multilabel", "--out",
                      str(out), "--summary", str(tmp_path / "s.json"), "--readme", str(readme)])
    assert code == 0
    tool = [c for c in calls if "multilabel-demo" in c]
    curriculum = [c for c in calls if "curriculum" in c]
    assert [c[c.index("--seed_everything") + 1] for c in tool] == ["0", "1"]
    assert [[a for a in c if a.startswith("--seed_everything=")] for c in curriculum] == [
        ["--seed_everything=0"], ["--seed_everything=1"]]
    assert {c[c.index("--run_dir") + 1] for c in tool} == {str(out / "seed0" / "multilabel"),
                                                          str(out / "seed1" / "multilabel")}
    # then `lit-exp report` over the curriculum demo's seed runs (a demo tool writes its own reports)
    reports = [c for c in calls if "report" in c]
    assert [c[4:] for c in reports] == [[str(out / "seed0" / "satipatthana"), str(out / "seed1" / "satipatthana"),
                                         "--out", str(out / "report" / "satipatthana")]]
    summary = seedtable.load_summary(tmp_path / "s.json")
    m = summary["studies"]["satipatthana"]["metrics"]["test/m"]
    assert m["values"] == pytest.approx([0.5, 0.6]) and m["std"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert seedtable.check_readme(readme.read_text(), summary) == []
    assert summary["studies"]["satipatthana"]["dirty"] is True and "unknown with uncommitted changes" in \
        readme.read_text()
    assert (out / "demo_seeds.md").read_text() == seedtable.render_all(seedtable.load_summary(out / "demo_seeds.json"))
    # the same out again would read older runs: refused
    with pytest.raises(SystemExit):
        demo.main(["--configs", configs, "--seeds", "0", "--only", "satipatthana", "--out", str(out)])
    calls.clear()
    assert demo.main(["--configs", configs, "--only", "satipatthana", "--out", str(tmp_path / "plain")]) == 0
    assert len(calls) == 1 and not any("seed_everything" in a for a in calls[0])  # and no report


def test_f50_every_demo_tool_takes_seed_everything():
    """Every study's demo tool has the --seed_everything option `lit-exp demo --seeds` passes (checked by the
    command before it starts)."""
    demos = demo.find_demos(ROOT / "configs")
    assert any(registry.demo_tool(d.parent.name) for d in demos)
    assert demo.tools_without_seed_option(demos) == []


def test_f50_seed_everything_drives_run_seed(monkeypatch):
    """run_seed: another seed_everything or purpose gives another seed, a YAML-pinned value wins; pure."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test
    monkeypatch.delenv("LIT_EXP_RUN_SEED", raising=False)  # no run's seed recorded: PL_GLOBAL_SEED decides
    seeds = {}
    for base in (0, 1, 2):
        L.seed_everything(base, verbose=False)
        assert os.environ["PL_GLOBAL_SEED"] == str(base)
        for purpose in ("data", "sampler", "prompts", "standin"):
            state = torch.random.get_rng_state()
            seeds[base, purpose] = run_seed(None, purpose)
            assert torch.equal(state, torch.random.get_rng_state())  # moves no RNG
            assert run_seed(7, purpose) == 7  # pinned in the YAML: used as is
            assert run_seed(None, purpose) == seeds[base, purpose]  # deterministic
    assert len(set(seeds.values())) == len(seeds), "two (seed_everything, purpose) pairs share a seed"
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert run_seed(None, "data") == seeds[0, "data"]  # unset: as seed 0


def test_f50_seed_everything_drives_data_order(monkeypatch):
    """Through a real datamodule and the core train loader: another seed_everything, another data order; the same
    seed, the same order (a loader with its own fixed generator would fail here)."""
    from lit_experiments.studies.toy.datamodule import ToyDataModule

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test

    def first_epoch(seed: int) -> list[float]:
        L.seed_everything(seed, verbose=False)
        dm = ToyDataModule(n_train=64, batch_size=64)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))["x"][:, 0].tolist()

    a, b, again = first_epoch(0), first_epoch(1), first_epoch(0)
    assert a == again and a != b and sorted(a) == sorted(b)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_f49_a_demo_headline_without_its_floor_fails_the_demo(tmp_path, monkeypatch):
    """`lit-exp demo` checks every study's results.json with core.results.check_floors: a headline metric with no
    floor row makes that demo FAILED (and the command exit 1), with the metric named."""
    def fake_run(cmd, env=None, **kwargs):
        run_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("--trainer.run_dir=")))
        run_dir.mkdir(parents=True)
        refs = {"test/a": [reference_row("chance", 0.5)], "test/b": [reference_row("probe", 0.6, "reference")]}
        (run_dir / "results.json").write_text(json.dumps({"headline": {"test/a": 0.9, "test/b": 0.8},
                                                          "references": refs}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    rows = [demo.run_demo(ROOT / "configs" / "satipatthana" / "demo.yaml", tmp_path, [])]
    assert rows[0]["ok"] is False and rows[0]["problems"] == [
        "headline test/b has no floor row in results.json['references']"]
    assert "FAILED" in demo.format_table(rows)
