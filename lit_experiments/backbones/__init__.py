"""Frozen feature extractors behind one interface (:class:`FrozenBackbone`).

``build_backbone(name, pretrained=False, layers=None, img_size=None, model_kwargs=None)``:

* timm ViTs: ``vit_small_patch14_dinov2``, ``vit_small_patch16_224.dino``,
  ``vit_base_patch16_clip_224.openai`` (any timm ViT with ``blocks``), optionally ``timm:`` prefixed;
* open_clip visual towers: ``open_clip:ViT-B-16`` (``open_clip:ViT-B-16@openai`` picks the weights tag);
* timm CNNs: ``resnet18`` (any timm model without ``blocks``), feature map flattened to tokens.

Other names come from the registry (``lit_experiments.registry``): a study registers its own
backbones in its ``plugin.py``.

``pretrained``: ``False`` random init, ``True`` hub cache (``HF_HUB_OFFLINE`` honoured), or a PATH to a
local weight file. ``model_kwargs`` are passed to the model constructor (tiny test variants:
``build_backbone("vit_small_patch14_dinov2", img_size=56, model_kwargs={"depth": 2, "embed_dim": 48,
"num_heads": 2})``). Extra keyword arguments (``layer_reduce``, ``final_norm``) go to the wrapper.
"""
from __future__ import annotations

from collections.abc import Sequence

from lit_experiments import registry

from .base import BackboneWeightsError, FrozenBackbone
from .cnn import TimmCNNBackbone
from .open_clip import OpenCLIPBackbone
from .timm_vit import TimmViTBackbone

__all__ = [
    "BackboneWeightsError", "FrozenBackbone", "OpenCLIPBackbone", "TimmCNNBackbone", "TimmViTBackbone",
    "build_backbone", "KNOWN_BACKBONES",
]

KNOWN_BACKBONES: tuple[str, ...] = (
    "vit_small_patch14_dinov2",
    "vit_small_patch16_224.dino",
    "vit_base_patch16_clip_224.openai",
    "open_clip:ViT-B-16",
    "resnet18",
)

_CNN_PREFIXES = ("resnet", "resnext", "convnext", "efficientnet", "regnet", "mobilenet", "densenet", "wide_resnet")


def build_timm(name: str, pretrained: bool | str = False, layers: Sequence[int] | None = None,
               img_size: int | None = None, model_kwargs: dict | None = None, **wrapper_kwargs) -> FrozenBackbone:
    """Any timm model: a ViT wrapper when it has transformer blocks, a CNN wrapper (feature map as tokens) else."""
    timm_name = name.split(":", 1)[1] if name.startswith("timm:") else name
    import timm

    base = timm_name.split(".")[0]
    if not timm.is_model(base) and not timm.is_model(timm_name):
        raise ValueError(
            f"unknown backbone '{name}': not a registered name and not a timm model "
            f"(registered: {', '.join(registry.backbone_names())}; known here: {', '.join(KNOWN_BACKBONES)})"
        )
    if base.startswith(("vit", "deit", "eva")):
        return TimmViTBackbone(timm_name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)
    if base.startswith(_CNN_PREFIXES):
        return TimmCNNBackbone(timm_name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)
    try:
        return TimmViTBackbone(timm_name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)
    except ValueError:
        return TimmCNNBackbone(timm_name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)


registry.register_backbone("open_clip:", OpenCLIPBackbone, prefix=True)
registry.register_backbone("timm:", build_timm, prefix=True)


def build_backbone(
    name: str,
    pretrained: bool | str = False,
    layers: Sequence[int] | None = None,
    img_size: int | None = None,
    model_kwargs: dict | None = None,
    **wrapper_kwargs,
):
    """Build a frozen backbone by name: a registered name or prefix (``lit_experiments.registry``), else timm."""
    factory = registry.backbone_factory(name) or build_timm
    return factory(name, pretrained=pretrained, layers=layers, img_size=img_size, model_kwargs=model_kwargs,
                   **wrapper_kwargs)
