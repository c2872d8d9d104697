"""Heads of the multi-label study: shapes of every variant, sizes from `build`, the AGCH-style parts."""
from __future__ import annotations

import itertools

import pytest
import torch

from lit_experiments.core.errors import ConfigError
from lit_experiments.studies.multilabel.heads import AGCHHead, MLPHead
from lit_experiments.studies.multilabel.losses import CombinedLoss, MultiLabelLoss

B, DI, DT, C = 6, 12, 10, 5


def _embs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, DI, generator=g), torch.randn(B, DT, generator=g),
            (torch.rand(B, C, generator=g) < 0.4).float())


def _built(head: torch.nn.Module, text_dim: int | None = DT) -> torch.nn.Module:
    head.build(DI, text_dim, C)
    return head


@pytest.mark.parametrize("inputs,hidden", [("image+text", [16]), ("image+text", [16, 8]), ("image", [16]),
                                           ("image+text", [])])
def test_mlp_head_shapes_and_build_sizes(inputs: str, hidden: list[int]) -> None:
    image, text, _ = _embs()
    head = _built(MLPHead(hidden=hidden, dropout=0.0, inputs=inputs))
    out = head(image, text if inputs == "image+text" else None)
    in_dim = DI + (DT if inputs == "image+text" else 0)
    assert out["logits"].shape == (B, C)
    assert out["fused"].shape == (B, hidden[-1] if hidden else in_dim)
    assert head.fused_dim == out["fused"].shape[1]
    first = next(m for m in head.modules() if isinstance(m, torch.nn.Linear))
    assert first.in_features == in_dim  # the input width comes from build, not from the config
    assert head.classifier.out_features == C
    # the classifier is a plain Linear on `fused` (no dropout on the logits)
    torch.testing.assert_close(head.classifier(out["fused"]), out["logits"])


def test_mlp_head_image_only_ignores_text_and_concat_uses_it() -> None:
    image, text, _ = _embs()
    img_only = _built(MLPHead(hidden=[8], dropout=0.0, inputs="image")).eval()
    torch.testing.assert_close(img_only(image, text)["logits"], img_only(image, None)["logits"])
    both = _built(MLPHead(hidden=[8], dropout=0.0)).eval()
    assert not torch.allclose(both(image, text)["logits"], both(image, text + 1.0)["logits"])
    with pytest.raises(ValueError, match="text_emb=None"):
        both(image, None)


VARIANTS = list(itertools.product(["hadamard", "concat"], [64, 7, None], ["image+text", "image"]))


@pytest.mark.parametrize("fusion,bits,inputs", VARIANTS)
def test_agch_head_shapes_of_every_variant(fusion: str, bits: int | None, inputs: str) -> None:
    image, text, _ = _embs()
    dim = 16
    head = _built(AGCHHead(dim=dim, fusion=fusion, hash_bits=bits, inputs=inputs)).eval()
    out = head(image, text if inputs == "image+text" else None)
    fused_dim = 2 * dim if (fusion == "concat" and inputs == "image+text") else dim
    assert out["logits"].shape == (B, C)
    assert out["fused"].shape == (B, fused_dim) == (B, head.fused_dim)
    assert out["image_direction"].shape == out["image_magnitude"].shape == (B, dim)
    assert ("text_direction" in out) == (inputs == "image+text")
    assert ("hash" in out) == ("codes" in out) == (bits is not None)
    if bits is not None:
        assert out["hash"].shape == out["codes"].shape == (B, bits)
    assert head.image.direction.in_features == DI
    if inputs == "image+text":
        assert head.text.direction.in_features == DT
    else:
        assert head.text is None


def test_hadamard_is_the_product_and_concat_the_concatenation_of_the_modalities() -> None:
    image, text, _ = _embs()
    for fusion in ("hadamard", "concat"):
        torch.manual_seed(0)
        out = _built(AGCHHead(dim=8, fusion=fusion, hash_bits=None)).eval()(image, text)
        z_img = out["image_direction"] * out["image_magnitude"]
        z_txt = out["text_direction"] * out["text_magnitude"]
        expected = z_img * z_txt if fusion == "hadamard" else torch.cat([z_img, z_txt], dim=1)
        torch.testing.assert_close(out["fused"], expected)
    image_only = _built(AGCHHead(dim=8, inputs="image", hash_bits=None), text_dim=None).eval()(image)
    z_img = image_only["image_direction"] * image_only["image_magnitude"]
    torch.testing.assert_close(image_only["fused"], z_img)


def test_hash_layer_outputs_in_open_interval_codes_are_signs_and_feed_the_classifier() -> None:
    image, text, _ = _embs()
    head = _built(AGCHHead(dim=16, hash_bits=32))
    train_out = head.train()(image, text)
    assert "codes" not in train_out  # codes are an eval-time output (kNN over Hamming distance)
    out = head.eval()(image, text)
    h = out["hash"]
    assert h.abs().max() < 1.0
    assert set(out["codes"].unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(out["codes"], torch.where(h >= 0, 1.0, -1.0))
    assert not out["codes"].requires_grad
    # with a hash layer the classifier reads the hash (the seed's bottleneck), without one it reads `fused`
    torch.testing.assert_close(head.classifier(h), out["logits"])
    no_hash = _built(AGCHHead(dim=16, hash_bits=None)).eval()
    plain = no_hash(image, text)
    torch.testing.assert_close(no_hash.classifier(plain["fused"]), plain["logits"])


@pytest.mark.parametrize("head", [MLPHead(hidden=[16]), AGCHHead(dim=8, hash_bits=16),
                                  AGCHHead(dim=8, fusion="concat", hash_bits=None),
                                  AGCHHead(dim=8, inputs="image")], ids=["mlp", "agch", "agch-concat-nohash",
                                                                          "agch-image"])
def test_gradient_reaches_every_head_parameter(head: torch.nn.Module) -> None:
    image, text, y = _embs()
    _built(head).train()
    loss = CombinedLoss(MultiLabelLoss("asl"), cosine_weight=0.5,
                        hash_weight=0.1 if getattr(head, "hash_bits", None) else 0.0)
    loss(head(image, text), y)["loss"].backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_positive_scaling_of_an_embedding_changes_only_its_magnitude_path() -> None:
    image, text, _ = _embs()
    head = _built(AGCHHead(dim=16, hash_bits=8)).eval()
    out, scaled = head(image, text), head(image * 3.7, text)
    torch.testing.assert_close(scaled["image_direction"], out["image_direction"])
    torch.testing.assert_close(scaled["text_direction"], out["text_direction"])
    torch.testing.assert_close(scaled["text_magnitude"], out["text_magnitude"])
    assert not torch.allclose(scaled["image_magnitude"], out["image_magnitude"])
    assert not torch.allclose(scaled["logits"], out["logits"])  # the magnitude reaches the prediction


def test_build_fixes_sizes_once_and_checks_them() -> None:
    image, text, _ = _embs()
    for head in (MLPHead(), AGCHHead()):
        with pytest.raises(RuntimeError, match="build"):
            head(image, text)
        _built(head)
        params = [id(p) for p in head.parameters()]
        head.build(DI, DT, C)  # same sizes: a no-op, the parameters stay
        assert [id(p) for p in head.parameters()] == params
        with pytest.raises(ConfigError, match="already built"):
            head.build(DI + 1, DT, C)
    with pytest.raises(ConfigError, match="text_dim"):
        AGCHHead().build(DI, None, C)
    with pytest.raises(ConfigError, match="text_dim"):
        MLPHead().build(DI, None, C)
    AGCHHead(inputs="image").build(DI, None, C)  # image-only needs no text width


@pytest.mark.parametrize("make,match", [
    (lambda: AGCHHead(fusion="sum"), "fusion='sum'"),
    (lambda: AGCHHead(hash_bits=0), "hash_bits=0"),
    (lambda: AGCHHead(inputs="text"), "inputs='text'"),
    (lambda: AGCHHead(dim=0), "dim=0"),
    (lambda: MLPHead(hidden=[0]), "hidden"),
    (lambda: MLPHead(dropout=1.5), "dropout=1.5"),
    (lambda: MLPHead(inputs="txt"), "inputs='txt'"),
])
def test_bad_head_options_are_config_errors(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_heads_are_built_from_class_path_configs() -> None:
    """A head is a part by constructor: jsonargparse instantiates it from class_path / init_args (an
    ablation such as AB-1 is the YAML delta `hash_bits: null`)."""
    from argparse import ArgumentError

    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--head", type=MLPHead | AGCHHead)
    cfg = parser.parse_object({"head": {"class_path": "lit_experiments.studies.multilabel.heads.AGCHHead",
                                        "init_args": {"hash_bits": None, "fusion": "concat", "dim": 8}}})
    head = parser.instantiate_classes(cfg).head
    assert isinstance(head, AGCHHead) and head.hash_bits is None and head.fusion == "concat"
    cfg = parser.parse_object({"head": {"class_path": "lit_experiments.studies.multilabel.heads.MLPHead",
                                        "init_args": {"hidden": [32, 16], "inputs": "image"}}})
    head = parser.instantiate_classes(cfg).head
    assert isinstance(head, MLPHead) and head.hidden == [32, 16] and head.inputs == "image"
    with pytest.raises(ArgumentError, match="fusion"):  # a value outside the Literal is rejected
        parser.parse_object({"head": {"class_path": "lit_experiments.studies.multilabel.heads.AGCHHead",
                                      "init_args": {"fusion": "sum"}}})
