"""Frozen backbones: each named model builds offline, documented shapes, frozen, eval-locked, F01."""
import pytest
import torch

from lit_experiments.backbones import BackboneWeightsError, FrozenBackbone, build_backbone

TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}
TINY_CLIP = {"vision_cfg": {"layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"layers": 1, "width": 16, "heads": 2}, "embed_dim": 16}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# name, build kwargs, input side, expected grid, expected width, expected (mean, std)
CASES = [
    ("vit_small_patch14_dinov2", {"img_size": 56, "model_kwargs": TINY_VIT}, 56, (4, 4), 32, IMAGENET),
    ("vit_small_patch16_224.dino", {"img_size": 32, "model_kwargs": TINY_VIT}, 32, (2, 2), 32, IMAGENET),
    ("vit_base_patch16_clip_224.openai", {"img_size": 32, "model_kwargs": TINY_VIT}, 32, (2, 2), 32, OPENAI),
    ("open_clip:ViT-B-16", {"img_size": 32, "model_kwargs": TINY_CLIP}, 32, (2, 2), 32, OPENAI),
    ("resnet18", {}, 64, (2, 2), 512, IMAGENET),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    name, kwargs, side, grid, width, norm = request.param
    return build_backbone(name, pretrained=False, **kwargs), side, grid, width, norm


def test_builds_offline_with_documented_shapes(case):
    bb, side, grid, width, (mean, std) = case
    assert isinstance(bb, FrozenBackbone)
    feats = bb.features(torch.rand(2, 3, side, side))
    assert feats.shape == (2, grid[0] * grid[1], width)
    assert bb.grid_size(side, side) == grid and bb.out_dim == width and bb.layers
    assert bb.mean == pytest.approx(mean, abs=1e-6) and bb.std == pytest.approx(std, abs=1e-6)
    assert torch.isfinite(feats).all()
    video = bb.features(torch.rand(1, 2, 3, side, side))
    assert video.shape == (1, 2, grid[0] * grid[1], width)


def test_frozen_and_eval_locked(case):
    bb = case[0]
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and not any(m.training for m in bb.modules())
    torch.nn.Sequential(bb).train(True)
    assert not any(m.training for m in bb.modules())
    with pytest.raises(RuntimeError, match="cannot be made trainable"):
        bb.requires_grad_(True)


def test_f01_features_never_require_grad(case):
    """F01: a frozen backbone's output is a safe target even when the input requires grad."""
    bb, side = case[0], case[1]
    x = torch.rand(2, 3, side, side, requires_grad=True)
    with torch.enable_grad():
        feats = bb.features(x)
        out = bb(x)
    assert not feats.requires_grad and feats.grad_fn is None and not out.requires_grad
    trainable = torch.nn.Linear(feats.shape[-1], feats.shape[-1])
    loss = ((trainable(feats) - feats) ** 2).mean()  # the target feeds the loss, not the graph
    loss.backward()
    assert trainable.weight.grad is not None and x.grad is None


def test_cache_key_names_weights_layers_and_size(case):
    bb = case[0]
    key = bb.cache_key()
    assert bb.name in key and str(bb.layers) in key and bb.weights_fingerprint() in key


def test_normalisation_is_applied_inside():
    torch.manual_seed(0)
    bb = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY_VIT)
    x = torch.rand(1, 3, 28, 28)
    mean, std = torch.tensor(bb.mean).view(1, 3, 1, 1), torch.tensor(bb.std).view(1, 3, 1, 1)
    manual = bb.model.forward_intermediates((x - mean) / std, indices=bb.layers, output_fmt="NLC",
                                           intermediates_only=True)[0]
    assert torch.allclose(bb.features(x), manual, atol=1e-5)
    with pytest.raises(ValueError, match=r"expects images in \[0,1\].*normalised already"):
        bb.features((x - mean) / std)
    assert torch.allclose(bb.features((x * 255).to(torch.uint8)), bb.features((x * 255).to(torch.uint8).float() / 255))


def test_layers_concat_and_mean():
    torch.manual_seed(0)
    cat = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY_VIT, layers=[0, -1])
    torch.manual_seed(0)
    mean = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY_VIT, layers=[0, -1],
                          layer_reduce="mean")
    x = torch.rand(2, 3, 28, 28)
    fc, fm = cat.features(x), mean.features(x)
    assert cat.layers == [0, 1] and fc.shape == (2, 4, 64) and fm.shape == (2, 4, 32)
    assert torch.allclose(fm, (fc[..., :32] + fc[..., 32:]) / 2, atol=1e-6)
    assert cat.cache_key() != mean.cache_key()
    cnn = build_backbone("resnet18", layers=[2, 4])
    assert cnn.features(torch.rand(1, 3, 64, 64)).shape == (1, 4, 128 + 512)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY_VIT, layers=[5])


def test_pretrained_true_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never reach the hub from a test
    with pytest.raises(BackboneWeightsError, match="vit_small_patch14_dinov2.*HF_HUB_OFFLINE=1.*pretrained=PATH"):
        build_backbone("vit_small_patch14_dinov2", pretrained=True, img_size=28, model_kwargs=TINY_VIT)


def test_pretrained_path_loads_and_missing_path_is_named(tmp_path):
    torch.manual_seed(1)
    src = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY_VIT)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": src.model.state_dict()}, path)
    loaded = build_backbone("vit_small_patch14_dinov2", pretrained=str(path), img_size=28, model_kwargs=TINY_VIT)
    x = torch.rand(1, 3, 28, 28)
    assert torch.equal(src.features(x), loaded.features(x))
    assert str(path.resolve()) in loaded.cache_key() and loaded.weights_fingerprint() == src.weights_fingerprint()
    missing = tmp_path / "nope.pth"
    with pytest.raises(BackboneWeightsError, match=f"vit_small_patch14_dinov2.*{missing}"):
        build_backbone("vit_small_patch14_dinov2", pretrained=str(missing), img_size=28, model_kwargs=TINY_VIT)
    with pytest.raises(BackboneWeightsError, match=f"resnet18.*{missing}"):
        build_backbone("resnet18", pretrained=str(missing))


def test_random_inits_get_distinct_cache_keys_and_unknown_name_fails():
    a = build_backbone("resnet18", model_kwargs={"layers": [1, 1, 1, 1]})
    b = build_backbone("resnet18", model_kwargs={"layers": [1, 1, 1, 1]})
    assert a.cache_key() != b.cache_key()
    with pytest.raises(ValueError, match="unknown backbone 'not_a_model'"):
        build_backbone("not_a_model")


def test_f01_outside_unfreezing_is_undone_with_a_warning():
    """F01: a trainable glob that thaws the backbone cannot make its output a trainable target."""
    bb = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY_VIT)
    host = torch.nn.ModuleDict({"backbone": bb, "head": torch.nn.Linear(32, 2)})
    for p in host.parameters():  # what a careless "trainable: ['*']" would do
        p.requires_grad = True
    with pytest.warns(UserWarning, match="set trainable from outside"):
        feats = bb.features(torch.rand(1, 3, 28, 28))
    assert not feats.requires_grad and not any(p.requires_grad for p in bb.parameters())
