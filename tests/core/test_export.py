"""`lit-exp export` on a toy run (one epoch of ``configs/toy/fit.yaml``): every part exported (ONNX through the
dynamo exporter, torch.export), run in its own runtime on the saved reference inputs and compared with eager at
two batch sizes (F43); a changed exported graph, or one wrong only at the second batch size, fails the product's
parity check, part by part; clear one-line errors for a part that does not exist, a checkpoint of another study,
a study without parts and a missing ONNX Runtime."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_experiments.cli import main
from lit_experiments.core.study import StudyModule
from lit_experiments.deploy import export as export_mod
from lit_experiments.deploy.build import load_study, reference_batch
from lit_experiments.deploy.export import ParityError, check_parity
from lit_experiments.studies.toy.module import ToyModule

ROOT = Path(__file__).resolve().parents[2]
FIT = ROOT / "configs" / "toy" / "fit.yaml"
PARTS = {"encoder": ["features"], "head": ["logits"]}
WIDTH = 256  # wide enough that a state dict is weights, not pickling overhead (half files are about half)


def train_toy_run(tmp: Path) -> tuple[Path, Path]:
    """One epoch of ``configs/toy/fit.yaml`` (encoder width ``WIDTH``) in ``tmp/run``; returns the run's
    ``config.yaml`` and its checkpoint."""
    run_dir = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        assert main(["fit", "-c", str(FIT), "--trainer.max_epochs=1", f"--trainer.run_dir={run_dir}",
                     "--trainer.enable_model_summary=false",
                     f"--model.init_args.encoder.init_args.hidden_channels=[{WIDTH}, {WIDTH}]"]) is None
    (ckpt,) = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    return run_dir / "config.yaml", ckpt


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return train_toy_run(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def onnx_out(toy, tmp_path_factory) -> Path:
    config, ckpt = toy
    out = tmp_path_factory.mktemp("onnx")
    assert main(["export", "-c", str(config), "--ckpt", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    return out


def run(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The error's message line (the CLI may add one `see lit-exp --help` hint line; never a traceback)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) <= 2 and lines[0].startswith("lit-exp: error: "), err
    return lines[0]


def test_every_part_exports_to_onnx_within_1e4_of_eager_at_two_batch_sizes(onnx_out):
    import onnxruntime as ort

    manifest = json.loads((onnx_out / "export.json").read_text())
    assert list(manifest["parts"]) == list(PARTS) and manifest["study"] == "ToyModule"
    assert manifest["status"] == "passed" and all(p["verdict"]["passed"] for p in manifest["parts"].values())
    for name, outputs in PARTS.items():
        report = json.loads((onnx_out / f"{name}.parity.json").read_text())
        assert report["passed"] and report["tolerance"] == 1e-4
        assert report["max_abs_err"] <= 1e-4, (name, report["max_abs_err"])
        assert list(report["outputs"]) == outputs
        assert all(o["max_abs_err"] <= 1e-4 for o in report["outputs"].values())
        inputs = torch.load(onnx_out / f"{name}.inputs.pt", weights_only=True)
        reference = torch.load(onnx_out / f"{name}.reference.pt", weights_only=True)
        assert [i["name"] for i in report["inputs"]] == list(inputs)
        assert [i["shape"] for i in report["inputs"]] == [list(t.shape) for t in inputs.values()]
        batch = next(iter(inputs.values())).shape[0]
        assert report["dynamic_batch"]["batch"] == batch + 1 and report["dynamic_batch"]["max_abs_err"] <= 1e-4
        # independent of the product's check: ORT at another batch size gives eager's rows of the reference
        session = ort.InferenceSession(str(onnx_out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: t[:3].numpy() for n, t in inputs.items()})
        for out_name, value in zip(outputs, got, strict=True):
            np.testing.assert_allclose(value, reference[out_name][:3].numpy(), rtol=0, atol=1e-4)
    assert manifest["parts"]["encoder"]["postprocess"] is None
    assert manifest["parts"]["head"]["postprocess"] == "lit_experiments.studies.toy.module.predict_class"


@pytest.fixture(scope="module")
def loaded(toy):
    config, ckpt = toy
    model, dm, _ = load_study([str(config)], str(ckpt))
    return model.export_parts(reference_batch(dm))


def copy_part(src: Path, name: str, dst: Path) -> Path:
    for f in src.glob(f"{name}.*"):
        shutil.copy(f, dst / f.name)
    return dst / f"{name}.onnx"


def test_f43_a_weight_changed_in_the_onnx_file_fails_the_parity_check(onnx_out, loaded, tmp_path):
    import onnx
    from onnx import numpy_helper

    path = copy_part(onnx_out, "encoder", tmp_path)
    assert check_parity(path, "onnx", loaded["encoder"])["passed"]  # the copy as exported passes
    graph = onnx.load(str(path))
    last = next(n for n in reversed(graph.graph.node) if n.op_type in ("Gemm", "MatMul"))  # the encoder's last Linear
    init = next(i for i in graph.graph.initializer if i.name == last.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.05, init.name))
    (tmp_path / "encoder.onnx.data").unlink(missing_ok=True)
    onnx.save(graph, str(path))  # weights inline now: one self-contained changed file
    with pytest.raises(ParityError, match=r"F43") as err:
        check_parity(path, "onnx", loaded["encoder"])
    assert "tolerance 0.0001" in str(err.value) and "'features'" in str(err.value)
    report = json.loads((tmp_path / "encoder.parity.json").read_text())
    assert report["passed"] is False and report["max_abs_err"] > 1e-4


def test_f43_an_export_wrong_only_at_the_second_batch_size_fails_the_check(onnx_out, loaded, tmp_path,
                                                                            monkeypatch):
    """The runtime gives eager's numbers at the reference batch size and wrong ones at any other (an export
    that baked in its example batch): the check at the second batch size must fail the part."""
    path = copy_part(onnx_out, "head", tmp_path)
    batch = int(torch.load(tmp_path / "head.inputs.pt", weights_only=True)["features"].shape[0])
    original = export_mod.run_export

    def right_at_one_batch_size(path, fmt, inputs, input_names, output_names):
        outs = original(path, fmt, inputs, input_names, output_names)
        return outs if outs[0].shape[0] == batch else [o + 0.01 for o in outs]

    monkeypatch.setattr(export_mod, "run_export", right_at_one_batch_size)
    with pytest.raises(ParityError, match=r"F43") as err:
        check_parity(path, "onnx", loaded["head"])
    assert f"at batch {batch + 1}: 0.01" in str(err.value)
    report = json.loads((tmp_path / "head.parity.json").read_text())
    assert report["max_abs_err"] <= 1e-4  # right at the reference batch size ...
    assert report["dynamic_batch"]["batch"] == batch + 1 and report["dynamic_batch"]["max_abs_err"] > 1e-4
    assert report["passed"] is False  # ... wrong at the other: the part fails


def test_f43_a_silently_changed_torch_export_fails_the_command(toy, tmp_path, capsys, monkeypatch):
    """The product's export step is made to change one part's program after exporting it (a weight perturbed in
    the saved .pt2): `lit-exp export` must check every part, say which one failed with the numbers, and not pass
    a quietly wrong file."""
    config, ckpt = toy
    original = export_mod.export_part

    def changed(part, path, fmt):
        original(part, path, fmt)
        if path.stem == "encoder":
            program = torch.export.load(str(path))
            with torch.no_grad():
                program.state_dict["4.weight"].mul_(1.05)  # the encoder's last Linear
            torch.export.save(program, str(path))
        return path

    monkeypatch.setattr(export_mod, "export_part", changed)
    out = tmp_path / "pt2"
    code, err = run(["export", "-c", config, "--ckpt", ckpt, "--format", "torch_export", "--out", out], capsys)
    assert code == 1 and "F43" in err and "Traceback" not in err and "encoder.pt2" in err and "head.pt2" not in err
    report = json.loads((out / "encoder.parity.json").read_text())
    assert report["passed"] is False and report["max_abs_err"] > 1e-4
    head = json.loads((out / "head.parity.json").read_text())  # checked after the failed part: its own verdict
    assert head["passed"] is True and head["max_abs_err"] <= 1e-4
    manifest = json.loads((out / "export.json").read_text())
    assert list(manifest["parts"]) == list(PARTS) and manifest["status"] == "failed"
    verdicts = {n: p["verdict"] for n, p in manifest["parts"].items()}  # which parts passed, in the record
    assert verdicts["encoder"]["passed"] is False and verdicts["encoder"]["max_abs_err"] == report["max_abs_err"]
    assert verdicts["head"]["passed"] is True and verdicts["head"]["max_abs_err"] == head["max_abs_err"]
    monkeypatch.setattr(export_mod, "export_part", original)  # the same command, unchanged: within 1e-4
    assert run(["export", "-c", config, "--ckpt", ckpt, "--format", "torch_export", "--parts", "encoder",
                "--out", out], capsys)[0] == 0
    assert json.loads((out / "encoder.parity.json").read_text())["max_abs_err"] <= 1e-4


class TwoOutputs(torch.nn.Module):
    """A part with two outputs, returned as a tuple or as a dict (the toy's parts have one each)."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.proj = torch.nn.Linear(4, 6)

    def forward(self, x: torch.Tensor, scale: torch.Tensor):
        h = self.proj(x)
        out = (h.tanh(), h.sum(-1) * scale)
        return dict(zip(("hidden", "score"), out)) if self.as_dict else out


def test_f43_every_output_of_a_part_is_checked_on_its_own(tmp_path, monkeypatch):
    """Tuple and dict outputs, an input without a batch dimension: each output is compared by name, and a change
    in the second output alone fails the part with that output named."""
    torch.manual_seed(0)
    parts = {name: export_mod.ExportPart(TwoOutputs(as_dict), (torch.randn(5, 4), torch.tensor(2.0)),
                                         ["x", "scale"], ["hidden", "score"], dynamic_batch=["x"])
             for name, as_dict in (("tuple", False), ("dict", True))}
    reports = export_mod.export_and_check(parts, tmp_path / "ok", "onnx")
    for report in reports.values():
        assert report["passed"] and list(report["outputs"]) == ["hidden", "score"]
        assert report["outputs"]["hidden"]["shape"] == [5, 6] and report["outputs"]["score"]["shape"] == [5]
        assert report["dynamic_batch"]["inputs"] == ["x"] and report["dynamic_batch"]["batch"] == 6
        assert report["dynamic_batch"]["max_abs_err"] <= 1e-4
    reference = torch.load(tmp_path / "ok" / "dict.reference.pt", weights_only=True)
    assert list(reference) == ["hidden", "score"] and reference["score"].shape == (5,)
    original = export_mod.run_export

    def second_output_off(path, fmt, inputs, input_names, output_names):
        first, second = original(path, fmt, inputs, input_names, output_names)
        return [first, second + 1e-3]

    monkeypatch.setattr(export_mod, "run_export", second_output_off)
    with pytest.raises(ParityError, match=r"F43") as err:
        export_mod.export_and_check(parts, tmp_path / "off", "onnx")
    assert str(err.value).count("worst output 'score'") == 2  # both parts, after both were checked
    report = json.loads((tmp_path / "off" / "tuple.parity.json").read_text())
    assert report["outputs"]["hidden"]["max_abs_err"] <= 1e-4 and report["outputs"]["score"]["max_abs_err"] > 1e-4
    assert report["passed"] is False


def test_unknown_part_lists_the_known_ones(toy, tmp_path, capsys):
    config, ckpt = toy
    code, err = run(["export", "-c", config, "--ckpt", ckpt, "--format", "torch_export", "--parts",
                     "encoder,mask_head", "--out", tmp_path], capsys)
    first = one_line(err)
    assert code == 2 and "'mask_head'" in first and "its parts: encoder, head" in first
    assert "ToyModule" in first


def test_checkpoint_of_another_study_is_one_line_for_export_and_quantize(toy, tmp_path, capsys):
    config, _ = toy
    other = tmp_path / "retrieval.ckpt"
    torch.save({"state_dict": {"backbone.weight": torch.zeros(2)}, "study": "RetrievalModule"}, other)
    code, err = run(["export", "-c", config, "--ckpt", other, "--format", "torch_export", "--out", tmp_path],
                    capsys)
    first = one_line(err)
    assert code == 2 and "RetrievalModule" in first and "ToyModule" in first
    assert f"--ckpt {other} is a checkpoint of study RetrievalModule" in first
    code, err = run(["quantize", "-c", config, "--ckpt", other, "--out", tmp_path], capsys)
    assert code == 2 and "RetrievalModule" in one_line(err)


def test_missing_onnxruntime_is_a_clear_error_before_any_work(toy, tmp_path, capsys, monkeypatch):
    config, ckpt = toy
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    monkeypatch.setattr(export_mod, "load_study", lambda *a: pytest.fail("the study was built before the check"))
    code, err = run(["export", "-c", config, "--ckpt", ckpt, "--format", "onnx", "--out", tmp_path], capsys)
    first = one_line(err)
    assert code == 2 and "onnxruntime" in first and "--format torch_export" in first


def test_a_study_without_parts_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ToyModule, "export_parts", StudyModule.export_parts)  # the base class's: no parts
    code, err = run(["export", "-c", FIT, "--ckpt", "init", "--format", "torch_export", "--out", tmp_path], capsys)
    assert code == 2 and "ToyModule names no exportable parts" in one_line(err)
