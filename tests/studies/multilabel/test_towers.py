"""Frozen SigLIP / SigLIP2 towers built from tiny configs (offline, no downloads)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import ShapesWorld
from lit_experiments.studies.multilabel.towers import SHAPES_VOCAB, Siglip2Towers, SiglipTowers, tiny_config

CFG = tiny_config(image_size=16, patch_size=8, hidden=32, vision_layers=1, text_layers=1, heads=2, text_len=12)
CFG2 = {"text_config": dict(CFG["text_config"]),
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "patch_size": 8, "num_patches": 4}}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    world = ShapesWorld(4, image_size=16, motion=False)
    return torch.stack([world[i]["image"] for i in range(4)])


@pytest.fixture(scope="module")
def towers() -> SiglipTowers:
    return SiglipTowers(config=CFG)


def test_shapes_and_model_class(towers: SiglipTowers, images: torch.Tensor) -> None:
    assert type(towers.model).__name__ == "SiglipModel"
    img = towers.encode_image(**towers.image_inputs(images))
    txt = towers.encode_text(**towers.tokenize(["a red circle", "a square and a star", "a cross", "an hexagon"]))
    assert img.shape == (4, 32) and txt.shape == (4, 32)
    assert not img.requires_grad and not txt.requires_grad


def test_siglip2_naflex_builds_offline(images: torch.Tensor) -> None:
    t = Siglip2Towers(config=CFG2)
    assert type(t.model).__name__ == "Siglip2Model" and t.kind == "siglip2"
    assert t.image_size == 16  # the patch budget's square: patch 8 x sqrt(4 patches)
    inputs = t.image_inputs(images)
    assert inputs["pixel_values"].shape == (4, 4, 3 * 8 * 8)
    assert inputs["spatial_shapes"].tolist() == [[2, 2]] * 4
    assert t.encode_image(**inputs).shape == (4, 32)
    with pytest.raises(ValueError, match="spatial_shapes"):
        t.encode_image(inputs["pixel_values"])


def test_no_gradient_reaches_the_towers(towers: SiglipTowers, images: torch.Tensor) -> None:
    towers.train()
    assert not towers.model.training  # a Trainer's .train() leaves the towers in eval mode
    head = nn.Linear(64, 3)
    img = towers.encode_image(**towers.image_inputs(images))
    txt = towers.encode_text(**towers.tokenize(["a circle"] * 4))
    loss = head(torch.cat([img, txt], 1)).pow(2).mean()
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in towers.parameters())
    assert SiglipTowers.always_frozen


def test_deterministic(images: torch.Tensor) -> None:
    a, b = SiglipTowers(config=CFG, init_seed=3), SiglipTowers(config=CFG, init_seed=3)
    x = a.image_inputs(images)
    torch.testing.assert_close(a.encode_image(**x), a.encode_image(**x), rtol=0, atol=0)
    torch.testing.assert_close(a.encode_image(**x), b.encode_image(**x), rtol=0, atol=0)
    assert a.cache_key() == b.cache_key()
    assert SiglipTowers(config=CFG, init_seed=4).cache_key() != a.cache_key()


def test_text_mask_policy_recorded_and_applied(towers: SiglipTowers) -> None:
    assert towers.settings()["text_mask_policy"] == "pad_to_max"  # how SigLIP was trained
    tok = towers.tokenize(["a circle", "a red metal square and a blue rubber star"])
    assert set(tok) == {"input_ids"} and tok["input_ids"].shape == (2, 12)
    assert tok["input_ids"][0].tolist()[:3] == [SHAPES_VOCAB.index("a"), SHAPES_VOCAB.index("circle"), 1]
    assert tok["input_ids"][0, 3:].eq(0).all()  # padded with pad id 0 up to the maximum length
    mask = (tok["input_ids"] != 0).long()
    # pad_to_max never uses a mask: passing one changes nothing
    torch.testing.assert_close(towers.encode_text(tok["input_ids"], mask), towers.encode_text(tok["input_ids"]))
    masked = SiglipTowers(config=CFG, text_mask_policy="attention_mask")
    assert masked.settings()["text_mask_policy"] == "attention_mask"
    tok2 = masked.tokenize(["a circle", "a red metal square and a blue rubber star"])
    assert set(tok2) == {"input_ids", "attention_mask"} and tok2["input_ids"].shape[1] < 12
    assert masked.cache_key() != towers.cache_key()
    padded = tok["input_ids"][:1]
    assert not torch.allclose(masked.encode_text(padded, mask[:1]), masked.encode_text(padded))


def test_cache_key_changes_with_weights(images: torch.Tensor) -> None:
    t = SiglipTowers(config=CFG)
    key = t.cache_key()
    with torch.no_grad():
        t.model.vision_model.post_layernorm.weight.add_(0.01)
    assert t.cache_key() != key
    assert t.settings()["weights_digest"] in t.cache_key()


def test_get_image_features_tensor_or_output(towers: SiglipTowers, images: torch.Tensor,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    x = towers.image_inputs(images)
    expected = towers.model.get_image_features(**x).pooler_output
    torch.testing.assert_close(towers.encode_image(**x), expected)
    monkeypatch.setattr(towers.model, "get_image_features", lambda **kw: expected + 1)
    torch.testing.assert_close(towers.encode_image(**x), expected + 1)


def test_checkpoint_roundtrip_offline(tmp_path, images: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = SiglipTowers(config=CFG, init_seed=7)
    src.model.save_pretrained(tmp_path / "ckpt")
    src.tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = SiglipTowers(checkpoint=str(tmp_path / "ckpt"))
    x = src.image_inputs(images)
    torch.testing.assert_close(loaded.encode_image(**x), src.encode_image(**x))
    texts = ["a circle and a star"]
    torch.testing.assert_close(loaded.encode_text(**loaded.tokenize(texts)), src.encode_text(**src.tokenize(texts)))
    assert loaded.settings()["checkpoint"] == str(tmp_path / "ckpt")
    assert all(not p.requires_grad for p in loaded.parameters())


def test_bad_arguments_are_named(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TypeError, match="kind"):  # the class is the switch: no string picks the model class
        SiglipTowers(config=CFG, kind="clip")
    with pytest.raises(ConfigError, match="text_mask_policy='none'"):
        SiglipTowers(config=CFG, text_mask_policy="none")
    with pytest.raises(ConfigError, match="exactly one"):
        SiglipTowers()
    with pytest.raises(ConfigError, match="missing-dir"):
        SiglipTowers(checkpoint=str(tmp_path / "missing-dir"))
