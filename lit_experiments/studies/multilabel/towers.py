"""Frozen SigLIP / SigLIP2 image and text towers (transformers), the feature source of the multilabel study.

* FixRes checkpoints (``google/siglip2-base-patch16-224``, all SigLIP 1) load as ``SiglipModel``
  (:class:`SiglipTowers`); NaFlex checkpoints (``google/siglip2-base-patch16-naflex``) as ``Siglip2Model``
  (:class:`Siglip2Towers`), whose image tower also takes ``pixel_attention_mask`` and ``spatial_shapes``. The
  class is the switch (a ``class_path`` in the YAML); ``kind`` (``siglip`` / ``siglip2``) is its label in the
  cache key and results.json.
* :attr:`SiglipTowers.image_size` is the side of the square input the towers were built for (FixRes: the vision
  config's ``image_size``; NaFlex: ``patch_size * sqrt(num_patches)``): the side a file source resizes to when it
  names none, so the YAML says it once.
* Embeddings are the ``.pooler_output`` of ``get_image_features`` / ``get_text_features`` (transformers 5
  returns a ``BaseModelOutputWithPooling``; a bare tensor from older versions is accepted too), not
  L2-normalised.
* Text mask policy. SigLIP's text tower pools the **last position** and was trained on text padded to the
  maximum length (64) **without** an attention mask (transformers' SigLIP docs: "make sure to set
  padding='max_length' as that's how the model was trained"). ``pad_to_max`` (default) reproduces that:
  ``tokenize`` pads to the maximum length and ``encode_text`` never passes a mask. ``attention_mask`` pads to
  the longest text and passes the mask (a different embedding). The policy is in ``settings()`` (results.json)
  and in ``cache_key()``.
* The towers are always frozen: parameters without gradients, eval mode, every forward under ``no_grad``.
"""
from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import torch
from torch import nn

from lit_experiments.core.errors import ConfigError
from lit_experiments.data.shapes import CATEGORIES, COLORS, MATERIALS

TEXT_MASK_POLICIES = ("pad_to_max", "attention_mask")
# word-level vocabulary of ShapesWorld captions and prompts (pad 0 / eos 1 / bos 2, as tiny SigLIP configs)
SHAPES_VOCAB: tuple[str, ...] = ("<pad>", "</s>", "<s>", "<unk>", ",", "a", "an", "and", "of", "photo",
                                 *CATEGORIES, *COLORS, *MATERIALS)


def shapes_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :data:`SHAPES_VOCAB` (lowercased, ``</s>`` appended)."""
    from lit_experiments.data.word_tokenizer import word_level_tokenizer

    return word_level_tokenizer(SHAPES_VOCAB)


def tiny_config(image_size: int = 32, patch_size: int = 4, hidden: int = 64, vision_layers: int = 3,
                text_layers: int = 2, heads: int = 4, text_len: int = 16) -> dict[str, Any]:
    """A tiny SigLIP config dict over the ShapesWorld vocabulary (the stand-in's default architecture)."""
    common = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_attention_heads": heads}
    return {
        "text_config": {**common, "num_hidden_layers": text_layers, "vocab_size": len(SHAPES_VOCAB),
                        "max_position_embeddings": text_len, "projection_size": hidden,
                        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2},
        "vision_config": {**common, "num_hidden_layers": vision_layers, "image_size": image_size,
                          "patch_size": patch_size},
    }


def _pooled(out: Any) -> torch.Tensor:
    """``.pooler_output`` of a transformers output, or the tensor itself (older transformers)."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"expected a tensor or an output with .pooler_output, got {type(out).__name__}")
    return pooled


class SiglipTowers(nn.Module):
    """Frozen SigLIP image and text towers (``SiglipModel``: FixRes checkpoints, SigLIP 1 and 2).

    Args:
        checkpoint: local directory or hub id of a transformers checkpoint (read from the hub cache only when
            ``HF_HUB_OFFLINE=1``); ``None`` with ``config`` to build from scratch.
        config: a config dict (``text_config`` / ``vision_config``, e.g. :func:`tiny_config`) to build a
            randomly initialised model instead of loading one; its tokenizer is :func:`shapes_tokenizer`.
        text_mask_policy: ``pad_to_max`` (how SigLIP was trained, default) or ``attention_mask``.
        init_seed: seed of the random initialisation when built from ``config``.
    """

    always_frozen = True
    #: the towers' label in the cache key and results.json (the class is the switch)
    kind: ClassVar[str] = "siglip"

    def __init__(self, checkpoint: str | None = None, config: dict[str, Any] | None = None,
                 text_mask_policy: str = "pad_to_max", init_seed: int = 0) -> None:
        super().__init__()
        if text_mask_policy not in TEXT_MASK_POLICIES:
            raise ConfigError(f"SiglipTowers: text_mask_policy={text_mask_policy!r}; expected one of "
                              f"{TEXT_MASK_POLICIES}")
        if (checkpoint is None) == (config is None):
            raise ConfigError("SiglipTowers: give exactly one of checkpoint (path or hub id) and config (dict)")
        self.checkpoint, self.text_mask_policy = checkpoint, text_mask_policy
        self.config_dict = dict(config) if config is not None else None
        model_cls, config_cls = self.model_classes()
        if config is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(init_seed))
                self.model = model_cls(config_cls(**config))
            self.tokenizer = shapes_tokenizer()
        else:
            from transformers import AutoTokenizer

            offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
            where = " (HF_HUB_OFFLINE=1: local path or hub cache only)" if offline else ""
            try:
                self._check_model_type(checkpoint, model_cls, offline)
                self.model = model_cls.from_pretrained(checkpoint, local_files_only=offline)
                self.tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=offline)
            except ConfigError:
                raise
            except OSError as err:
                raise ConfigError(f"{type(self).__name__}: cannot load checkpoint {checkpoint!r} as "
                                  f"{model_cls.__name__}{where}: {err}") from err
            except (ValueError, RuntimeError) as err:  # weights of another architecture (shapes, keys)
                line = (str(err).strip().splitlines() or [""])[0][:400]
                raise ConfigError(f"{type(self).__name__}: checkpoint {checkpoint!r} does not load as "
                                  f"{model_cls.__name__}: {type(err).__name__}: {line}") from err
        self.freeze()

    @classmethod
    def _check_model_type(cls, checkpoint: str, model_cls: type, offline: bool) -> None:
        """A checkpoint whose ``config.json`` names another model type (a FixRes ``siglip`` folder given to the
        NaFlex towers, or the reverse) is a :class:`ConfigError` naming both, before its weights are read."""
        from transformers import AutoConfig

        found = AutoConfig.from_pretrained(checkpoint, local_files_only=offline)
        expected = model_cls.config_class.model_type
        if found.model_type != expected:
            other = next((c.__name__ for c in TOWER_FAMILIES.values() if c.model_classes()[1].model_type ==
                          found.model_type), None)
            raise ConfigError(
                f"{cls.__name__}: checkpoint {checkpoint!r} holds a {found.model_type!r} model "
                f"({', '.join(getattr(found, 'architectures', None) or []) or 'no architectures listed'}); expected "
                f"a {model_cls.__name__} checkpoint (model_type {expected!r})"
                + (f": load it with {other} (class_path lit_experiments.studies.multilabel.towers.{other})"
                   if other else ""))

    @staticmethod
    def model_classes() -> tuple[type, type]:
        """The transformers model and config classes these towers load."""
        from transformers import SiglipConfig, SiglipModel

        return SiglipModel, SiglipConfig

    def random_init(self, init_seed: int) -> SiglipTowers:
        """Towers of the same class, config and text policy at a random initialisation (a stand-in's floor)."""
        return TOWER_FAMILIES[self.kind](config=self.config_dict, text_mask_policy=self.text_mask_policy,
                                         init_seed=init_seed)

    # ------------------------------------------------------------------ frozen
    def freeze(self) -> SiglipTowers:
        """No gradients, eval mode (called at construction; call again after loading new weights)."""
        self.model.requires_grad_(False)
        nn.Module.train(self, False)
        return self

    def train(self, mode: bool = True) -> SiglipTowers:
        """The towers stay in eval mode whatever a Trainer asks."""
        return super().train(False)

    @property
    def text_max_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def image_size(self) -> int:
        """The side of the square input the image tower was built for."""
        return int(self.model.config.vision_config.image_size)

    @property
    def embed_dim(self) -> int:
        tc = self.model.config.text_config
        return int(getattr(tc, "projection_size", None) or tc.hidden_size)

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None,
                     spatial_shapes: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D)`` image embeddings (pooler output, not normalised) of processed ``pixel_values``."""
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D)`` text embeddings. Under ``pad_to_max`` any ``attention_mask`` is dropped (SigLIP's training
        setting); under ``attention_mask`` it is passed on."""
        mask = attention_mask if self.text_mask_policy == "attention_mask" else None
        return _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=mask))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids of ``texts`` under the mask policy: ``pad_to_max`` -> ``{"input_ids"}`` padded to
        :attr:`text_max_length`; ``attention_mask`` -> ``{"input_ids", "attention_mask"}`` padded to the longest."""
        pad = self.text_mask_policy == "pad_to_max"
        enc = self.tokenizer(list(texts), padding="max_length" if pad else "longest", max_length=self.text_max_length,
                             truncation=True, return_tensors="pt")
        out = {"input_ids": enc["input_ids"]}
        if not pad:
            out["attention_mask"] = enc["attention_mask"]
        return out

    def image_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model inputs of uint8 (or [0, 255] float) images ``(B, 3, H, W)`` at the tower's resolution:
        SigLIP's normalisation (mean = std = 0.5)."""
        x = images.float() / 127.5 - 1.0
        size = self.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return {"pixel_values": x}

    # ------------------------------------------------------------------ identity
    def weights_digest(self) -> str:
        """SHA-1 of the current weights (:func:`~lit_experiments.data.cache_keys.weights_digest`)."""
        from lit_experiments.data.cache_keys import weights_digest

        return weights_digest(self.model)

    def cache_key(self) -> str:
        """Frozen-feature cache key: kind, checkpoint (or ``config``), text policy and a digest of the weights."""
        return f"{self.kind}:{self.checkpoint or 'config'}:{self.text_mask_policy}:{self.weights_digest()}"

    def settings(self) -> dict[str, Any]:
        """What results.json records about the towers."""
        return {"kind": self.kind, "checkpoint": self.checkpoint, "text_mask_policy": self.text_mask_policy,
                "text_max_length": self.text_max_length, "embed_dim": self.embed_dim,
                "model_class": type(self.model).__name__, "weights_digest": self.weights_digest()}


class Siglip2Towers(SiglipTowers):
    """Frozen SigLIP2 NaFlex towers (``Siglip2Model``): the image tower reads patchified pixels with
    ``pixel_attention_mask`` and ``spatial_shapes``; images are resized to the square of the patch budget
    (:attr:`image_size`) and patchified with a full mask. Args as :class:`SiglipTowers`."""

    kind: ClassVar[str] = "siglip2"

    @staticmethod
    def model_classes() -> tuple[type, type]:
        from transformers import Siglip2Config, Siglip2Model

        return Siglip2Model, Siglip2Config

    @property
    def image_size(self) -> int:
        """``patch_size * sqrt(num_patches)``: the square that fills the patch budget."""
        vc = self.model.config.vision_config
        return int(vc.patch_size) * math.isqrt(int(vc.num_patches))

    @torch.no_grad()
    def encode_image(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None,
                     spatial_shapes: torch.Tensor | None = None) -> torch.Tensor:
        if pixel_attention_mask is None or spatial_shapes is None:
            raise ValueError("Siglip2Towers.encode_image needs pixel_attention_mask and spatial_shapes (the NaFlex "
                             "processor's outputs)")
        return _pooled(self.model.get_image_features(pixel_values=pixel_values,
                                                     pixel_attention_mask=pixel_attention_mask,
                                                     spatial_shapes=spatial_shapes))

    def image_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """SigLIP's normalisation, then patches of ``patch_size`` in raster order with a full mask (any side that
        is a multiple of the patch size)."""
        x = images.float() / 127.5 - 1.0
        p = int(self.model.config.vision_config.patch_size)
        b, c, h, w = x.shape
        if h % p or w % p:
            raise ValueError(f"image side {h}x{w} is not a multiple of the patch size {p}")
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)
        return {"pixel_values": patches, "pixel_attention_mask": torch.ones(b, patches.shape[1], dtype=torch.long),
                "spatial_shapes": torch.tensor([[h // p, w // p]] * b, dtype=torch.long)}


#: the class of each ``kind`` (a stand-in subclass re-creates its family's plain towers)
TOWER_FAMILIES: dict[str, type[SiglipTowers]] = {"siglip": SiglipTowers, "siglip2": Siglip2Towers}
