"""open_clip visual towers as frozen backbones (``open_clip:ViT-B-16``, ``open_clip:ViT-B-16@openai``).

Only the image tower (``model.visual``) is kept. ``layers`` are transformer block indices (default
last); tokens are block outputs before ``ln_post`` unless ``final_norm=True``; the class token is
dropped. Towers that wrap a timm trunk (e.g. MobileCLIP) use the trunk's ``forward_intermediates``.

``pretrained``: False (random init), True (the tag after ``@`` in the name, else the first tag open_clip
lists for the model, from the hub cache), or a PATH to a checkpoint file.
``model_kwargs`` are merged into the model config: ``{"vision_cfg": {"layers": 2, "width": 64}}``
(nested dicts are merged key by key, so small test towers keep the rest of the config).
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .base import BackboneWeightsError, FrozenBackbone, resolve_layers


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _create(model_name: str, tag: str | None, pretrained: bool | str, img_size: int | None, overrides: dict):
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"open_clip has no model named '{model_name}' (see open_clip.list_models())")
    kwargs = {k: _merge(cfg.get(k, {}), v) if isinstance(v, dict) else v for k, v in overrides.items()}
    if img_size is not None:
        kwargs["force_image_size"] = img_size
        if "vision_cfg" in kwargs:  # model kwargs replace the config after force_image_size is applied
            kwargs["vision_cfg"]["image_size"] = img_size
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # "no weights" chatter
    if pretrained is False or pretrained is None:
        return open_clip.create_model(model_name, pretrained=None, **kwargs), "random"
    if pretrained is True:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        tag = tag or (tags[0] if tags else None)
        if tag is None:
            raise BackboneWeightsError(f"open_clip model '{model_name}' has no pretrained tags; pass pretrained=PATH")
        try:
            return open_clip.create_model(model_name, pretrained=tag, require_pretrained=True, **kwargs), f"hub:{tag}"
        except Exception as e:  # noqa: BLE001
            offline = os.environ.get("HF_HUB_OFFLINE", "0")
            raise BackboneWeightsError(
                f"pretrained weights '{tag}' for open_clip model '{model_name}' are not available "
                f"(HF_HUB_OFFLINE={offline}): {type(e).__name__}: {e}. Cache them on a machine with internet "
                f"or pass pretrained=PATH."
            ) from e
    path = Path(str(pretrained)).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(f"weight file for open_clip model '{model_name}' not found: {path}")
    try:
        model = open_clip.create_model(model_name, pretrained=str(path), require_pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise BackboneWeightsError(f"could not load weights for open_clip model '{model_name}' from {path}: {e}") from e
    return model, f"file:{path.resolve()}"


class OpenCLIPBackbone(FrozenBackbone):
    """The visual tower of an open_clip model."""

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
        spec = name.split(":", 1)[1] if name.startswith("open_clip:") else name
        model_name, _, tag = spec.partition("@")
        clip, weights = _create(model_name, tag or None, pretrained, img_size, dict(model_kwargs or {}))
        visual = clip.visual
        del clip
        trunk = getattr(visual, "trunk", None)
        if trunk is not None:  # timm-based tower
            depth = len(trunk.blocks) if hasattr(trunk, "blocks") else len(trunk.feature_info)
            dims = ([int(trunk.embed_dim)] if hasattr(trunk, "blocks") else None)
        else:
            depth, dims = len(visual.transformer.resblocks), [int(visual.transformer.width)]
        chosen = resolve_layers(layers, depth, name)
        if dims is None:
            dims = [int(trunk.feature_info[i]["num_chs"]) for i in chosen]
        else:
            dims = dims * len(chosen)
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        super().__init__(
            name, visual, mean, std, chosen, dims, layer_reduce, img_size=img_size, weights=weights,
            config={"model_kwargs": model_kwargs or {}, "final_norm": final_norm},
        )
        self.final_norm = final_norm
        self._trunk = trunk is not None

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        if self._trunk:
            with torch.no_grad():
                probe = torch.zeros(1, 3, h, w, device=self._mean.device, dtype=self._param_dtype())
                t = self._layer_tokens(probe)[-1]
            if t.ndim == 4:
                return int(t.shape[-2]), int(t.shape[-1])
            ps = self.model.trunk.patch_embed.patch_size
            return h // ps[0], w // ps[1]
        ps = self.model.patch_size
        return h // ps[0], w // ps[1]

    def _layer_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self._trunk:
            trunk = self.model.trunk
            if hasattr(trunk, "blocks"):
                return trunk.forward_intermediates(
                    x, indices=self.layers, norm=self.final_norm, output_fmt="NLC", intermediates_only=True
                )
            return trunk.forward_intermediates(x, indices=self.layers, output_fmt="NCHW", intermediates_only=True)
        out = self.model.forward_intermediates(
            x, indices=self.layers, normalize_intermediates=self.final_norm, output_fmt="NLC", intermediates_only=True
        )
        return out["image_intermediates"]
