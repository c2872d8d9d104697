"""`lit-exp quantize` on a toy run (one epoch of ``configs/toy/fit.yaml``): every mode runs the study's own test
loop on its own quantised copy (F43: each mode's test loss differs from fp32's); the fp32 row equals `lit-exp test`
of the same checkpoint; int8 writes a smaller file; ratios and deltas are against fp32; half modes really compute
in half precision and return float32."""
from __future__ import annotations

import copy
import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from lit_experiments.cli import main
from lit_experiments.deploy.quantize import MODES, quantize_model
from lit_experiments.studies.toy.module import ToyModule

from .test_export import train_toy_run

ACC = "test/acc"  # the toy headline
LOSS = "test/loss"  # the toy's mean cross-entropy: moves with every weight


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return train_toy_run(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def table(toy, tmp_path_factory) -> tuple[Path, dict]:
    config, ckpt = toy
    out = tmp_path_factory.mktemp("quantize")
    assert main(["quantize", "-c", str(config), "--ckpt", str(ckpt), "--mode", ",".join(MODES), "--repeats", "3",
                 "--threads", "1", "--out", str(out)]) == 0
    return out, json.loads((out / "quantize.json").read_text())


def test_one_row_per_mode_with_metrics_latency_size_memory_and_ratios(table):
    out, data = table
    rows = {r["mode"]: r for r in data["rows"]}
    assert list(rows) == list(MODES) and data["baseline"] == "fp32" and data["threads"] == 1
    assert data["study"] == "ToyModule"
    base = rows["fp32"]
    for row in rows.values():
        assert row["latency_ms"] > 0 and row["size_mb"] > 0 and row["peak_mem_mb"] >= 0 and row["threads"] == 1
        assert row["latency_ratio"] == pytest.approx(row["latency_ms"] / base["latency_ms"])
        assert row["size_ratio"] == pytest.approx(row["size_mb"] / base["size_mb"])
        assert row[f"{ACC}_delta"] == pytest.approx(row[ACC] - base[ACC])
        assert 0.0 <= row[ACC] <= 1.0
        assert row["latency_ms"] == pytest.approx(row["batch_ms"] / data["batch_size"])
    assert LOSS not in base  # the table shows the headline; every test metric is in all_metrics
    assert all(set(m) == {ACC, LOSS} for m in data["all_metrics"].values())
    assert "torch.get_num_threads() = 1" in data["latency"] and "RSS" in data["peak_memory"]
    with (out / "quantize.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["mode"] for r in csv_rows] == list(MODES) and list(csv_rows[0]) == list(data["rows"][0])
    md = (out / "quantize.md").read_text()
    assert all(re.search(rf"^\| {m} \|", md, re.M) for m in MODES) and ACC in md


def test_f43_every_mode_is_scored_on_its_own_quantised_copy(table):
    """Each mode's test loop runs on its quantised copy, not on the fp32 model: the test loss of every other
    mode differs from fp32's (by a little: the same trained weights, rounded)."""
    _, data = table
    scores = data["all_metrics"]
    fp32 = scores["fp32"][LOSS]
    for mode in MODES[1:]:
        assert scores[mode][LOSS] != fp32, mode
        assert scores[mode][LOSS] == pytest.approx(fp32, abs=0.05), mode
    assert len({scores[m][LOSS] for m in MODES}) == len(MODES)


def test_int8_weight_only_file_is_smaller_and_half_files_are_half(table):
    out, data = table
    rows = {r["mode"]: r for r in data["rows"]}
    sizes = {m: (out / "models" / f"{m}.pt").stat().st_size for m in MODES}
    assert sizes["int8_weight_only"] < sizes["fp32"] and sizes["int8_dynamic"] < sizes["fp32"]
    assert rows["int8_weight_only"]["size_mb"] == pytest.approx(sizes["int8_weight_only"] / 2**20)
    assert rows["fp16"]["size_ratio"] < 0.55 and rows["bf16"]["size_ratio"] < 0.55
    state = torch.load(out / "models" / "int8_weight_only.pt", weights_only=False)
    quantised = [k for k, v in state.items() if type(v).__module__.startswith("torchao")]
    assert {"encoder.0.weight", "encoder.4.weight", "head.weight"} <= set(quantised)  # every nn.Linear: int8
    assert "encoder.1.weight" not in quantised  # the BatchNorm stays float


def test_fp32_row_is_what_lit_exp_test_reports(toy, table, tmp_path, capsys):
    config, ckpt = toy
    _, data = table
    assert main(["test", "-c", str(config), "--ckpt_path", str(ckpt), f"--trainer.run_dir={tmp_path / 'r'}",
                 "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]) is None
    results = re.search(r"results\.json: (\S+)", capsys.readouterr().out).group(1)
    reference = json.loads(Path(results).read_text())["test"]
    fp32 = data["all_metrics"]["fp32"]
    for name in (ACC, LOSS):
        assert fp32[name] == pytest.approx(reference[name], abs=1e-6), name


def test_half_modes_compute_in_half_and_return_float32():
    torch.manual_seed(0)
    model = ToyModule(hidden=64, num_classes=3)
    x = torch.randn(16, 8)
    model.train()(x_batch := {"x": x})  # builds the lazy head; BatchNorm's running statistics move off 0 / 1
    model.eval()
    with torch.no_grad():
        ref = model(x_batch)
    for mode, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        half = quantize_model(copy.deepcopy(model), mode)
        assert half.head.weight.dtype == dtype and half.encoder[0].weight.dtype == dtype
        assert half.encoder[1].running_mean.dtype == dtype  # float32 buffers are cast too
        assert half.test_loss.mean_value.dtype != dtype  # the metrics are not
        with torch.no_grad():
            out = half(x_batch)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=0.1, rtol=0.1)
        assert not torch.equal(out, ref)  # really computed in half precision


def test_unknown_mode_is_a_clear_error(toy, capsys):
    config, ckpt = toy
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "-c", str(config), "--ckpt", str(ckpt), "--mode", "fp32,int4"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "'int4'" in err and "int8_weight_only" in err and "Traceback" not in err


def test_quantize_writes_its_own_folder_and_never_rewrites_the_runs_results_json(toy, tmp_path):
    """A run folder is a record: quantize writes `<run>/quantize` (then `quantize-2`, ...), never the run's
    results.json (it added a `quantize` section to it)."""
    config, ckpt = toy
    run = tmp_path / "run"
    shutil.copytree(ckpt.parents[1], run)  # the toy run's folder: config.yaml, checkpoints/, results.json
    before = (run / "results.json").read_bytes()
    assert json.loads(before)["study"] == "ToyModule"
    args = ["quantize", "-c", str(run / "config.yaml"), "--ckpt", str(run / "checkpoints" / ckpt.name),
            "--mode", "fp32,int8_weight_only", "--repeats", "1", "--threads", "1", "--metrics", LOSS]
    assert main(args) == 0 and main(args) == 0
    assert (run / "results.json").read_bytes() == before
    first = json.loads((run / "quantize" / "quantize.json").read_text())
    second = json.loads((run / "quantize-2" / "quantize.json").read_text())
    assert [r["mode"] for r in first["rows"]] == [r["mode"] for r in second["rows"]] == ["fp32", "int8_weight_only"]
    fp32, int8 = first["rows"]  # --metrics: the chosen metric and its delta against fp32
    assert ACC not in fp32 and int8[f"{LOSS}_delta"] == pytest.approx(int8[LOSS] - fp32[LOSS]) != 0

