"""The distill study's student: output contract, its own tokenizer at context 32, gradients into every part,
exportable parts with plain tensor signatures, live prompt conditioning, clear errors for missing weights."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_convert

from lit_experiments.core.errors import ConfigError
from lit_experiments.studies.distill.components import student as student_mod
from lit_experiments.studies.distill.components.prompts import DualTokenizer
from lit_experiments.studies.distill.components.student import (
    OUTPUT_KEYS,
    ImageEncoder,
    PromptDecoder,
    Student,
    TextEncoder,
    tiny_student,
)
from lit_experiments.studies.distill.components.teacher import shapes_word_tokenizer

PROMPTS = ["red cube", "blue sphere", "object"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The student's ops are tiny: on the shared 2-core machine a second intra-op thread costs more than it gives
    (measured: a forward at 2 threads under load 0.4-1.2 s, at 1 thread 7-15 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Student:
    torch.manual_seed(0)
    return tiny_student(image_size=64, dim=32, num_queries=8)


@pytest.fixture(scope="module")
def ids(model: Student) -> torch.Tensor:
    return model.text_encoder.tokenizer()(PROMPTS, context_length=32)


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_forward_returns_the_teacher_contract(model: Student, ids: torch.Tensor) -> None:
    model.eval()
    images = _images(2, size=80)  # resized to image_size 64 inside the image encoder
    index = torch.tensor([0, 0, 1])
    with torch.no_grad():
        out = model(images, ids, image_index=index)
    assert set(out) == {*OUTPUT_KEYS, "image_features"}
    stride = model.image_encoder.stride
    assert stride == 8 and out["image_features"].shape == (2, 32, 64 // stride, 64 // stride)
    assert out["pred_masks"].shape == (3, 8, 16, 16)  # stride 8 x mask_upsample 2: image_size / 4
    assert out["pred_boxes"].shape == (3, 8, 4) and out["pred_logits"].shape == (3, 8)
    assert out["presence_logits"].shape == (3,)
    assert all(torch.isfinite(v).all() for v in out.values())
    boxes = out["pred_boxes"]
    assert boxes.min() >= 0 and boxes.max() <= 1
    xyxy = box_convert(boxes, "cxcywh", "xyxy")  # cxcywh: width and height are positive
    assert (xyxy[..., 2] > xyxy[..., 0]).all() and (xyxy[..., 3] > xyxy[..., 1]).all()
    with torch.no_grad():  # image_index gathers per-image features == repeating the images
        repeated = model(images[index], ids)
        as_float = model(images.float(), ids, image_index=index)  # float in [0, 255] == uint8
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(out[key], repeated[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[key], as_float[key])
    with pytest.raises(ValueError, match="image_index"):
        model(images, ids)  # 2 images, 3 prompts


def test_text_encoder_uses_context_32_and_its_own_tokenizer(model: Student, ids: torch.Tensor) -> None:
    text = model.text_encoder
    tok = text.tokenizer()
    assert text.context_length == 32 and text.text.positional_embedding.shape[0] == 32
    assert ids.shape == (3, 32) and ids.dtype == torch.long
    assert [tok.decode([i for i in row.tolist() if i not in (0, tok.sot_token_id, tok.eot_token_id)]).strip()
            for row in ids] == PROMPTS
    dual = DualTokenizer(shapes_word_tokenizer(), tok, teacher_max_len=16, student_context=32)
    enc = dual.encode(PROMPTS)
    assert torch.equal(enc["student_input_ids"], ids)  # what the datamodule hands the student
    teacher_ids = enc["teacher_input_ids"]
    n = int(teacher_ids.shape[1])
    assert not torch.equal(teacher_ids, ids[:, :n])  # a word-level tokenizer gives other ids (F22)
    assert ids.max() >= text.text.vocab_size - 2  # CLIP BPE: start / end of text are ids 49406 / 49407
    tokens, pooled = text(ids)
    assert tokens.shape == (3, 32, 32) and pooled.shape == (3, 32)
    with pytest.raises(ValueError, match="L <= 32"):
        text(torch.zeros(1, 33, dtype=torch.long))


def test_gradients_reach_every_part(model: Student, ids: torch.Tensor) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(_images(2), ids[:2])
    loss = sum(out[k].float().square().mean() for k in (*OUTPUT_KEYS, "image_features"))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"
    for part in (model.image_encoder, model.text_encoder, model.decoder):
        assert sum(float(p.grad.abs().sum()) for p in part.parameters()) > 0
    model.zero_grad(set_to_none=True)
    model.eval()


def test_unused_trailing_blocks_are_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's MobileNetV3Features builds every block whatever out_indices ask; without the trim the blocks past
    stride 16 never get a gradient (the TrainingHealth guard would stop the run)."""

    def grads_missing() -> list[str]:
        enc = ImageEncoder(name="mobilenetv3_small_050", out_dim=8, out_indices=(2, 3))
        enc(_images(2, size=32)).sum().backward()
        return [n for n, p in enc.named_parameters() if p.grad is None]

    assert grads_missing() == []
    monkeypatch.setattr(student_mod, "_trim_unused_blocks", lambda model: None)
    assert any(n.startswith("backbone.blocks.") for n in grads_missing())


def test_parts_export_with_plain_tensor_signatures(model: Student, ids: torch.Tensor) -> None:
    """Each part exports on its own (the deployment issue exports them separately); exported == eager."""
    model.eval()
    images = _images(2)
    with torch.no_grad():
        features = model.image_encoder(images)
        tokens, pooled, pad = model.encode_text(ids[:2])
        eager_dec = model.decoder(features, tokens, pooled, pad)
    cases = [(model.image_encoder, (images,), (features,)), (model.text_encoder, (ids[:2],), (tokens, pooled)),
             (model.decoder, (features, tokens, pooled, pad), tuple(eager_dec[k] for k in OUTPUT_KEYS))]
    for part, args, eager in cases:
        exported = torch.export.export(part, args).module()
        with torch.no_grad():
            got = exported(*args)
        got = tuple(got[k] for k in OUTPUT_KEYS) if isinstance(got, dict) else got
        got = got if isinstance(got, tuple) else (got,)
        for a, b in zip(got, eager, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_prompt_change_changes_the_outputs(model: Student, ids: torch.Tensor) -> None:
    model.eval()
    images = _images(1).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(images, ids[:2])  # one image, "red cube" vs "blue sphere"
        same = model(images, ids[:1].expand(2, -1))
    for key in OUTPUT_KEYS:
        assert not torch.allclose(out[key][0], out[key][1], rtol=0, atol=1e-6), key
        torch.testing.assert_close(same[key][0], same[key][1])
    # the text reaches the decoder's cross-attention memory too: with the pooled paths (FiLM, query offset,
    # scoring) made prompt-blind, the text tokens alone still change the query logits
    dec = model.decoder
    with torch.no_grad():
        features = model.image_encoder(images)
        tokens, pooled, pad = model.encode_text(ids[:2])
        blind = dec(features, tokens, pooled[:1].expand(2, -1), pad)
    assert not torch.allclose(blind["pred_logits"][0], blind["pred_logits"][1], rtol=0, atol=1e-6)


def _no_local_weights(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def test_pretrained_without_a_local_file_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _no_local_weights(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match="mobilenetv3_small_050.*local hub cache.*HF_HUB_OFFLINE=1"):
        ImageEncoder(name="mobilenetv3_small_050", pretrained=True)
    with pytest.raises(ConfigError, match="weight file not found"):
        ImageEncoder(name="mobilenetv3_small_050", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="MobileCLIP-S1.*datacompdr.*local hub cache.*HF_HUB_OFFLINE=1"):
        TextEncoder(model_name="MobileCLIP-S1", pretrained=True)
    with pytest.raises(ConfigError, match="neither a weight file nor a tag"):
        TextEncoder(model_name="MobileCLIP-S1", pretrained=str(tmp_path / "missing.bin"))


def test_pretrained_image_encoder_loads_a_local_file(tmp_path) -> None:
    import timm

    source = timm.create_model("mobilenetv3_small_050", pretrained=False)
    path = tmp_path / "mnv3.pth"
    torch.save(source.state_dict(), path)
    enc = ImageEncoder(name="mobilenetv3_small_050", pretrained=str(path), out_dim=8)
    torch.testing.assert_close(enc.backbone.conv_stem.weight, source.conv_stem.weight)
    torch.testing.assert_close(enc.backbone.blocks[1][0].conv_pw.weight, source.blocks[1][0].conv_pw.weight)


def test_truncated_context_keeps_a_causal_tower_exact() -> None:
    """Pretrained towers come with 77 positions; cutting to 32 must not change a causal tower's features."""
    full = TextEncoder(model_name="MobileCLIP-B", context_length=77, width=16, layers=1, heads=2, out_dim=8).eval()
    ids77 = full.tokenizer()(PROMPTS, context_length=77)
    with torch.no_grad():
        tokens77, pooled77 = full(ids77)
        student_mod._truncate_context(full.text, 32)
        tokens32, pooled32 = full(ids77[:, :32])
    torch.testing.assert_close(pooled32, pooled77)
    torch.testing.assert_close(tokens32, tokens77[:, :32])
    with pytest.raises(ConfigError, match="exceeds"):
        student_mod._truncate_context(full.text, 40)


def test_bad_parts_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="not a timm model"):
        ImageEncoder(name="no_such_net")
    with pytest.raises(ConfigError, match="not an open_clip model"):
        TextEncoder(model_name="no-such-clip")
    with pytest.raises(ConfigError, match="cannot be used with pretrained"):
        TextEncoder(pretrained=True, width=16)
    with pytest.raises(ConfigError, match="divisible"):
        PromptDecoder(dim=30, heads=4)
    with pytest.raises(ConfigError, match="image_encoder.out_dim=16 must equal decoder.dim=32"):
        Student(ImageEncoder(name="mobilenetv3_small_050", out_dim=16),
                TextEncoder(width=16, layers=1, heads=2, out_dim=32), PromptDecoder(dim=32))


def test_student_is_built_from_class_path_config() -> None:
    """Parts by constructor: jsonargparse builds the student from nested class_path / init_args."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--student", type=Student)
    base = "lit_experiments.studies.distill.components.student"
    cfg = parser.parse_object({"student": {"class_path": f"{base}.Student", "init_args": {
        "dim": 16,  # the width said once: every part is built with it
        "image_encoder": {"class_path": f"{base}.ImageEncoder",
                          "init_args": {"name": "mobilenetv3_small_050", "image_size": 64}},
        "text_encoder": {"class_path": f"{base}.TextEncoder", "init_args": {"width": 16, "layers": 1, "heads": 2}},
        "decoder": {"class_path": f"{base}.PromptDecoder", "init_args": {"num_queries": 4, "fusion_layers": 0}}}}})
    built = parser.instantiate_classes(cfg).student
    assert isinstance(built, Student) and built.decoder.num_queries == 4 and built.decoder.fusion is None
    assert built.image_encoder.feature_dim == built.text_encoder.out_dim == built.decoder.dim == 16
    assert built.image_encoder.name == "mobilenetv3_small_050" and built.text_encoder.context_length == 32
    ids = built.text_encoder.tokenizer()(["red cube"], context_length=32)
    assert built.eval()(_images(1), ids)["pred_logits"].shape == (1, 4)


def test_tiny_student_is_tiny(model: Student) -> None:
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters()) < 1_000_000
    assert counts["text_encoder"] > counts["image_encoder"]  # the 49408-token BPE table dominates
