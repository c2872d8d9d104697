"""The SAM3 teacher: tiny Sam3Model output contract, frozen, its own tokenizer, checkpoint loading and errors."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_convert

from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import CATEGORIES
from lit_experiments.studies.distill.components.teacher import (
    OUTPUT_KEYS,
    TEACHER_VOCAB,
    Sam3Teacher,
    shapes_word_tokenizer,
    tiny_config,
)

CFG = tiny_config(image_size=32, patch_size=8, hidden=32, vit_layers=1, heads=2, num_queries=4, decoder_layers=1,
                  text_layers=1, text_len=8)


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_tiny_teacher_forward_follows_the_output_contract() -> None:
    teacher = Sam3Teacher(config=CFG)
    text = teacher.tokenize(["circle", "a red square", "object"])
    out = teacher(images=_images(), **text)
    assert set(out) == set(OUTPUT_KEYS)
    assert out["pred_masks"].shape == (3, 4, 8, 8)  # scale 2 x (32 px / patch 8) = 8 px masks
    assert out["pred_boxes"].shape == (3, 4, 4) and out["pred_logits"].shape == (3, 4)
    assert out["presence_logits"].shape == (3,)
    raw = teacher.model(pixel_values=teacher.image_inputs(_images()), **text)
    # SAM3 returns xyxy; the contract is cxcywh of the same boxes
    torch.testing.assert_close(out["pred_boxes"], box_convert(raw.pred_boxes, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_convert(out["pred_boxes"], "cxcywh", "xyxy"), raw.pred_boxes)
    assert not torch.allclose(out["pred_boxes"], raw.pred_boxes)
    torch.testing.assert_close(out["presence_logits"], raw.presence_logits[:, 0])
    torch.testing.assert_close(out["pred_masks"], raw.pred_masks)
    # uint8 images and processed pixel values give the same outputs; resizing happens for other sizes
    again = teacher(pixel_values=teacher.image_inputs(_images()), **text)
    torch.testing.assert_close(again["pred_logits"], out["pred_logits"])
    assert teacher.image_inputs(_images(2, 48)).shape == (2, 3, 32, 32)
    px = teacher.image_inputs(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 32, 2))
    assert float(px.min()) == pytest.approx(-1.0, abs=0.02) and float(px.max()) == pytest.approx(1.0, abs=0.02)


def test_teacher_is_frozen_no_gradient_reaches_it() -> None:
    teacher = Sam3Teacher(config=CFG)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training
    student = torch.nn.Parameter(torch.zeros(3, 4))
    out = teacher(images=_images(), **teacher.tokenize(["circle", "star", "cross"]))
    assert all(not v.requires_grad for v in out.values())
    loss = ((student - out["pred_logits"]) ** 2).sum() + (student.sum() * out["presence_logits"].sum())
    loss.backward()
    assert student.grad is not None and all(p.grad is None for p in teacher.parameters())
    # even the gradient-enabled path cannot train it while frozen
    assert not teacher.predict(images=_images(), **teacher.tokenize(["a", "b c", "star"]))["pred_masks"].requires_grad


def test_word_tokenizer_round_trips_and_differs_from_the_students_open_clip() -> None:
    import open_clip

    tok = shapes_word_tokenizer()
    prompts = ["circle", "a red metal star", "hexagons", "object"]
    teacher = Sam3Teacher(config=CFG)
    ids = teacher.tokenize(prompts)
    assert ids["input_ids"].shape == (4, 8) and ids["attention_mask"].shape == (4, 8)
    for p, row, mask in zip(prompts, ids["input_ids"], ids["attention_mask"]):
        assert tok.decode(row[mask.bool()], skip_special_tokens=True) == p  # F23: the ids are the prompt's
        assert 3 not in row.tolist()  # no <unk>: the vocabulary covers ShapesWorld's words
    assert all(c in TEACHER_VOCAB for c in CATEGORIES)
    student = open_clip.get_tokenizer("MobileCLIP2-S0")(prompts, context_length=8)
    assert not torch.equal(student, ids["input_ids"])  # F22: another tokenizer, other ids for the same strings
    with pytest.raises(ValueError, match="empty prompt"):
        teacher.tokenize(["circle", "  "])
    with pytest.raises(ValueError, match="exceed the teacher's context of 8"):
        teacher.tokenize(["a red circle and a blue square and a star"])


def test_weights_digest_and_cache_key_follow_the_weights() -> None:
    a, b = Sam3Teacher(config=CFG, init_seed=0), Sam3Teacher(config=CFG, init_seed=0)
    assert a.cache_key() == b.cache_key()
    assert a.cache_key() != Sam3Teacher(config=CFG, init_seed=1).cache_key()
    with torch.no_grad():
        next(b.model.parameters()).add_(1e-3)
    assert a.cache_key() != b.cache_key()
    other = tiny_config(image_size=32, patch_size=8, hidden=32, vit_layers=1, heads=2, num_queries=5,
                        decoder_layers=1, text_layers=1, text_len=8)
    assert Sam3Teacher(config=other).cache_key().split(":")[1] != a.cache_key().split(":")[1]
    s = a.settings()
    assert s["num_queries"] == 4 and s["image_size"] == 32 and s["model_class"] == "Sam3Model"


def test_checkpoint_round_trip_from_a_local_directory(tmp_path) -> None:
    teacher = Sam3Teacher(config=CFG)
    teacher.model.save_pretrained(tmp_path / "ckpt")
    teacher.tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = Sam3Teacher(checkpoint=str(tmp_path / "ckpt"))
    assert loaded.weights_digest() == teacher.weights_digest()
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.model.training
    text = loaded.tokenize(["circle", "square", "star"])
    torch.testing.assert_close(loaded(images=_images(), **text)["pred_masks"],
                               teacher(images=_images(), **teacher.tokenize(["circle", "square", "star"]))["pred_masks"])
    assert loaded.cache_key().startswith(f"sam3:{tmp_path / 'ckpt'}:")


def test_missing_checkpoint_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.*not a directory"):
        Sam3Teacher(checkpoint=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load checkpoint .*empty.* as Sam3Model"):
        Sam3Teacher(checkpoint=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=1"):  # not in the hub cache, and tests are offline
        Sam3Teacher(checkpoint="no-such-owner/no-such-sam3")
    with pytest.raises(ConfigError, match="exactly one of checkpoint"):
        Sam3Teacher()
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        tiny_config(image_size=30, patch_size=8)


def test_tiny_config_initialises_every_part_so_outputs_depend_on_image_and_prompt() -> None:
    cfg = tiny_config(image_size=32, patch_size=8, hidden=32, vit_layers=1, heads=2, num_queries=4)
    subs = [cfg["vision_config"]["backbone_config"], cfg["vision_config"], cfg["text_config"],
            cfg["detr_encoder_config"], cfg["detr_decoder_config"], cfg["mask_decoder_config"]]
    assert all(sub["initializer_range"] == pytest.approx(32 ** -0.5) for sub in subs)
    teacher = Sam3Teacher(config=cfg)
    images = _images(6)
    over_images = teacher(images=images, **teacher.tokenize(["circle"] * 6))
    over_prompts = teacher(images=images[:1].expand(6, -1, -1, -1),
                           **teacher.tokenize(["circle", "square", "star", "cross", "hexagon", "triangle"]))
    for out in (over_images, over_prompts):  # with SAM3's 0.02 in the sub-configs the presence std is < 1e-4
        assert float(out["presence_logits"].std()) > 1e-2
        assert float(out["pred_logits"].std(0).mean()) > 1e-2
