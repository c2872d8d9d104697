"""Issue 24 item 3: every seed config at its real size, through its real loading path, on this CPU (slow).

Each test writes weights with random values in the library's own on-disk format into a temporary folder (a timm
state dict as ``.safetensors``, the file ``timm.create_model(name, pretrained_cfg_overlay={"file": ...})`` reads; a
transformers ``save_pretrained`` folder of ``SiglipModel`` / ``Siglip2Model`` at the real architecture of the
checkpoint the config names, with a tokenizer built offline), writes data with ``lit-exp data shapes`` in the
config's on-disk format at its real resolution, and runs ``lit-exp preflight`` on the seed config with ONLY the
path keys changed (weights, data root / files) plus batch 1-2 and ``--steps 2``. It checks: exit 0 and every stage
ok; the weights came from the temporary path (the preflight's weights list names it with the file's sha256); the
config's own loading code (the part built from the config, ``preflight.build_run``) gives the same outputs on one
batch as the model the weights were saved from; a missing weight file and weights of the wrong architecture are
one-block errors naming the path and what was expected.

Not offline: the SigLIP2 tokenizer is Gemma's SentencePiece vocabulary of 256k learned pieces (data, not a library
default); the towers' tokenizer here is the word-level ShapesWorld tokenizer saved with ``save_pretrained`` and read
back by ``AutoTokenizer``, which is the loading path the towers take. The towers read no image processor (they
normalise themselves), so none is needed; the image processors are saved anyway, as a hub folder holds them.

Numbers: ``LIT_EXP_REAL_SIZE_OUT=DIR`` keeps each preflight.json there (docs/gpu.md's "real size on this CPU").
TODO (issue 24 item 3, studies being refactored): configs/retrieval/seed_resnet18.yaml (a timm ResNet-18 state dict
as its weight file) and configs/distill/seed_sam3.yaml (Sam3Model save_pretrained; MobileCLIP-S1 open_clip and
FastViT timm weight files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SLOTS_BASE = "configs/slots/_base_movi.yaml"
#: MOVi clips as the seed converted them: 256 px, 24 frames (the frozen ViT resizes to its 224)
MOVI = ["--image-size", "256", "--num-frames", "24"]
#: google/siglip2-base-patch16-224 / -naflex (their config.json): both towers ViT-B (768 wide, 12 layers of 12 heads,
#: MLP 3072), patch 16, text vocabulary 256000 (Gemma), 64 positions, pad / eos / bos 0 / 1 / 2
SIGLIP2_BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
SIGLIP2_TEXT = {**SIGLIP2_BASE, "vocab_size": 256000, "max_position_embeddings": 64, "pad_token_id": 0,
                "eos_token_id": 1, "bos_token_id": 2}


# ----------------------------------------------------------------------------------------------- helpers
def lit_exp(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m lit_experiments ARGS`` in ``cwd`` with an empty, offline hub cache under it."""
    env = {**os.environ, "HF_HOME": str(cwd / "hf_home"), "HF_HUB_CACHE": str(cwd / "hf_home" / "hub"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "lit_experiments", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def config_args(configs: list[str]) -> list[str]:
    return [a for c in configs for a in ("-c", str(ROOT / c))]


def preflight(tmp: Path, name: str, configs: list[str], overrides: list[str]) -> dict:
    """``lit-exp preflight`` at the real size: 2 steps, the RTX 5080 projection; the report, after checking it ran."""
    out = tmp / "preflight" / name
    proc = lit_exp(["preflight", *config_args(configs), "--steps", "2", "--gpu", "rtx5080", "--out", str(out),
                    *overrides], tmp)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    report = json.loads((out / "preflight.json").read_text())
    assert report["ok"] and report["stages"] and all(s["ok"] for s in report["stages"]), text[-6000:]
    assert all(s["steps_run"] >= 1 and s["step_s"] for s in report["stages"]), report["stages"]
    keep = os.environ.get("LIT_EXP_REAL_SIZE_OUT")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "preflight.json", Path(keep) / f"{name}.json")
    print(f"\n{name}: " + proc.stdout.strip().splitlines()[-1])
    return report


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256_folder(path: Path) -> str:
    """The folder digest preflight documents: relative names and bytes of its files, sorted by name."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def assert_loaded_from(report: dict, path: Path, digest: str) -> None:
    rows = [w for w in report["weights"] if w.get("path") == str(path.resolve())]
    assert rows, f"{path} not in the preflight's weights: {report['weights']}"
    assert all(w["sha256"] == digest for w in rows), rows


def assert_one_block_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-4000:]}"
    print("\n" + "\n".join(line for line in text.strip().splitlines() if "error" in line.lower())[-1500:])
    return text


def built_part(tmp: Path, configs: list[str], overrides: list[str]):
    """The datamodule's ``frozen:`` part as the config's own code builds it (``lit-exp preflight``'s build)."""
    from lit_experiments.experiments.preflight import build_run

    build = tmp / "build"
    build.mkdir(exist_ok=True)
    built = build_run([str(ROOT / c) for c in configs], overrides, build, "cpu", None)
    return built.datamodule.frozen


def write_shapes(out: Path, fmt: str, *args: str) -> Path:
    proc = lit_exp(["data", "shapes", "--out", str(out), "--format", fmt, *args], out.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


# ------------------------------------------------------------------------------------------------- slots
@pytest.fixture(scope="module")
def movi(tmp_path_factory) -> Path:
    """MOVi-format ShapesWorld clips at the seed's 256 px x 24 frames: train (its 2.5 % is validation), validation."""
    root = tmp_path_factory.mktemp("movi")
    (root / "train").parent.mkdir(exist_ok=True)
    write_shapes(root / "train", "movi", "--n", "4", *MOVI)
    write_shapes(root / "validation", "movi", "--n", "1", "--seed", "1", *MOVI)
    return root


def timm_weights(name: str, path: Path, image_size: int = 224):
    """A timm model of ``name`` at random init (the architecture the config builds: its ``image_size``), saved as the
    state-dict file timm reads with ``pretrained_cfg_overlay={"file": path}``; returns the model."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=image_size).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


#: (test id, configs, the timm name the config's frozen ViT builds, extra overrides beyond the paths)
SLOTS = [
    ("slots_base_dinov2", [SLOTS_BASE], "vit_small_patch14_dinov2", []),
    ("slots_dinov1_channel_norm", [SLOTS_BASE, "configs/slots/dinov1_channel_norm.yaml"],
     "vit_small_patch16_224.dino", []),
    ("slots_clip_mse", [SLOTS_BASE, "configs/slots/clip_mse.yaml"], "vit_base_patch16_clip_224.openai", []),
    ("slots_movi_c_dinosaur", [SLOTS_BASE, "configs/slots/movi_c_dinosaur.yaml"], "vit_small_patch14_dinov2",
     ["--data.init_args.batch_size", "2"]),
]


@pytest.mark.parametrize(("name", "configs", "timm_name", "extra"), SLOTS, ids=[s[0] for s in SLOTS])
def test_slots_seed_config_at_real_size(tmp_path, movi, name, configs, timm_name, extra):
    weights = tmp_path / "weights" / f"{timm_name}.safetensors"
    source = timm_weights(timm_name, weights)
    paths = ["--data.init_args.frozen.init_args.pretrained", str(weights),
             "--data.init_args.source.init_args.root", str(movi)]
    report = preflight(tmp_path, name, configs, [*paths, *extra])
    assert_loaded_from(report, weights, sha256_file(weights))
    frozen = next(p for p in report["parts"] if p["part"].startswith("datamodule.") and p["params"])
    assert frozen["params"] == sum(p.numel() for p in source.parameters()) - sum(
        p.numel() for n, p in source.named_parameters() if n.startswith("head.")), report["parts"]
    # the config's own loading code, the same file: the same tokens as the model the weights were saved from
    part = built_part(tmp_path, configs, paths)
    torch.manual_seed(1)
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        got = part.network.model.forward_features(images)
        want = source.forward_features(images)
        assert torch.equal(got, want), (got - want).abs().max()
        assert part.features(images).shape[-1] == source.embed_dim


def test_slots_missing_weight_file_is_one_block(tmp_path, movi):
    missing = tmp_path / "weights" / "dinov2_vits14.safetensors"
    proc = lit_exp(["preflight", *config_args([SLOTS_BASE]), "--steps", "1",
                    "--data.init_args.frozen.init_args.pretrained", str(missing),
                    "--data.init_args.source.init_args.root", str(movi)], tmp_path)
    assert_one_block_error(proc, str(missing), "weight file not found", "pretrained")


def test_slots_wrong_architecture_is_one_block(tmp_path, movi):
    """A DINO ViT-S/16 state dict where the config's DINOv2 ViT-S/14 is expected."""
    wrong = tmp_path / "weights" / "vit_small_patch16_224.safetensors"
    timm_weights("vit_small_patch16_224.dino", wrong)
    proc = lit_exp(["preflight", *config_args([SLOTS_BASE]), "--steps", "1",
                    "--data.init_args.frozen.init_args.pretrained", str(wrong),
                    "--data.init_args.source.init_args.root", str(movi)], tmp_path)
    text = assert_one_block_error(proc, str(wrong), "vit_small_patch14_dinov2")
    assert len(text.strip().splitlines()) < 40, text


# -------------------------------------------------------------------------------------------- multilabel
def siglip_checkpoint(folder: Path, naflex: bool):
    """A ``save_pretrained`` folder of the real google/siglip2-base-patch16-224 (``SiglipModel``) or -naflex
    (``Siglip2Model``, 256 patches) architecture at random init, its tokenizer and image processor; the model."""
    from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    from lit_experiments.studies.multilabel.towers import shapes_tokenizer

    if naflex:
        from transformers import Siglip2ImageProcessor as Processor

        config = Siglip2Config(text_config=SIGLIP2_TEXT, vision_config={**SIGLIP2_BASE, "patch_size": 16,
                                                                           "num_patches": 256})
        model_cls = Siglip2Model
    else:
        from transformers import SiglipImageProcessor as Processor

        config = SiglipConfig(text_config=SIGLIP2_TEXT, vision_config={**SIGLIP2_BASE, "patch_size": 16,
                                                                         "image_size": 224})
        model_cls = SiglipModel
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    shapes_tokenizer().save_pretrained(folder)
    Processor().save_pretrained(folder)
    return model


def coco_folder(tmp_path_factory, name: str, image_size: int, n_train: int, n_test: int) -> Path:
    """COCO-format ShapesWorld in COCO 2017's folders: ``train2017`` (the pool) and ``val2017`` (held out)."""
    root = tmp_path_factory.mktemp(name)
    write_shapes(root / "train2017", "coco", "--n", str(n_train), "--image-size", str(image_size))
    write_shapes(root / "val2017", "coco", "--n", str(n_test), "--seed", "1", "--image-size", str(image_size))
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """COCO-format ShapesWorld at 256 px (the towers resize to 224 / 256): a pool and a held-out set."""
    return coco_folder(tmp_path_factory, "coco", 256, 12, 4)


def coco_paths(root: Path) -> list[str]:
    def split(name: str) -> str:
        return json.dumps({"ann_file": f"{name}/annotations/instances.json", "image_dir": f"{name}/images",
                           "captions_file": f"{name}/annotations/captions.json"})

    return ["--data.init_args.source.init_args.root", str(root),
            "--data.init_args.source.init_args.pool", split("train2017"),
            "--data.init_args.source.init_args.test", split("val2017")]


@pytest.fixture(scope="module")
def siglip_fixres(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights") / "siglip2-base-patch16-224"
    return folder, siglip_checkpoint(folder, naflex=False)


MULTILABEL = [("multilabel_siglip2", ["configs/multilabel/seed_siglip2.yaml"], False),
              ("multilabel_siglip2_naflex", ["configs/multilabel/seed_siglip2.yaml",
                                             "configs/multilabel/seed_siglip2_naflex.yaml"], True)]


@pytest.mark.parametrize(("name", "configs", "naflex"), MULTILABEL, ids=[m[0] for m in MULTILABEL])
def test_multilabel_seed_config_at_real_size(tmp_path, tmp_path_factory, coco, name, configs, naflex, request):
    if naflex:
        folder = tmp_path / "weights" / "siglip2-base-patch16-naflex"
        source = siglip_checkpoint(folder, naflex=True)
    else:
        folder, source = request.getfixturevalue("siglip_fixres")
    paths = ["--data.init_args.frozen.init_args.checkpoint", str(folder), *coco_paths(coco)]
    report = preflight(tmp_path, name, configs, [*paths, "--data.init_args.batch_size", "2"])
    assert_loaded_from(report, folder, sha256_folder(folder))
    towers = built_part(tmp_path, configs, paths)
    assert type(towers.model) is type(source)
    assert sum(p.numel() for p in towers.parameters()) == sum(p.numel() for p in source.parameters())
    assert towers.image_size == (256 if naflex else 224)
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, towers.image_size, towers.image_size), dtype=torch.uint8)
    inputs = towers.image_inputs(images)
    tokens = towers.tokenize(["a photo of a red cube", "a blue sphere and a green cylinder"])
    assert tokens["input_ids"].shape == (2, 64)
    with torch.no_grad():
        got_image, got_text = towers.encode_image(**inputs), towers.encode_text(**tokens)
        image_kwargs = inputs if naflex else {"pixel_values": inputs["pixel_values"]}
        want_image = source.get_image_features(**image_kwargs).pooler_output
        want_text = source.get_text_features(input_ids=tokens["input_ids"]).pooler_output
    # the same weights and inputs; float sums may differ in the last bits between two model instances' kernels
    assert got_image.shape == (2, 768)
    torch.testing.assert_close(got_image, want_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_text, want_text, rtol=1e-5, atol=1e-5)


def test_multilabel_missing_checkpoint_is_one_block(tmp_path, coco):
    missing = tmp_path / "weights" / "siglip2-base-patch16-224"
    proc = lit_exp(["preflight", *config_args(["configs/multilabel/seed_siglip2.yaml"]), "--steps", "1",
                    "--data.init_args.frozen.init_args.checkpoint", str(missing), *coco_paths(coco)], tmp_path)
    assert_one_block_error(proc, str(missing), "weight file not found", "checkpoint")


def test_multilabel_wrong_architecture_is_one_block(tmp_path, coco, siglip_fixres):
    """The FixRes ``SiglipModel`` folder where the NaFlex config expects a ``Siglip2Model`` checkpoint."""
    folder, _ = siglip_fixres
    proc = lit_exp(["preflight", *config_args(["configs/multilabel/seed_siglip2.yaml",
                                               "configs/multilabel/seed_siglip2_naflex.yaml"]), "--steps", "1",
                    "--data.init_args.frozen.init_args.checkpoint", str(folder), *coco_paths(coco)], tmp_path)
    text = assert_one_block_error(proc, str(folder), "Siglip2Model")
    assert len(text.strip().splitlines()) < 40, text


# ------------------------------------------------------------------------------------------ satipatthana
SATIPATTHANA = ["configs/satipatthana/demo.yaml", "configs/satipatthana/digits.yaml",
                "configs/satipatthana/shapes.yaml", "configs/satipatthana/v41.yaml"]


@pytest.mark.parametrize("config", SATIPATTHANA, ids=[Path(c).stem for c in SATIPATTHANA])
def test_satipatthana_config_at_real_size(tmp_path, config):
    """No pretrained weights: every stage at the config's own sizes and data (generated), 2 steps each."""
    report = preflight(tmp_path, f"satipatthana_{Path(config).stem}", [config], [])
    assert report["weights"] == [{"key": "*", "source": "random init"}]
    assert len(report["stages"]) >= 4
