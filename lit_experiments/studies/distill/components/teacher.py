"""The distillation teacher: a frozen transformers ``Sam3Model`` that answers the study's output contract.

* Output contract (teacher and student): ``pred_masks`` (B, Q, h, w) mask logits, ``pred_boxes`` (B, Q, 4)
  normalised ``cxcywh``, ``pred_logits`` (B, Q) query logits, ``presence_logits`` (B,). A query's score is
  ``sigmoid(pred_logits) * sigmoid(presence_logits)``.
* Mapping from ``Sam3ImageSegmentationOutput``: ``pred_masks`` and ``pred_logits`` unchanged; ``pred_boxes``
  come out of SAM3 as ``xyxy`` in [0, 1] (the decoder refines ``cxcywh`` reference boxes in logit space, takes
  the sigmoid and converts to ``xyxy``), so they are converted back with ``torchvision.ops.box_convert``;
  ``presence_logits`` (B, 1) is squeezed to (B,). The mask resolution is the finest FPN level SAM3 keeps
  (``scale_factors[0] * image_size / patch_size``; 288 px for the real 1008 px model).
* Images: uint8 (B, 3, H, W) (or float in [0, 255]) are resized (bilinear) to the model's ``image_size`` and
  normalised as ``Sam3Processor`` does (rescale 1/255, mean = std = 0.5); float inputs already processed
  can be passed as ``pixel_values``.
* Text: a real checkpoint brings its processor's CLIP BPE tokenizer; a stand-in built from a config uses
  :func:`shapes_word_tokenizer`, a word-level tokenizer over the ShapesWorld vocabulary that is deliberately
  not the student's open_clip tokenizer (the two ids of one prompt differ, as they do for the real pair; F22).
* The teacher is always frozen: no parameter requires grad, eval mode whatever a Trainer asks, and
  :meth:`Sam3Teacher.forward` runs under ``no_grad`` (F01). :mod:`.standin` trains ``teacher.model`` directly.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import box_convert

from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import CATEGORIES, COLORS, MATERIALS

GENERIC_WORDS: tuple[str, ...] = ("a", "an", "the", "of", "photo", "picture", "image", "object", "objects",
                                  "shape", "shapes", "thing", "things", "all", "every", "and", "in", "this")
# word-level vocabulary of the stand-in teacher: pad 0 / eos 1 / bos 2 / unk 3, then words
TEACHER_VOCAB: tuple[str, ...] = ("<pad>", "</s>", "<s>", "<unk>", ",", *GENERIC_WORDS, *CATEGORIES,
                                  *(c + ("es" if c.endswith(("x", "s")) else "s") for c in CATEGORIES),
                                  *COLORS, *MATERIALS)
OUTPUT_KEYS = ("pred_masks", "pred_boxes", "pred_logits", "presence_logits")


def shapes_word_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :data:`TEACHER_VOCAB` (lowercased, ``</s>`` appended;
    an unknown word becomes ``<unk>``)."""
    from lit_experiments.data.word_tokenizer import word_level_tokenizer

    return word_level_tokenizer(TEACHER_VOCAB)


def tiny_config(image_size: int = 64, patch_size: int = 8, hidden: int = 64, vit_layers: int = 2, heads: int = 4,
                num_queries: int = 8, decoder_layers: int = 2, text_layers: int = 2, text_len: int = 16,
                scale_factors: tuple[float, ...] = (2.0, 1.0, 0.5), window_size: int = 8,
                init_std: float | None = None) -> dict[str, Any]:
    """A tiny ``Sam3Config`` dict (the stand-in's architecture: every SAM3 part, at width ``hidden``).

    The model keeps every FPN level but the last (SAM3 drops the coarsest): its DETR encoder runs on the
    second-to-last level and its masks come out at the first, ``scale_factors[0] * image_size / patch_size``
    pixels a side (16 for the default 64 px, patch 8, scales 2 / 1 / 0.5). All ViT layers use global attention.

    ``init_std`` (default ``hidden ** -0.5``) is written into EVERY sub-config: each SAM3 sub-config carries its
    own ``initializer_range`` (0.02, tuned for width 256-1024). At width 64 with 0.02 the FPN features come out
    at std 0.07 and the presence logit is constant over images and prompts (std < 1e-4); with 1/sqrt(64) both
    vary (presence std 0.10 over images, 0.14 over prompts), so gradients reach the encoders.
    """
    if image_size % patch_size:
        raise ConfigError(f"tiny_config: image_size={image_size} is not a multiple of patch_size={patch_size}")
    if len(scale_factors) < 2:
        raise ConfigError(f"tiny_config: scale_factors={scale_factors}; expected >= 2 levels (SAM3 drops the last)")
    grid = image_size // patch_size
    std = float(hidden ** -0.5 if init_std is None else init_std)
    common = {"hidden_size": hidden, "num_attention_heads": heads, "intermediate_size": 2 * hidden,
              "initializer_range": std}
    return {
        "vision_config": {
            "backbone_config": {"model_type": "sam3_vit_model", **common, "num_hidden_layers": vit_layers,
                                "image_size": image_size, "patch_size": patch_size, "window_size": window_size,
                                "global_attn_indexes": list(range(vit_layers)), "pretrain_image_size": image_size},
            "fpn_hidden_size": hidden, "scale_factors": [float(s) for s in scale_factors],
            "backbone_feature_sizes": [[int(grid * s)] * 2 for s in scale_factors], "initializer_range": std},
        "text_config": {"model_type": "clip_text_model", **common, "vocab_size": len(TEACHER_VOCAB),
                        "projection_dim": hidden, "num_hidden_layers": text_layers,
                        "max_position_embeddings": text_len, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2},
        "geometry_encoder_config": {**common, "num_layers": 1},
        "detr_encoder_config": {**common, "num_layers": 1},
        "detr_decoder_config": {**common, "num_layers": decoder_layers, "num_queries": num_queries},
        "mask_decoder_config": {"hidden_size": hidden, "num_attention_heads": heads, "initializer_range": std,
                                "num_upsampling_stages": max(1, len(scale_factors) - 2)},
        "initializer_range": std,
    }


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


class Sam3Teacher(nn.Module):
    """Frozen SAM3 (transformers ``Sam3Model``) returning the distill study's output contract.

    Args:
        checkpoint: local directory or hub id of a SAM3 checkpoint (with ``HF_HUB_OFFLINE=1`` only a local
            path or the hub cache); its ``Sam3Processor`` tokenizer comes with it. ``None`` with ``config``.
        config: a ``Sam3Config`` dict (e.g. :func:`tiny_config`) for a randomly initialised model; its
            tokenizer is :func:`shapes_word_tokenizer`.
        init_seed: seed of the random initialisation when built from ``config``.
    """

    always_frozen = True

    def __init__(self, checkpoint: str | None = None, config: dict[str, Any] | None = None,
                 init_seed: int = 0) -> None:
        super().__init__()
        from transformers import Sam3Config, Sam3Model

        if (checkpoint is None) == (config is None):
            raise ConfigError("Sam3Teacher: give exactly one of checkpoint (local path or hub id) and config (dict)")
        self.checkpoint = checkpoint
        self.config_dict = json.loads(json.dumps(config)) if config is not None else None
        if config is not None:
            try:
                cfg = Sam3Config(**config)
            except (TypeError, ValueError, KeyError) as err:
                raise ConfigError(f"Sam3Teacher: config is not a valid Sam3Config: {err!r}") from err
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(init_seed))
                self.model = Sam3Model(cfg)
            self.tokenizer = shapes_word_tokenizer()
        else:
            self.model, self.tokenizer = self._load(str(checkpoint))
        self.freeze()

    @staticmethod
    def _load(checkpoint: str) -> tuple[nn.Module, Any]:
        from transformers import AutoTokenizer, Sam3Config, Sam3Model, Sam3Processor

        offline = _offline()
        where = " (HF_HUB_OFFLINE=1: a local path or the hub cache only)" if offline else ""
        looks_local = checkpoint.startswith(("/", ".", "~")) or checkpoint.count("/") > 1
        if looks_local and not Path(checkpoint).expanduser().is_dir():
            raise ConfigError(f"Sam3Teacher: checkpoint {checkpoint!r} is not a directory; expected a local "
                              "transformers checkpoint folder or a hub id such as 'facebook/sam3'")
        expected = ("expected a Sam3Model checkpoint folder (Sam3Model.save_pretrained: config.json of model_type "
                    "'sam3', or a sam3_video one with its detector_config)")
        try:
            config, _ = Sam3Config.get_config_dict(checkpoint, local_files_only=offline)
        except (OSError, ValueError) as err:
            raise ConfigError(f"Sam3Teacher: cannot load checkpoint {checkpoint!r} as Sam3Model{where}: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
        if not config:
            raise ConfigError(f"Sam3Teacher: cannot load checkpoint {checkpoint!r} as Sam3Model{where}: no config.json; "
                              f"{expected}")
        detector = config.get("detector_config") or {}  # facebook/sam3's sam3_video config holds the Sam3Config
        if config.get("model_type") != "sam3" and detector.get("model_type") != "sam3":
            raise ConfigError(f"Sam3Teacher: checkpoint {checkpoint!r} holds a model of type "  # else: random init
                              f"{config.get('model_type')!r}; {expected}")
        try:
            model, info = Sam3Model.from_pretrained(checkpoint, local_files_only=offline, output_loading_info=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"Sam3Teacher: cannot load checkpoint {checkpoint!r} as Sam3Model{where}: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
        missing, mismatched = info.get("missing_keys") or [], info.get("mismatched_keys") or []
        if missing or mismatched:  # left at random init by from_pretrained (a warning only)
            raise ConfigError(f"Sam3Teacher: checkpoint {checkpoint!r} does not hold this Sam3Model's weights: "
                              f"{len(missing)} missing {sorted(missing)[:3]}, {len(mismatched)} of another shape "
                              f"{[m[0] if isinstance(m, tuple) else m for m in mismatched][:3]}; {expected}")
        try:
            tokenizer = Sam3Processor.from_pretrained(checkpoint, local_files_only=offline).tokenizer
        except (OSError, ValueError):
            try:
                tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=offline)
            except (OSError, ValueError) as err:
                raise ConfigError(f"Sam3Teacher: checkpoint {checkpoint!r} has no processor / tokenizer{where}: "
                                  f"{err}") from err
        return model, tokenizer

    # ------------------------------------------------------------------ frozen
    def freeze(self) -> Sam3Teacher:
        """No gradients, eval mode (called at construction; call again after training or loading weights)."""
        self.model.requires_grad_(False)
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> Sam3Teacher:
        """The teacher stays in eval mode whatever a Trainer asks."""
        return super().train(False)

    # ------------------------------------------------------------------ sizes
    @property
    def image_size(self) -> int:
        size = self.model.config.vision_config.backbone_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def text_max_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def num_queries(self) -> int:
        return int(self.model.config.detr_decoder_config.num_queries)

    # ------------------------------------------------------------------ inputs
    def image_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` of uint8 (or [0, 255] float) images (B, 3, H, W): resized (bilinear, antialiased)
        to :attr:`image_size`, rescaled to [0, 1] and normalised with mean = std = 0.5 (``Sam3Processor``)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Sam3Teacher.image_inputs: expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float() / 255.0
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.5) / 0.5

    def tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Teacher ``input_ids`` / ``attention_mask`` of ``prompts``, padded to :attr:`text_max_length` (SAM3's
        processor pads to its context, 32). An empty prompt or one longer than the context is an error."""
        prompts = list(prompts)
        bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
        if bad:
            raise ValueError(f"Sam3Teacher.tokenize: empty prompt(s) {bad!r}")
        enc = self.tokenizer(prompts, padding="max_length", max_length=self.text_max_length, truncation=False,
                             return_tensors="pt")
        if enc["input_ids"].shape[1] > self.text_max_length:
            lengths = enc["attention_mask"].sum(1)
            long = [p for p, n in zip(prompts, lengths.tolist()) if n > self.text_max_length]
            raise ValueError(f"Sam3Teacher.tokenize: prompt(s) {long!r} exceed the teacher's context of "
                             f"{self.text_max_length} tokens")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # ------------------------------------------------------------------ forward
    def predict(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, images: torch.Tensor | None = None,
                image_index: torch.Tensor | None = None, vision_embeds: Any = None) -> dict[str, torch.Tensor]:
        """The output contract of the current weights, with gradients (the stand-in's training uses it).

        Give processed ``pixel_values`` or uint8 ``images`` (converted by :meth:`image_inputs`). ``image_index``
        (U,): several prompts per image; unit ``u`` is image ``image_index[u]`` with prompt ``input_ids[u]``, and
        the vision encoder runs once per image (SAM3's ``vision_embeds`` path); ``vision_embeds``: that image's
        ``get_vision_features`` output when already computed (instead of ``pixel_values`` / ``images``)."""
        given = sum(x is not None for x in (pixel_values, images, vision_embeds))
        if given != 1:
            raise ValueError("Sam3Teacher: give exactly one of pixel_values, images and vision_embeds")
        if vision_embeds is not None and image_index is None:
            raise ValueError("Sam3Teacher: vision_embeds needs image_index (unit -> image)")
        if input_ids is None:
            raise ValueError("Sam3Teacher: input_ids are required (tokenize the prompts with .tokenize)")
        if images is not None:
            pixel_values = self.image_inputs(images)
        if image_index is None:
            out = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
            return to_contract(out)
        if image_index.shape != (input_ids.shape[0],):
            raise ValueError(f"Sam3Teacher: image_index {tuple(image_index.shape)} must be (U,) for input_ids "
                             f"{tuple(input_ids.shape)}")
        vision = self.model.get_vision_features(pixel_values=pixel_values) if vision_embeds is None else vision_embeds
        vision = type(vision)(last_hidden_state=vision.last_hidden_state[image_index],
                              fpn_hidden_states=tuple(f[image_index] for f in vision.fpn_hidden_states),
                              fpn_position_encoding=tuple(f[image_index] for f in vision.fpn_position_encoding))
        out = self.model(vision_embeds=vision, input_ids=input_ids, attention_mask=attention_mask)
        return to_contract(out)

    def forward(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, images: torch.Tensor | None = None,
                image_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Frozen teacher outputs (under ``no_grad``): see :meth:`predict` and the module docstring."""
        with torch.no_grad():
            return self.predict(pixel_values, input_ids, attention_mask, images, image_index)

    # ------------------------------------------------------------------ identity
    def weights_digest(self) -> str:
        """SHA-1 of the current weights (:func:`~lit_experiments.data.cache_keys.weights_digest`)."""
        from lit_experiments.data.cache_keys import weights_digest

        return weights_digest(self.model)

    def cache_key(self) -> str:
        """Frozen-feature cache key: checkpoint (or a hash of the config) and a digest of the weights."""
        if self.checkpoint is not None:
            source = self.checkpoint
        else:
            source = "config-" + hashlib.sha1(json.dumps(self.config_dict, sort_keys=True).encode()).hexdigest()[:12]
        return f"sam3:{source}:{self.weights_digest()}"

    def settings(self) -> dict[str, Any]:
        """What results.json records about the teacher."""
        return {"checkpoint": self.checkpoint, "model_class": type(self.model).__name__,
                "image_size": self.image_size, "num_queries": self.num_queries,
                "text_max_length": self.text_max_length, "tokenizer": type(self.tokenizer).__name__,
                "num_parameters": sum(p.numel() for p in self.model.parameters()),
                "weights_digest": self.weights_digest()}


def to_contract(out: Any) -> dict[str, torch.Tensor]:
    """Map a ``Sam3ImageSegmentationOutput`` to the output contract (boxes ``xyxy`` -> ``cxcywh``, presence
    (B, 1) -> (B,))."""
    presence = out.presence_logits
    return {"pred_masks": out.pred_masks,
            "pred_boxes": box_convert(out.pred_boxes, in_fmt="xyxy", out_fmt="cxcywh"),
            "pred_logits": out.pred_logits,
            "presence_logits": presence.reshape(presence.shape[0])}
