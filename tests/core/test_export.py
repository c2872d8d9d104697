"""`lit-exp export` on a tiny distill student: every part exported (ONNX through the dynamo exporter, torch.export),
run in its own runtime on the saved reference inputs and compared with eager (F43); a changed exported graph
fails the product's parity check; clear one-line errors for a part that does not exist, a checkpoint of another
study, a study without parts and a missing ONNX Runtime."""
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
from lit_experiments.deploy.build import build_study, load_study, reference_batch
from lit_experiments.deploy.export import ParityError, check_parity
from lit_experiments.studies.distill import deploy
from lit_experiments.studies.distill.module import DistillModule

ROOT = Path(__file__).resolve().parents[2]
PARTS = {"image_encoder": ["image_features"], "text_encoder": ["text_tokens", "text_pooled"],
         "decoder": ["pred_masks", "pred_boxes", "pred_logits", "presence_logits"]}

TINY = """seed_everything: 0
model:
  class_path: lit_experiments.studies.distill.module.DistillModule
  init_args:
    probe_images: 0
    student:
      class_path: lit_experiments.studies.distill.student.Student
      init_args:
        image_encoder:
          class_path: lit_experiments.studies.distill.student.ImageEncoder
          init_args: {name: mobilenetv3_small_050, pretrained: false, out_dim: 16, out_indices: [2, 3], img_size: 32}
        text_encoder:
          class_path: lit_experiments.studies.distill.student.TextEncoder
          init_args: {pretrained: null, width: 16, layers: 2, heads: 2, out_dim: 16}
        decoder:
          class_path: lit_experiments.studies.distill.student.PromptDecoder
          init_args: {dim: 16, num_queries: 4, layers: 1, heads: 2}
data:
  class_path: lit_experiments.studies.distill.datamodule.DistillDataModule
  init_args:
    teacher: null
    n_train: 4
    n_val: 2
    n_test: 3
    shapes: {image_size: 32}
    batch_size: 4
    eval_batch_size: 8
    cache_dir: CACHE
"""


def write_tiny_distill(tmp: Path) -> tuple[Path, Path]:
    """A tiny distill config (no teacher, 32 px ShapesWorld) and a checkpoint of its model with trained-looking
    weights (the seeded init, every parameter moved), in ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "tiny.yaml"
    config.write_text(TINY.replace("CACHE", str(tmp / "cache")))
    model, _, _ = build_study([str(config)])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ckpt = tmp / "final.ckpt"
    torch.save({"state_dict": model.state_dict(), "study": "DistillModule"}, ckpt)
    return config, ckpt


def bind_export_parts(mp: pytest.MonkeyPatch) -> None:
    """``DistillModule.export_parts`` delegates to ``deploy.export_parts`` (bound here until module.py has it)."""
    if DistillModule.export_parts is StudyModule.export_parts:
        mp.setattr(DistillModule, "export_parts", lambda self, batch: deploy.export_parts(self, batch),
                   raising=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny_distill(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def _bound(monkeypatch):
    bind_export_parts(monkeypatch)


@pytest.fixture(scope="module")
def onnx_out(tiny, tmp_path_factory) -> Path:
    config, ckpt = tiny
    out = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        bind_export_parts(mp)
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
    assert list(manifest["parts"]) == list(PARTS)
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
    assert manifest["parts"]["decoder"]["postprocess"].endswith("evaluation.postprocess")


@pytest.fixture(scope="module")
def loaded(tiny):
    config, ckpt = tiny
    with pytest.MonkeyPatch.context() as mp:
        bind_export_parts(mp)
        model, dm, _ = load_study([str(config)], str(ckpt))
        return model.export_parts(reference_batch(dm))


def test_f43_a_weight_changed_in_the_onnx_file_fails_the_parity_check(onnx_out, loaded, tmp_path):
    import onnx
    from onnx import numpy_helper

    for f in onnx_out.glob("image_encoder.*"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "image_encoder.onnx"
    assert check_parity(path, "onnx", loaded["image_encoder"])["passed"]  # the copy as exported passes
    graph = onnx.load(str(path))
    last_conv = next(n for n in reversed(graph.graph.node) if n.op_type == "Conv")  # the fusing conv
    init = next(i for i in graph.graph.initializer if i.name == last_conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.05, init.name))
    (tmp_path / "image_encoder.onnx.data").unlink()
    onnx.save(graph, str(path))  # weights inline now: one self-contained changed file
    with pytest.raises(ParityError, match=r"F43") as err:
        check_parity(path, "onnx", loaded["image_encoder"])
    assert "tolerance 0.0001" in str(err.value) and "image_features" in str(err.value)
    report = json.loads((tmp_path / "image_encoder.parity.json").read_text())
    assert report["passed"] is False and report["max_abs_err"] > 1e-4


def test_f43_a_silently_changed_torch_export_fails_the_command(tiny, tmp_path, capsys, monkeypatch):
    """The product's export step is made to change the program after exporting it (a weight perturbed in the
    saved .pt2): `lit-exp export` must fail with the numbers, not write a quietly wrong file."""
    config, ckpt = tiny
    original = export_mod.export_part

    def changed(part, path, fmt):
        original(part, path, fmt)
        program = torch.export.load(str(path))
        with torch.no_grad():
            program.state_dict["fuse.weight"].mul_(1.05)  # the image encoder's last conv
        torch.export.save(program, str(path))
        return path

    monkeypatch.setattr(export_mod, "export_part", changed)
    out = tmp_path / "pt2"
    code, err = run(["export", "-c", config, "--ckpt", ckpt, "--format", "torch_export", "--parts", "image_encoder",
                     "--out", out], capsys)
    assert code == 1 and "F43" in err and "Traceback" not in err
    report = json.loads((out / "image_encoder.parity.json").read_text())
    assert report["passed"] is False and report["max_abs_err"] > 1e-4
    monkeypatch.setattr(export_mod, "export_part", original)  # the same command, unchanged: within 1e-4
    assert run(["export", "-c", config, "--ckpt", ckpt, "--format", "torch_export", "--parts", "image_encoder",
                "--out", out], capsys)[0] == 0
    assert json.loads((out / "image_encoder.parity.json").read_text())["max_abs_err"] <= 1e-4


def test_unknown_part_lists_the_known_ones(tiny, tmp_path, capsys):
    config, ckpt = tiny
    code, err = run(["export", "-c", config, "--ckpt", ckpt, "--format", "torch_export", "--parts",
                     "image_encoder,mask_head", "--out", tmp_path], capsys)
    first = one_line(err)
    assert code == 2 and "'mask_head'" in first and "image_encoder, text_encoder, decoder" in first
    assert "DistillModule" in first


def test_checkpoint_of_another_study_is_one_line_for_export_and_quantize(tiny, tmp_path, capsys):
    config, _ = tiny
    other = tmp_path / "retrieval.ckpt"
    torch.save({"state_dict": {"backbone.weight": torch.zeros(2)}, "study": "RetrievalModule"}, other)
    code, err = run(["export", "-c", config, "--ckpt", other, "--format", "torch_export", "--out", tmp_path],
                    capsys)
    first = one_line(err)
    assert code == 2 and "RetrievalModule" in first and "DistillModule" in first
    assert f"--ckpt {other} is a checkpoint of study RetrievalModule" in first
    code, err = run(["quantize", "-c", config, "--ckpt", other, "--out", tmp_path], capsys)
    assert code == 2 and "RetrievalModule" in one_line(err)


def test_missing_onnxruntime_is_a_clear_error_before_any_work(tiny, tmp_path, capsys, monkeypatch):
    config, ckpt = tiny
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    monkeypatch.setattr(export_mod, "load_study", lambda *a: pytest.fail("the study was built before the check"))
    code, err = run(["export", "-c", config, "--ckpt", ckpt, "--format", "onnx", "--out", tmp_path], capsys)
    first = one_line(err)
    assert code == 2 and "onnxruntime" in first and "--format torch_export" in first


def test_a_study_without_parts_says_so(tmp_path, capsys):
    code, err = run(["export", "-c", ROOT / "configs" / "toy" / "fit.yaml", "--ckpt", "init", "--format",
                     "torch_export", "--out", tmp_path], capsys)
    assert code == 2 and "ToyModule names no exportable parts" in one_line(err)
