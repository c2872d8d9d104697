"""The distillation student: a timm mobile image encoder, the open_clip MobileCLIP text tower and a light
DETR-style prompt decoder, each a part by constructor (``class_path`` / ``init_args``).

* Output contract (the teacher's, :mod:`.teacher`): ``pred_masks`` (B, Q, h, w) mask logits, ``pred_boxes``
  (B, Q, 4) sigmoid ``cxcywh``, ``pred_logits`` (B, Q), ``presence_logits`` (B,); :class:`Student` adds
  ``image_features`` (B_img, C, h', w') for encoder distillation (a projection to the teacher's features is the
  caller's trainable part, see ``losses.FeatureDistillLoss``).
* Images: uint8 (B, 3, H, W) or float in [0, 255] (the teacher's convention), resized to ``image_size`` when set,
  rescaled to [0, 1] and normalised with the timm model's mean / std **inside** :class:`ImageEncoder`.
* Text: MobileCLIP-S1/S2/B and MobileCLIP2 use open_clip's ``SimpleTokenizer`` (CLIP BPE, vocab 49408, shipped
  in the package, works offline); context 32 (SAM3's). Ids are made by :meth:`TextEncoder.tokenizer` (via
  ``prompts.DualTokenizer``), never by the teacher's tokenizer (F22).
* Prompt conditioning (:class:`PromptDecoder`), on four paths: the pooled text FiLM-modulates the image
  features; ``fusion_layers`` layers let the image tokens attend to the text tokens (SAM3's DETR encoder),
  so the per-pixel mask embedding depends on the prompt; the text tokens are concatenated to the image tokens
  as the decoder's cross-attention memory (padding masked) and the pooled text is added to every query; query
  logits are a scaled dot product of query and pooled text (SAM3's dot-product scoring).
* Deployment: the three parts are separate submodules whose ``forward`` takes and returns plain tensors
  (decoder: a dict of tensors out); padding masks, per-prompt image gathering and post-processing live in
  :class:`Student`, outside the parts. ``torch.export.export`` works on each part (tests).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import MLP

from lit_experiments.core.errors import ConfigError

OUTPUT_KEYS = ("pred_masks", "pred_boxes", "pred_logits", "presence_logits")


def _offline() -> str:
    return os.environ.get("HF_HUB_OFFLINE", "0")


def _trim_unused_blocks(model: nn.Module) -> None:
    """Drop the blocks after the last requested level of timm's ``MobileNetV3Features`` / ``EfficientNetFeatures``
    (mobilenetv3/v4, lcnet, efficientnet): they are built but feed no output, so their parameters would never
    get a gradient (the TrainingHealth guard rejects that). ``FeatureListNet`` models are truncated by timm."""
    stages = getattr(model, "_stage_out_idx", None)
    if stages and getattr(model, "feature_hooks", 0) is None and isinstance(getattr(model, "blocks", None),
                                                                             nn.Sequential):
        model.blocks = model.blocks[: max(stages)]


def _check_weight_file(name: str, path: Path) -> None:
    """A weight file for timm model ``name`` must hold its tensors: timm loads ``features_only`` models non-strictly
    (another architecture's file would leave the encoder at random init with a warning). The file's keys, through
    the model's own ``checkpoint_filter_fn`` as timm applies it, must cover every tensor of the model but its
    classifier; otherwise a one-block ConfigError naming the path and what was expected."""
    import sys

    import timm

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state))
    except Exception as err:  # noqa: BLE001 - re-raised as a one-block config error
        raise ConfigError(f"ImageEncoder: weight file {str(path)!r} cannot be read: {type(err).__name__}") from err
    model = timm.create_model(name, pretrained=False)
    own = model.state_dict()
    keys = set(state)
    if set(own) - keys:
        convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if convert is not None:
            try:
                keys = set(convert(dict(state), model))
            except Exception:  # noqa: BLE001 - not convertible: reported as missing keys below
                pass
    classifier = str((getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head")
    missing = sorted(k for k in set(own) - keys if not k.startswith(classifier.split(".")[0] + "."))
    if missing:
        raise ConfigError(f"ImageEncoder: weight file {str(path)!r} is not a state dict of timm model {name!r}: "
                          f"{len(missing)} of its tensors missing {missing[:3]}; expected "
                          f"timm.create_model({name!r}).state_dict() saved as .safetensors / .pth / .bin")


class ImageEncoder(nn.Module):
    """A timm mobile encoder (``features_only``) whose chosen levels are projected to ``out_dim`` and fused.

    Args:
        name: timm model name (e.g. ``mobilenetv3_small_100``, ``mobilenetv3_small_050``, ``mobilenetv4_conv_small``,
            ``repvit_m0_9``, ``fastvit_t8``, ``fastvit_mci0`` - MobileCLIP's image tower family).
        pretrained: False (random init), True (timm's weights from the local hub cache; ``HF_HUB_OFFLINE``
            honoured), or a PATH to a weight file. Missing weights are a ConfigError.
        out_dim: channels of the output map (the student's ``dim``: :class:`Student` gives it, first argument).
        out_indices: timm ``feature_info`` indices of the fused levels (negative from the end); mobilenetv3:
            2 = stride 8, 3 = stride 16; fastvit / repvit: 1 = stride 8, 2 = stride 16. Each level gets a 1x1
            conv to ``out_dim``; coarser levels are upsampled (bilinear) to the finest and summed, then a 3x3 conv.
        model_kwargs: extra ``timm.create_model`` arguments.
        image_size: images are resized (bilinear) to this square size first; None keeps the input size.

    ``forward(images)`` -> (B, out_dim, H / stride, W / stride); ``feature_dim`` = out_dim, ``stride`` = the finest
    level's reduction.
    """

    def __init__(self, out_dim: int = 64, name: str = "mobilenetv3_small_100", pretrained: bool | str = False,
                 out_indices: Sequence[int] = (2, 3), model_kwargs: dict[str, Any] | None = None,
                 image_size: int | None = None) -> None:
        super().__init__()
        import timm

        from lit_experiments.backbones.base import BackboneWeightsError
        from lit_experiments.backbones.timm_vit import create_timm_model

        if not timm.is_model(name):
            raise ConfigError(f"ImageEncoder: name={name!r} is not a timm model (see timm.list_models('*mobile*'))")
        if isinstance(pretrained, str) and not Path(pretrained).expanduser().is_file():
            raise ConfigError(f"ImageEncoder: pretrained={pretrained!r}: weight file not found (pretrained must be "
                              "false, true for the local hub cache, or the path of a weight file)")
        if isinstance(pretrained, str):  # before timm loads it (non-strictly for features_only models)
            _check_weight_file(name, Path(pretrained).expanduser())
        try:
            self.backbone = create_timm_model(name, pretrained, features_only=True, out_indices=tuple(out_indices),
                                              **(model_kwargs or {}))
        except BackboneWeightsError as err:
            cause = err.__cause__ or err
            where = "the local hub cache" if pretrained is True else str(pretrained)
            raise ConfigError(f"ImageEncoder: timm weights of {name!r} could not be loaded from {where} "
                              f"(HF_HUB_OFFLINE={_offline()}): {type(cause).__name__}: {str(cause)[:160]}. Cache "
                              f"them on a machine with internet or pass pretrained=PATH") from err
        except (TypeError, ValueError, IndexError, AssertionError) as err:
            raise ConfigError(f"ImageEncoder: cannot build {name!r} with out_indices={list(out_indices)}, "
                              f"model_kwargs={model_kwargs}: {err}") from err
        _trim_unused_blocks(self.backbone)
        channels, reductions = self.backbone.feature_info.channels(), self.backbone.feature_info.reduction()
        self.name, self.pretrained, self.image_size = name, pretrained, image_size
        self.feature_dim, self.stride = int(out_dim), int(min(reductions))
        self.level_channels = list(channels)
        self.proj = nn.ModuleList(nn.Conv2d(c, out_dim, 1) for c in channels)
        self.fuse = nn.Conv2d(out_dim, out_dim, 3, padding=1) if len(channels) > 1 else nn.Identity()
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """uint8 / [0, 255] float images (B, 3, H, W) -> fused features (B, out_dim, h, w)."""
        x = images.float() / 255.0
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        levels = self.backbone((x - self.mean) / self.std)
        size = levels[0].shape[-2:]
        fused = self.proj[0](levels[0])
        for proj, level in zip(self.proj[1:], levels[1:]):
            fused = fused + F.interpolate(proj(level), size=size, mode="bilinear", align_corners=False)
        return self.fuse(fused)


def _resolve_clip_weights(model_name: str, pretrained: bool | str) -> str:
    """A local file of open_clip weights: a PATH, or a tag (True = the first listed) from the hub cache."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if isinstance(pretrained, str) and Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser())
    tag = (tags[0] if tags else None) if pretrained is True else str(pretrained)
    if tag not in tags:
        raise ConfigError(f"TextEncoder: pretrained={pretrained!r} is neither a weight file nor a tag of "
                          f"open_clip model {model_name!r} (tags: {tags})")
    try:
        return download_pretrained(get_pretrained_cfg(model_name, tag))
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ConfigError(f"TextEncoder: open_clip weights {model_name!r}@{tag} are not in the local hub cache "
                          f"(HF_HUB_OFFLINE={_offline()}): {type(err).__name__}: {str(err)[:200]}. Cache them on "
                          "a machine with internet or pass pretrained=PATH") from err


def _truncate_context(text: nn.Module, n: int) -> None:
    """Keep the first ``n`` positions of a pretrained tower (MobileCLIP: 77 -> 32). Exact for causal towers;
    MobileCLIP-S* attend bidirectionally to padding, so their embeddings change slightly (distillation adapts)."""
    if n > text.num_pos:
        raise ConfigError(f"TextEncoder: context_length={n} exceeds the checkpoint's {text.num_pos} positions")
    text.positional_embedding = nn.Parameter(text.positional_embedding.detach()[:n].clone())
    text.num_pos = text.context_length = n
    if text.attn_mask is not None:
        text.register_buffer("attn_mask", text.attn_mask[:n, :n].clone(), persistent=False)


class TextEncoder(nn.Module):
    """The open_clip text tower of ``model_name`` (MobileCLIP-S1 by default) with context ``context_length``.

    Args:
        model_name: an open_clip model (``MobileCLIP-S1``, ``MobileCLIP-S2``, ``MobileCLIP-B``, ``MobileCLIP2-*``).
        pretrained: None / False (random init from the model config), True (the first weights tag, local hub
            cache only), a tag (``"datacompdr"``) or a PATH to an open_clip checkpoint; only the text tower is
            kept and its position table cut to ``context_length``. Missing weights are a ConfigError.
        context_length: token positions (SAM3 and the seed: 32).
        width, layers, heads: overrides of the config's ``text_cfg`` for a tiny tower (random init only); the
            vocabulary (49408 BPE tokens) and the tokenizer stay the model's.
        out_dim: width of the returned token and pooled features (the student's ``dim``: :class:`Student` gives
            it, first argument).

    ``forward(input_ids (B, L))`` -> ``(tokens (B, L, out_dim), pooled (B, out_dim))``; pooled = the tower's
    own pooling (EOT token, ``argmax``) and projection.
    """

    def __init__(self, out_dim: int = 64, model_name: str = "MobileCLIP-S1", pretrained: bool | str | None = None,
                 context_length: int = 32, width: int | None = None, layers: int | None = None,
                 heads: int | None = None) -> None:
        super().__init__()
        import open_clip

        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ConfigError(f"TextEncoder: model_name={model_name!r} is not an open_clip model; MobileCLIP text "
                              f"towers: {[m for m in open_clip.list_models() if 'MobileCLIP' in m]}")
        overrides = {k: v for k, v in (("width", width), ("layers", layers), ("heads", heads)) if v is not None}
        if pretrained:
            if overrides:
                raise ConfigError(f"TextEncoder: {sorted(overrides)} override the architecture and cannot be used "
                                  "with pretrained weights")
            path = _resolve_clip_weights(model_name, pretrained)
            try:
                text = open_clip.create_model(model_name, pretrained=path, require_pretrained=True).text
            except Exception as err:  # noqa: BLE001
                raise ConfigError(f"TextEncoder: could not load {path} into {model_name!r}: {err}") from err
            _truncate_context(text, int(context_length))
            text.output_tokens = True
        else:
            from open_clip.model import _build_text_tower  # what create_model calls for the text tower

            text_cfg = {**cfg["text_cfg"], **overrides, "context_length": int(context_length), "output_tokens": True}
            try:
                text = _build_text_tower(cfg["embed_dim"], text_cfg, quick_gelu=cfg.get("quick_gelu", False))
            except (AssertionError, TypeError, ValueError) as err:
                raise ConfigError(f"TextEncoder: text_cfg {overrides} for {model_name!r} is invalid: {err}") from err
        self.text = text
        self.model_name, self.pretrained = model_name, pretrained
        self.context_length, self.out_dim = int(context_length), int(out_dim)
        self.pad_id = int(getattr(text, "pad_id", 0))
        self.token_proj = nn.Linear(text.width, out_dim)
        self.pooled_proj = nn.Linear(text.output_dim or text.width, out_dim)

    def tokenizer(self) -> Callable[..., Tensor]:
        """open_clip's tokenizer of ``model_name`` at ``context_length`` (``tok(texts, context_length=n)``)."""
        import open_clip

        try:
            tok = open_clip.get_tokenizer(self.model_name, context_length=self.context_length)
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"TextEncoder: open_clip tokenizer of {self.model_name!r} is not available offline "
                              f"(HF_HUB_OFFLINE={_offline()}): {err}") from err
        vocab = getattr(tok, "vocab_size", None)
        if vocab is not None and vocab != self.text.vocab_size:
            raise ConfigError(f"TextEncoder: tokenizer vocab {vocab} != text tower vocab {self.text.vocab_size}")
        return tok

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L <= context_length) ids -> (tokens (B, L, out_dim), pooled (B, out_dim))."""
        if input_ids.dim() != 2 or input_ids.shape[1] > self.context_length:
            raise ValueError(f"TextEncoder: input_ids {tuple(input_ids.shape)}; expected (B, L) with L <= "
                             f"{self.context_length}")
        pooled, tokens = self.text(input_ids)
        return self.token_proj(tokens), self.pooled_proj(pooled)


class PromptDecoder(nn.Module):
    """Learned queries and a presence token attend to image tokens + text tokens (``nn.TransformerDecoder``).

    Args:
        dim: width of image features, text features and queries.
        num_queries: Q object queries.
        layers, heads: decoder depth and attention heads (pre-norm layers, FFN ``ffn_dim``, default ``4 * dim``).
        mask_dim: width of the mask embeddings (default ``dim``).
        mask_upsample: the per-pixel embedding is ``mask_upsample`` x the feature map (Upsample + Conv, never a
            transposed conv: F15).
        fusion_layers: layers in which image tokens attend to each other and to the text tokens before the
            decoder (residual; 0 = none).
        grounding: add a grounding score to the presence logit: the log-mean-exp over image locations of the dot
            product of projected image features and the projected pooled text (a location that matches the
            prompt says the concept is present). Measured on the demo's data (tiny student, 2 queries, two
            prompts per image, the stand-in teacher's outputs, one run each, seed 0): the validation AUROC of
            presence left chance after ~200 steps with it (1.00 at 350) and ~300 without (0.85 at 400).

    ``forward(image_features (B, dim, h, w), text_tokens (B, L, dim), text_pooled (B, dim), text_padding_mask
    (B, L) bool, True = padding)`` -> the output contract (``pred_masks`` at ``mask_upsample * (h, w)``).
    """

    def __init__(self, dim: int = 64, num_queries: int = 16, layers: int = 2, heads: int = 4,
                 mask_dim: int | None = None, ffn_dim: int | None = None, mask_upsample: int = 2,
                 fusion_layers: int = 1, dropout: float = 0.0, grounding: bool = True) -> None:
        super().__init__()
        if dim % heads or dim % 4:
            raise ConfigError(f"PromptDecoder: dim={dim} must be divisible by heads={heads} and by 4 (2-D sine "
                              "position embedding)")
        if num_queries < 1 or layers < 1 or mask_upsample < 1 or fusion_layers < 0:
            raise ConfigError(f"PromptDecoder: num_queries={num_queries}, layers={layers}, mask_upsample="
                              f"{mask_upsample}, fusion_layers={fusion_layers}; expected >= 1 (fusion_layers >= 0)")
        mask_dim = mask_dim or dim
        self.dim, self.num_queries, self.mask_dim = int(dim), int(num_queries), int(mask_dim)
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.presence_token = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.type_embed = nn.Parameter(torch.randn(2, dim) * 0.02)  # 0: image tokens, 1: text tokens
        self.query_text = nn.Linear(dim, dim)
        self.film = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        layer = nn.TransformerDecoderLayer(dim, heads, ffn_dim or 4 * dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.fusion = nn.TransformerDecoder(layer, fusion_layers, norm=nn.LayerNorm(dim)) if fusion_layers else None
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))
        up: list[nn.Module] = [nn.Upsample(scale_factor=mask_upsample, mode="bilinear")] if mask_upsample > 1 else []
        self.pixel_head = nn.Sequential(*up, nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, mask_dim, 1))
        self.mask_head = MLP(dim, [dim, dim, mask_dim])
        self.box_head = MLP(dim, [dim, dim, 4])
        self.score_query, self.score_text = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.score_bias = nn.Parameter(torch.zeros(()))
        self.presence_head = MLP(dim, [dim, 1])
        self.grounding = bool(grounding)
        if self.grounding:
            self.ground_image, self.ground_text = nn.Conv2d(dim, dim, 1), nn.Linear(dim, dim)

    def forward(self, image_features: Tensor, text_tokens: Tensor, text_pooled: Tensor,
                text_padding_mask: Tensor) -> dict[str, Tensor]:
        from timm.layers import build_sincos2d_pos_embed

        b, _, h, w = image_features.shape
        gamma, beta = self.film(text_pooled).chunk(2, dim=-1)
        image = image_features * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        pos = build_sincos2d_pos_embed([h, w], self.dim, device=image.device, dtype=image.dtype)
        text = text_tokens + self.type_embed[1]
        if self.fusion is not None:  # image tokens attend to each other and to the text (SAM3's DETR encoder)
            fused = self.fusion(image.flatten(2).transpose(1, 2) + pos, text,
                                memory_key_padding_mask=text_padding_mask.bool())
            image = image + fused.transpose(1, 2).reshape(b, self.dim, h, w)
        memory = torch.cat([image.flatten(2).transpose(1, 2) + pos + self.type_embed[0], text], dim=1)
        pad = text_padding_mask.bool()
        memory_pad = torch.cat([pad.new_zeros(b, h * w), pad], dim=1)
        tgt = torch.cat([self.presence_token, self.queries])[None] + self.query_text(text_pooled)[:, None]
        out = self.decoder(tgt, memory, memory_key_padding_mask=memory_pad)
        queries = out[:, 1:]
        logits = (self.score_query(queries) * self.score_text(text_pooled)[:, None]).sum(-1) / math.sqrt(self.dim)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_head(queries), self.pixel_head(image))
        presence = self.presence_head(out[:, 0])[:, 0]
        if self.grounding:
            match = torch.einsum("bchw,bc->bhw", self.ground_image(image), self.ground_text(text_pooled)).flatten(1)
            presence = presence + torch.logsumexp(match / math.sqrt(self.dim), 1) - math.log(match.shape[1])
        return {"pred_masks": masks, "pred_boxes": self.box_head(queries).sigmoid(),
                "pred_logits": logits + self.score_bias, "presence_logits": presence}


class Student(nn.Module):
    """Image encoder + text encoder + prompt decoder, answering the teacher's output contract.

    ``forward(images, student_input_ids, image_index=None)``: images uint8 / [0, 255] float (B_img, 3, H, W);
    ids (U, L) from :meth:`TextEncoder.tokenizer`; ``image_index`` (U,) pairs unit ``u`` with image
    ``image_index[u]`` (several prompts per image, the encoder runs once per image; None: U = B_img, one each).
    Returns the contract (per unit) plus ``image_features`` (B_img, C, h, w) (per image).

    Args:
        image_encoder, text_encoder, decoder: the parts, each given without its width (``class_path`` /
            ``init_args``; jsonargparse builds a callable that :class:`Student` calls with ``dim``, in this order).
            An already built part is taken as it is (its width is checked against ``dim``'s decoder).
        dim: THE width of the student: image features, text features and queries (said once).
    """

    def __init__(self, image_encoder: Callable[[int], ImageEncoder], text_encoder: Callable[[int], TextEncoder],
                 decoder: Callable[[int], PromptDecoder], dim: int = 64) -> None:
        super().__init__()
        # the width is said once (``dim``) and given to each part, built in this order (image, text, decoder)
        image_encoder, text_encoder, decoder = (part if isinstance(part, nn.Module) else part(int(dim))
                                                for part in (image_encoder, text_encoder, decoder))
        for key, part in (("image_encoder.out_dim", image_encoder.feature_dim), ("text_encoder.out_dim",
                                                                                 text_encoder.out_dim)):
            if part != decoder.dim:
                raise ConfigError(f"Student: {key}={part} must equal decoder.dim={decoder.dim}")
        self.image_encoder, self.text_encoder, self.decoder = image_encoder, text_encoder, decoder

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 / [0, 255] images -> (B, C, h, w) features."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Student: images {tuple(images.shape)}; expected (B, 3, H, W)")
        return self.image_encoder(images)

    def encode_text(self, input_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(U, L) ids -> (tokens (U, L, D), pooled (U, D), padding mask (U, L), True = padding)."""
        tokens, pooled = self.text_encoder(input_ids)
        return tokens, pooled, input_ids == self.text_encoder.pad_id

    def forward(self, images: Tensor, student_input_ids: Tensor,
                image_index: Tensor | None = None) -> dict[str, Tensor]:
        features = self.encode_image(images)
        per_unit = features
        if image_index is not None:
            if image_index.shape != (student_input_ids.shape[0],):
                raise ValueError(f"Student: image_index {tuple(image_index.shape)} must be (U,) for ids "
                                 f"{tuple(student_input_ids.shape)}")
            per_unit = features[image_index]
        elif features.shape[0] != student_input_ids.shape[0]:
            raise ValueError(f"Student: {features.shape[0]} images but {student_input_ids.shape[0]} prompts; give "
                             "image_index (U,) to prompt images several times")
        tokens, pooled, pad = self.encode_text(student_input_ids)
        return {**self.decoder(per_unit, tokens, pooled, pad), "image_features": features}

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part and in total (for results.json)."""
        counts = {k: sum(p.numel() for p in m.parameters())
                  for k, m in (("image_encoder", self.image_encoder), ("text_encoder", self.text_encoder),
                               ("decoder", self.decoder))}
        return {**counts, "total": sum(counts.values())}


def tiny_student(image_size: int = 64, dim: int = 32, num_queries: int = 8, encoder: str = "mobilenetv3_small_050",
                 out_indices: Sequence[int] = (2, 3), text_width: int = 16, text_layers: int = 2,
                 text_heads: int = 2, decoder_layers: int = 2, heads: int = 4, mask_upsample: int = 2,
                 text_model: str = "MobileCLIP-S1") -> Student:
    """A < 1 M-parameter student for tests and the demo (the BPE embedding table, 49408 x ``text_width``, is most
    of it): mobilenetv3_small_050 at strides 8 + 16, a 2-layer MobileCLIP-S1 text tower of width 16, 2 decoder
    layers; masks at ``image_size / 4``."""
    return Student(ImageEncoder(dim, encoder, out_indices=out_indices, image_size=image_size),
                   TextEncoder(dim, text_model, context_length=32, width=text_width, layers=text_layers,
                               heads=text_heads),
                   PromptDecoder(dim=dim, num_queries=num_queries, layers=decoder_layers, heads=heads,
                                 mask_upsample=mask_upsample))
