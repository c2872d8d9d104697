"""Issue 24 item 3 for the retrieval and distill seed configs: real size, real loading path, on this CPU (slow).

As ``tests/test_real_size.py`` (whose helpers this file uses): weights with random values in each library's own
on-disk format in a temporary folder, data written by ``lit-exp data shapes`` in the config's on-disk format at its
real resolution, ``lit-exp preflight`` on the seed config with ONLY the path keys changed (plus batch 1-2 and
``--steps 2``); exit 0 and every stage ok, the weights listed from the temporary path with the file's sha256, and
the part the config's own loading code built giving the outputs of the model the weights were saved from.

* ``configs/retrieval/seed_resnet18.yaml``: timm's ResNet-18 weight file (``model.safetensors`` as the hub holds
  it for ``timm/resnet18.a1_in1k``, classifier included) as the backbone's ``checkpoint``; a frames folder at 224 px.
* ``configs/distill/seed_sam3.yaml``: ``Sam3Model(Sam3Config())`` (the real ``facebook/sam3`` architecture, 840 M
  parameters) with ``save_pretrained`` and its ``Sam3Processor`` (the CLIP BPE tokenizer built offline from the
  vocabulary open_clip ships - the same 49408 tokens and merges as SAM3's tokenizer - and ``Sam3ImageProcessor()``);
  the student's FastViT-MCi0 timm weight file and the MobileCLIP-S1 open_clip checkpoint (``open_clip_model.
  safetensors``, the file open_clip reads from the hub); COCO-format images at 1008 px.

Not offline: nothing these two configs need. The SAM3 tokenizer files are not copied from the hub but rebuilt from
open_clip's BPE file; that it is the same tokenizer as ``facebook/sam3``'s is checked against open_clip's
``SimpleTokenizer`` ids, not against the hub's files (not on this machine).

Time on this 2-core CPU (2026-12-07, nothing else running): the whole file 10.4 min; the distill seed test 9 min
(its preflight 7.5 min, of which 4.3 min fill the teacher caches of 3 images at 1008 px in the main process), the
retrieval tests under a minute together.

Numbers: ``LIT_EXP_REAL_SIZE_OUT=DIR`` keeps each preflight.json there (docs/gpu.md's "real size on this CPU").
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

import tests.test_real_size as real_size
from tests.test_real_size import (
    assert_loaded_from,
    assert_one_block_error,
    coco_folder,
    config_args,
    lit_exp,
    sha256_file,
    sha256_folder,
    write_shapes,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RETRIEVAL = "configs/retrieval/seed_resnet18.yaml"
DISTILL = "configs/distill/seed_sam3.yaml"


def preflight(tmp: Path, name: str, configs: list[str], overrides: list[str], timeout: float = 900) -> dict:
    """``tests/test_real_size.preflight`` with a longer limit for the SAM3 teacher (its feature cache at 1008 px
    takes minutes per image on this CPU)."""
    def run(args: list[str], cwd: Path) -> object:
        return lit_exp(args, cwd, timeout=timeout)

    original, real_size.lit_exp = real_size.lit_exp, run
    try:
        return real_size.preflight(tmp, name, configs, overrides)
    finally:
        real_size.lit_exp = original


def build(tmp: Path, configs: list[str], overrides: list[str]):
    """Model and datamodule as ``lit-exp preflight`` builds them from the config (its ``build_run``)."""
    from lit_experiments.experiments.preflight import build_run

    folder = tmp / "build"
    folder.mkdir(exist_ok=True)
    return build_run([str(ROOT / c) for c in configs], overrides, folder, "cpu", None)


def timm_file(name: str, path: Path):
    """``timm.create_model(name)`` at random init (classifier included, as timm's hub files are) saved as the
    ``model.safetensors`` timm reads; returns the model."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


# ---------------------------------------------------------------------------------------------- retrieval
@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """A frames folder (frames/, labels.csv) of ShapesWorld clips at the seed's 224 px."""
    root = tmp_path_factory.mktemp("frames")
    return write_shapes(root / "frames", "frames", "--n", "32", "--image-size", "224", "--num-frames", "8")


def retrieval_paths(weights: Path, frames: Path) -> list[str]:
    return ["--model.init_args.backbone.init_args.checkpoint", str(weights),
            "--data.init_args.source.init_args.root", str(frames)]


def test_retrieval_seed_config_at_real_size(tmp_path, frames):
    weights = tmp_path / "weights" / "resnet18.a1_in1k" / "model.safetensors"
    source = timm_file("resnet18", weights)
    paths = retrieval_paths(weights, frames)
    report = preflight(tmp_path, "retrieval_seed_resnet18", [RETRIEVAL],
                       [*paths, "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2"])
    assert_loaded_from(report, weights, sha256_file(weights))
    assert [s["stage"] for s in report["stages"]] == ["simsiam", "fastap"], report["stages"]
    backbone = next(p for p in report["parts"] if p["part"] == "backbone")
    assert backbone["params"] == sum(p.numel() for n, p in source.named_parameters() if not n.startswith("fc."))
    # the config's own loading code, the same file: the features of the model the weights were saved from
    part = build(tmp_path, [RETRIEVAL], paths).model.backbone.eval()
    torch.manual_seed(1)
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        got = part(images)
        want = source.forward_head(source.forward_features((images - part.mean) / part.std), pre_logits=True)
    assert got.shape == (2, 512)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_retrieval_missing_weight_file_is_one_block(tmp_path, frames):
    missing = tmp_path / "weights" / "model.safetensors"
    proc = lit_exp(["preflight", *config_args([RETRIEVAL]), "--steps", "1", *retrieval_paths(missing, frames)],
                   tmp_path)
    assert_one_block_error(proc, str(missing), "weight file not found", "checkpoint")


def test_retrieval_wrong_architecture_is_one_block(tmp_path, frames):
    """timm's ResNet-10-T weight file where the config's ResNet-18 is expected."""
    wrong = tmp_path / "weights" / "resnet10t" / "model.safetensors"
    timm_file("resnet10t", wrong)
    proc = lit_exp(["preflight", *config_args([RETRIEVAL]), "--steps", "1", *retrieval_paths(wrong, frames)],
                   tmp_path)
    text = assert_one_block_error(proc, str(wrong), "'resnet18'", "not this architecture")
    assert len(text.strip().splitlines()) < 40, text


# ------------------------------------------------------------------------------------------------ distill
def clip_bpe_tokenizer(folder: Path):
    """SAM3's text tokenizer (CLIP BPE, 49408 tokens, context 32) built offline from the BPE merges open_clip ships
    (``bpe_simple_vocab_16e6.txt.gz``), as OpenAI's CLIP builds its vocabulary from them."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = [*vocab, *(v + "</w>" for v in vocab), *("".join(m.split()) for m in merges), "<|startoftext|>",
             "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32,
                         pad_token="<|endoftext|>")


PROMPT = "a red cube"


@pytest.fixture(scope="module")
def sam3(tmp_path_factory):
    """``Sam3Model(Sam3Config())`` at random init saved with ``save_pretrained`` and its processor; the folder and the
    source model's outputs on one image and prompt (the model itself is freed: 3.4 GB)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    base = tmp_path_factory.mktemp("sam3")
    folder = base / "sam3"
    tokenizer = clip_bpe_tokenizer(base / "bpe")
    assert tokenizer(PROMPT)["input_ids"][1:-1] == SimpleTokenizer().encode(PROMPT)
    torch.manual_seed(0)
    model = Sam3Model(Sam3Config()).eval()
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(1)
    image = torch.randint(0, 256, (1, 3, 1008, 1008), dtype=torch.uint8)
    ids = tokenizer([PROMPT], padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=(image.float() / 255 - 0.5) / 0.5, input_ids=ids["input_ids"],
                    attention_mask=ids["attention_mask"])
    want = {"pred_logits": out.pred_logits, "presence_logits": out.presence_logits.squeeze(-1),
            "pred_masks": out.pred_masks}
    del model, out
    return folder, params, image, want


@pytest.fixture(scope="module")
def coco_1008(tmp_path_factory) -> Path:
    """COCO-format ShapesWorld at the teacher's 1008 px: a training pool (4 % of it held out) and a test set."""
    return coco_folder(tmp_path_factory, "coco1008", 1008, 3, 1)


@pytest.fixture(scope="module")
def student_files(tmp_path_factory):
    """The student's weight files: timm FastViT-MCi0 (``model.safetensors``) and the open_clip MobileCLIP-S1
    checkpoint (``open_clip_model.safetensors``); the models they were saved from."""
    import open_clip
    from safetensors.torch import save_file

    base = tmp_path_factory.mktemp("student")
    image_file = base / "fastvit_mci0" / "model.safetensors"
    image_model = timm_file("fastvit_mci0", image_file)
    clip_file = base / "MobileCLIP-S1" / "open_clip_model.safetensors"
    torch.manual_seed(0)
    clip = open_clip.create_model("MobileCLIP-S1").eval()
    clip_file.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_file))
    return image_file, image_model, clip_file, clip


def distill_paths(teacher: Path, coco: Path, image_file: Path, clip_file: Path) -> list[str]:
    student = "--model.init_args.student.init_args"
    return ["--data.init_args.frozen.init_args.checkpoint", str(teacher),
            f"{student}.image_encoder.init_args.pretrained", str(image_file),
            f"{student}.text_encoder.init_args.pretrained", str(clip_file),
            "--data.init_args.source.init_args.root", str(coco),
            "--data.init_args.source.init_args.train",
            json.dumps({"ann_file": "train2017/annotations/instances.json", "image_dir": "train2017/images"}),
            "--data.init_args.source.init_args.test",
            json.dumps({"ann_file": "val2017/annotations/instances.json", "image_dir": "val2017/images"})]


def test_distill_seed_config_at_real_size(tmp_path, sam3, coco_1008, student_files):
    folder, params, image, want = sam3
    image_file, image_model, clip_file, clip = student_files
    paths = distill_paths(folder, coco_1008, image_file, clip_file)
    report = preflight(tmp_path, "distill_seed_sam3", [DISTILL],
                       [*paths, "--data.init_args.batch_size", "1", "--data.init_args.eval_batch_size", "1"],
                       timeout=2400)
    assert_loaded_from(report, folder, sha256_folder(folder))
    assert_loaded_from(report, image_file, sha256_file(image_file))
    assert_loaded_from(report, clip_file, sha256_file(clip_file))
    assert [s["stage"] for s in report["stages"]] == ["encoder", "decoder"], report["stages"]
    teacher_row = next(p for p in report["parts"] if p["part"] == "datamodule.Sam3Teacher")
    assert teacher_row["params"] == params > 800_000_000, report["parts"]
    # the config's own loading code: the teacher gives the saved model's outputs; the student holds the files' tensors
    built = build(tmp_path, [DISTILL], paths)
    teacher, student = built.datamodule.frozen, built.model.student
    assert teacher.image_size == 1008 and teacher.text_max_length == 32
    ids = teacher.tokenize([PROMPT])
    with torch.no_grad():
        got = teacher(images=image, **ids)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5)
    pixels = torch.randn(1, 3, 512, 512)
    with torch.no_grad():  # the timm features_only model of the file: the saved model's feature levels 1 and 2
        levels = student.image_encoder.backbone.eval()(pixels)
        want_levels = image_model.forward_intermediates(pixels, indices=[1, 2], intermediates_only=True)
    assert [tuple(t.shape) for t in levels] == [(1, 128, 64, 64), (1, 256, 32, 32)]
    assert all(torch.equal(a, b) for a, b in zip(levels, want_levels))
    text = clip.state_dict()  # open_clip's text tower of the checkpoint, its position table cut to the context 32
    loaded = student.text_encoder.text.state_dict()
    assert loaded and all(torch.equal(v, text[f"text.{k}"][:32] if k == "positional_embedding" else text[f"text.{k}"])
                          for k, v in loaded.items())


def test_distill_missing_teacher_is_one_block(tmp_path, coco_1008, student_files):
    image_file, _, clip_file, _ = student_files
    missing = tmp_path / "weights" / "sam3"
    proc = lit_exp(["preflight", *config_args([DISTILL]), "--steps", "1",
                    *distill_paths(missing, coco_1008, image_file, clip_file)], tmp_path)
    assert_one_block_error(proc, str(missing), "checkpoint")


def test_distill_wrong_architecture_is_one_block(tmp_path, sam3, coco_1008, student_files):
    """A ResNet-18 folder where the config's teacher folder (a Sam3Model checkpoint) is expected, and the ResNet-18
    weight file where the student's FastViT-MCi0 is expected."""
    image_file, _, clip_file, _ = student_files
    folder = tmp_path / "weights" / "not_sam3"
    timm_file("resnet18", folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    proc = lit_exp(["preflight", *config_args([DISTILL]), "--steps", "1",
                    *distill_paths(folder, coco_1008, image_file, clip_file)], tmp_path)
    text = assert_one_block_error(proc, str(folder), "Sam3Model")
    assert len(text.strip().splitlines()) < 40, text
    proc = lit_exp(["preflight", *config_args([DISTILL]), "--steps", "1",
                    *distill_paths(sam3[0], coco_1008, folder / "model.safetensors", clip_file)], tmp_path)
    text = assert_one_block_error(proc, str(folder / "model.safetensors"), "fastvit_mci0")
    assert len(text.strip().splitlines()) < 40, text

