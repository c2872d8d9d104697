"""`lit-exp quantize` on a tiny distill student: every mode runs the study's own test loop; the fp32 row equals
`lit-exp test` of the same checkpoint; int8 weight-only writes a smaller file; ratios and deltas are against fp32;
half modes really compute in half precision and return float32."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from lit_experiments.cli import main
from lit_experiments.deploy.quantize import MODES, quantize_model
from lit_experiments.studies.distill.student import OUTPUT_KEYS, tiny_student

from .test_export import write_tiny_distill

MIOU = "test/miou_pos"  # the distill headline: the student's mIoU on positive units


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_distill(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def table(tiny, tmp_path_factory) -> tuple[Path, dict]:
    config, ckpt = tiny
    out = tmp_path_factory.mktemp("quantize")
    assert main(["quantize", "-c", str(config), "--ckpt", str(ckpt), "--mode", ",".join(MODES), "--repeats", "3",
                 "--threads", "1", "--out", str(out)]) == 0
    return out, json.loads((out / "quantize.json").read_text())


def test_one_row_per_mode_with_metrics_latency_size_memory_and_ratios(table):
    out, data = table
    rows = {r["mode"]: r for r in data["rows"]}
    assert list(rows) == list(MODES) and data["baseline"] == "fp32" and data["threads"] == 1
    base = rows["fp32"]
    for row in rows.values():
        assert row["latency_ms"] > 0 and row["size_mb"] > 0 and row["peak_mem_mb"] >= 0 and row["threads"] == 1
        assert row["latency_ratio"] == pytest.approx(row["latency_ms"] / base["latency_ms"])
        assert row["size_ratio"] == pytest.approx(row["size_mb"] / base["size_mb"])
        assert row[f"{MIOU}_delta"] == pytest.approx(row[MIOU] - base[MIOU])
        assert 0.0 <= row[MIOU] <= 1.0
        assert row["latency_ms"] == pytest.approx(row["batch_ms"] / data["batch_size"])
    assert "torch.get_num_threads() = 1" in data["latency"] and "RSS" in data["peak_memory"]
    with (out / "quantize.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["mode"] for r in csv_rows] == list(MODES) and list(csv_rows[0]) == list(data["rows"][0])
    md = (out / "quantize.md").read_text()
    assert all(re.search(rf"^\| {m} \|", md, re.M) for m in MODES) and MIOU in md


def test_int8_weight_only_file_is_smaller_and_half_files_are_half(table):
    out, data = table
    rows = {r["mode"]: r for r in data["rows"]}
    sizes = {m: (out / "models" / f"{m}.pt").stat().st_size for m in MODES}
    assert sizes["int8_weight_only"] < sizes["fp32"] and sizes["int8_dynamic"] < sizes["fp32"]
    assert rows["int8_weight_only"]["size_mb"] == pytest.approx(sizes["int8_weight_only"] / 2**20)
    assert rows["fp16"]["size_ratio"] < 0.55 and rows["bf16"]["size_ratio"] < 0.55
    state = torch.load(out / "models" / "int8_weight_only.pt", weights_only=False)
    quantised = [k for k, v in state.items() if type(v).__module__.startswith("torchao")]
    assert "student.decoder.film.weight" in quantised  # an nn.Linear of the decoder holds int8 weights


def test_fp32_row_is_what_lit_exp_test_reports(tiny, table, tmp_path, capsys):
    config, ckpt = tiny
    _, data = table
    assert main(["test", "-c", str(config), "--ckpt_path", str(ckpt), f"--trainer.run_dir={tmp_path / 'r'}",
                 "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"]) is None
    results = re.search(r"results\.json: (\S+)", capsys.readouterr().out).group(1)
    reference = json.loads(Path(results).read_text())["test"]
    fp32 = data["all_metrics"]["fp32"]
    for name in (MIOU, "test/student/presence_f1", "test/student_raw/miou"):
        assert fp32[name] == pytest.approx(reference[name], abs=1e-6), name


def test_half_modes_compute_in_half_and_return_float32():
    torch.manual_seed(0)
    model = tiny_student(image_size=32, dim=16, num_queries=4, decoder_layers=1, heads=2).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    ids = torch.zeros(2, 32, dtype=torch.long)
    ids[:, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad():
        ref = model(images, ids)
    for mode, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        import copy

        half = quantize_model(copy.deepcopy(model), mode)
        assert half.decoder.film.weight.dtype == dtype and half.image_encoder.fuse.weight.dtype == dtype
        with torch.no_grad():
            out = half(images, ids)
        for key in OUTPUT_KEYS:
            assert out[key].dtype == torch.float32
            torch.testing.assert_close(out[key], ref[key], atol=0.1, rtol=0.1)
            assert not torch.equal(out[key], ref[key])  # really computed in half precision


def test_unknown_mode_is_a_clear_error(tiny, capsys):
    config, ckpt = tiny
    with pytest.raises(SystemExit) as exc:
        main(["quantize", "-c", str(config), "--ckpt", str(ckpt), "--mode", "fp32,int4"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "'int4'" in err and "int8_weight_only" in err and "Traceback" not in err


def test_the_table_is_added_to_the_runs_results_json_and_nothing_else_changes(tiny, tmp_path):
    import shutil

    config, ckpt = tiny
    run = tmp_path / "run"
    (run / "stages" / "00_decoder").mkdir(parents=True)
    shutil.copy(ckpt, run / "stages" / "00_decoder" / "final.ckpt")
    before = {"study": "DistillModule", "status": "done", "test": {"test/miou": 0.5}}
    (run / "results.json").write_text(json.dumps(before))
    assert main(["quantize", "-c", str(config), "--ckpt", str(run / "stages" / "00_decoder" / "final.ckpt"),
                 "--mode", "fp32,int8_weight_only", "--repeats", "1", "--threads", "1"]) == 0
    after = json.loads((run / "results.json").read_text())
    table = json.loads((run / "quantize" / "quantize.json").read_text())
    assert after["quantize"]["rows"] == table["rows"] and [r["mode"] for r in table["rows"]] == ["fp32",
                                                                                                 "int8_weight_only"]
    assert {k: v for k, v in after.items() if k != "quantize"} == before
