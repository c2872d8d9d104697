"""timm CNNs (ResNet, ConvNeXt, ...) as frozen backbones: feature maps flattened to tokens.

``layers`` index the feature stages of ``model.feature_info`` (ResNet-18: 0 stem stride 2, 1..4 =
layer1..layer4 with strides 4, 8, 16, 32; default ``[-1]`` = last stage). With several stages, each map
is average-pooled to the grid of the coarsest chosen stage before concatenation / averaging.
Tokens are returned in row-major order of that grid: (B, gh * gw, C).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import FrozenBackbone, resolve_layers
from .timm_vit import _weights_desc, create_timm_model


class TimmCNNBackbone(FrozenBackbone):
    """A timm CNN; tokens from ``forward_intermediates`` (NCHW maps flattened)."""

    def __init__(
        self,
        name: str,
        pretrained: bool | str = False,
        layers: Sequence[int] | None = None,
        img_size: int | None = None,
        model_kwargs: dict | None = None,
        layer_reduce: str = "concat",
    ) -> None:
        model = create_timm_model(name, pretrained, num_classes=0, **(model_kwargs or {}))
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"timm model '{name}' has no forward_intermediates; cannot extract feature maps")
        info = model.feature_info
        stages = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        chosen = resolve_layers(layers, len(stages), name)
        cfg = model.pretrained_cfg
        super().__init__(
            name, model, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)),
            chosen, [int(stages[i]["num_chs"]) for i in chosen], layer_reduce, img_size=img_size,
            weights=_weights_desc(pretrained), config={"model_kwargs": model_kwargs or {}},
        )
        self._grid_cache: dict[tuple[int, int], tuple[int, int]] = {}

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        """Grid of the coarsest chosen stage (measured once per input size with a probe forward)."""
        key = (int(h), int(w))
        if key not in self._grid_cache:
            with torch.no_grad():
                probe = torch.zeros(1, 3, h, w, device=self._mean.device, dtype=self._param_dtype())
                maps = self._layer_tokens(probe)
            self._grid_cache[key] = min((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
        return self._grid_cache[key]

    def _layer_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=self.layers, output_fmt="NCHW", intermediates_only=True, stop_early=True
        )
