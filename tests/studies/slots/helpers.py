"""Small builders shared by the slots tests (tiny ShapesWorld clips, colour_edge features, tiny models)."""
from __future__ import annotations

from typing import Any

import torch

from lit_experiments.core.specs import OptimSpec
from lit_experiments.core.trainer import LitTrainer
from lit_experiments.studies.slots.datamodule import ColourEdgeBackbone, SlotsDataModule
from lit_experiments.studies.slots.decoders import MLPDecoder
from lit_experiments.studies.slots.encoders import FeatureInput, PixelEncoder
from lit_experiments.studies.slots.module import SlotsModule
from lit_experiments.studies.slots.predictor import TransformerPredictor
from lit_experiments.studies.slots.slot_attention import LearnedSlotInit, SlotAttention
from lit_experiments.studies.slots.sources import ShapesClipSplits


def tiny_data(pixels: bool = False, n_test: int = 4, **kw: Any) -> SlotsDataModule:
    """8 / 4 / ``n_test`` ShapesWorld clips of 2 frames at 32 px, 1-3 objects; 16-d colour_edge features (none with
    ``pixels``: the pixel path)."""
    args: dict[str, Any] = dict(
        source=ShapesClipSplits(8, 4, n_test, {"image_size": 32, "num_frames": 2, "min_objects": 1, "max_objects": 3}),
        frozen=None if pixels else ColourEdgeBackbone(patch=4, dim=16, bandwidth=8.0), batch_size=4,
        cache_dir="cache",
    )
    args.update(kw)
    return SlotsDataModule(**args)


def tiny_parts(pixels: bool = False, projection_dim: int | None = None, learned: bool = False,
               bilevel: bool = False, num_slots: int = 4, dim: int = 16, predictor: bool = True) -> dict[str, Any]:
    """Constructor parts of a tiny slot model (the same shapes the YAML configs build)."""
    return dict(
        encoder=PixelEncoder(8) if pixels else FeatureInput(projection_dim),
        grouper=SlotAttention(dim, num_slots, mlp_hidden=dim, bilevel=bilevel,
                              init=LearnedSlotInit() if learned else None),
        decoder=MLPDecoder(dim),
        predictor=TransformerPredictor(hidden=dim) if predictor else None,
    )


def tiny_module(cls: type[SlotsModule] = SlotsModule, parts: dict[str, Any] | None = None, **kw: Any) -> SlotsModule:
    return cls(**{**(parts or tiny_parts()), "figure_clips": 2, "optimizer": OptimSpec(lr=1e-3), **kw})


def tiny_trainer(steps: int = 2, **kw: Any) -> LitTrainer:
    return LitTrainer(
        run_dir="run", accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, **kw,
    )


def batch_of(dm: SlotsDataModule, split: str = "train") -> dict:
    dm.setup("fit" if split in ("train", "val") else "test")
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return next(iter(loader))


def video_batch(b: int = 2, t: int = 3, n: int = 16, c: int = 8) -> dict[str, torch.Tensor]:
    return {"features": torch.randn(b, t, n, c), "feature_grid": torch.tensor([[4, 4]] * b)}
