"""Frozen feature extractors behind one interface (:class:`FrozenBackbone`).

``build_backbone(name, pretrained=False, layers=None, img_size=None, model_kwargs=None)``:

* timm ViTs: ``vit_small_patch14_dinov2``, ``vit_small_patch16_224.dino``,
  ``vit_base_patch16_clip_224.openai`` (any timm ViT with ``blocks``), optionally ``timm:`` prefixed;
* open_clip visual towers: ``open_clip:ViT-B-16`` (``open_clip:ViT-B-16@openai`` picks the weights tag);
* timm CNNs: ``resnet18`` (any timm model without ``blocks``), feature map flattened to tokens.

``pretrained``: ``False`` random init, ``True`` hub cache (``HF_HUB_OFFLINE`` honoured), or a PATH to a
local weight file. ``model_kwargs`` are passed to the model constructor (tiny test variants:
``build_backbone("vit_small_patch14_dinov2", img_size=56, model_kwargs={"depth": 2, "embed_dim": 48,
"num_heads": 2})``). Extra keyword arguments (``layer_reduce``, ``final_norm``) go to the wrapper.
"""
from __future__ import annotations

from collections.abc import Sequence

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


def build_backbone(
    name: str,
    pretrained: bool | str = False,
    layers: Sequence[int] | None = None,
    img_size: int | None = None,
    model_kwargs: dict | None = None,
    **wrapper_kwargs,
) -> FrozenBackbone:
    """Build a frozen backbone by name (see module docstring)."""
    if name.startswith("open_clip:"):
        return OpenCLIPBackbone(name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)
    timm_name = name.split(":", 1)[1] if name.startswith("timm:") else name
    import timm

    base = timm_name.split(".")[0]
    if not timm.is_model(base) and not timm.is_model(timm_name):
        raise ValueError(
            f"unknown backbone '{name}': not an open_clip:<model> name and not a timm model "
            f"(known here: {', '.join(KNOWN_BACKBONES)})"
        )
    if base.startswith("vit") or base.startswith("deit") or base.startswith("eva"):
        return TimmViTBackbone(timm_name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)
    if base.startswith(_CNN_PREFIXES):
        return TimmCNNBackbone(timm_name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)
    # other timm models: a ViT if it has transformer blocks, a CNN otherwise
    try:
        return TimmViTBackbone(timm_name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)
    except ValueError:
        return TimmCNNBackbone(timm_name, pretrained, layers, img_size, model_kwargs, **wrapper_kwargs)
