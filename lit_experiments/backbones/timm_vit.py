"""timm Vision Transformers as frozen backbones (DINOv2, DINO, CLIP ViTs, ...).

``layers`` are block indices (negative from the end; default ``[-1]``, the last block). Tokens are the
block outputs *before* the final LayerNorm unless ``final_norm=True`` (timm applies ``model.norm``
to each chosen block). Prefix tokens (CLS, registers) are dropped. The model is built with
``dynamic_img_size=True`` so any input divisible by the patch size works (position embeddings are
interpolated); ``img_size`` sets the native resolution the position embeddings are stored at.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from .base import BackboneWeightsError, FrozenBackbone, load_error_summary, resolve_layers


def create_timm_model(name: str, pretrained: bool | str, **kwargs) -> nn.Module:
    """``timm.create_model`` with clear errors for missing hub weights or weight files.

    ``pretrained``: False (random init), True (timm's default weights from the hub cache; honours
    ``HF_HUB_OFFLINE``), or a PATH to a local state dict / checkpoint (``.pth``, ``.bin``, ``.safetensors``;
    ``state_dict`` / ``model`` wrappers and ``module.`` prefixes are handled by timm's loader).
    """
    if pretrained is False or pretrained is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            offline = os.environ.get("HF_HUB_OFFLINE", "0")
            raise BackboneWeightsError(
                f"pretrained weights for timm model '{name}' are not available (HF_HUB_OFFLINE={offline}): "
                f"{type(e).__name__}: {e}. Put them in the hub cache on a machine with internet "
                f"(timm.create_model('{name}', pretrained=True)) or pass pretrained=PATH to a local weight file."
            ) from e
    path = Path(str(pretrained)).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(
            f"weight file for timm model '{name}' not found: {path} "
            f"(pretrained must be false, true, or the path of a state dict / checkpoint file)"
        )
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise BackboneWeightsError(
            f"could not load weights for timm model '{name}' from {path}: {load_error_summary(e)}. Expected a state "
            f"dict of '{name}' (timm.create_model('{name}').state_dict(), saved as .safetensors / .pth / .bin)"
        ) from e


def _weights_desc(pretrained: bool | str) -> str:
    if pretrained is True:
        return "hub"
    if not pretrained:
        return "random"
    p = Path(str(pretrained)).expanduser().resolve()
    return f"file:{p}"


class TimmViTBackbone(FrozenBackbone):
    """A timm ViT; tokens from ``forward_intermediates`` (NLC, no prefix tokens)."""

    def __init__(
        self,
        name: str,
        pretrained: bool | str = False,
        layers: Sequence[int] | None = None,
        img_size: int | None = None,
        model_kwargs: dict | None = None,
        layer_reduce: str = "concat",
        final_norm: bool = False,
    ) -> None:
        kwargs = {"num_classes": 0, "dynamic_img_size": True, **(model_kwargs or {})}
        if img_size is not None:
            kwargs["img_size"] = img_size
        model = create_timm_model(name, pretrained, **kwargs)
        if not hasattr(model, "blocks") or not hasattr(model, "forward_intermediates"):
            raise ValueError(f"timm model '{name}' is not a ViT with blocks; use the CNN wrapper")
        depth = len(model.blocks)
        cfg = model.pretrained_cfg
        width = int(model.embed_dim)
        chosen = resolve_layers(layers, depth, name)
        super().__init__(
            name, model, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)),
            chosen, [width] * len(chosen), layer_reduce, img_size=img_size, weights=_weights_desc(pretrained),
            config={"model_kwargs": model_kwargs or {}, "final_norm": final_norm},
        )
        self.final_norm = final_norm
        ps = model.patch_embed.patch_size
        self.patch_size = (int(ps[0]), int(ps[1])) if isinstance(ps, Sequence) else (int(ps), int(ps))

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        return h // self.patch_size[0], w // self.patch_size[1]

    def _layer_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        ph, pw = self.patch_size
        if x.shape[-2] % ph or x.shape[-1] % pw:
            raise ValueError(f"{self.name}: input {tuple(x.shape[-2:])} is not divisible by the patch size {ph}x{pw}")
        return self.model.forward_intermediates(
            x, indices=self.layers, norm=self.final_norm, output_fmt="NLC", intermediates_only=True,
            stop_early=True,
        )
