"""Frozen-feature cache speed-up: epochs 2..N of a frozen ViT feature pipeline on ShapesWorld.

Both variants run in this process on the same data: (a) every epoch generates the images and runs the
frozen ViT; (b) epoch 1 builds the cache, later epochs read fp16 memory-mapped features (plus the
dataset items). The ratio of (a) to (b) over epochs 2..N is the last line (goal >= 10x).
Default backbone: the ViT-S/14 (DINOv2) architecture, random init, at 112 px (8x8 patches).

Usage: ``python bench/feature_cache.py [--n 64] [--epochs 3] [--img-size 112] [--depth 12]``
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lit_experiments.backbones import build_backbone
from lit_experiments.data.cache import FeatureCache
from lit_experiments.data.shapes import ShapesWorld


def epoch_uncached(world, backbone, transform, batch_size: int) -> float:
    t0 = time.perf_counter()
    for batch in DataLoader(world, batch_size=batch_size):
        x = transform(batch["image"].float() / 255.0)
        feats = backbone.features(x)
        feats.float().mean().item()  # consume
    return time.perf_counter() - t0


def epoch_cached(cache, batch_size: int) -> float:
    t0 = time.perf_counter()
    for batch in DataLoader(cache, batch_size=batch_size):
        batch["features"].float().mean().item()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args()
    torch.manual_seed(0)
    backbone = build_backbone("vit_small_patch14_dinov2", img_size=a.img_size, model_kwargs={"depth": a.depth})
    world = ShapesWorld(a.n, image_size=64, seed=0)
    transform = v2.Resize((a.img_size, a.img_size), antialias=True)
    plain = [epoch_uncached(world, backbone, transform, a.batch_size) for _ in range(a.epochs)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = FeatureCache(tmp, backbone, world, transform=transform, batch_size=a.batch_size, progress=False)
        build = time.perf_counter() - t0
        cached = [epoch_cached(cache, a.batch_size) for _ in range(a.epochs - 1)]
    later_plain, later_cached = sum(plain[1:]), sum(cached)
    print(f"backbone {backbone.name} depth={a.depth} img={a.img_size} tokens={backbone.grid_size(a.img_size, a.img_size)}"
          f" dim={backbone.out_dim}; n={a.n}, epochs={a.epochs}")
    print(f"uncached epochs: {', '.join(f'{t:.2f}s' for t in plain)}")
    print(f"cached: build (epoch 1) {build:.2f}s, epochs 2..N: {', '.join(f'{t:.3f}s' for t in cached)}")
    print(f"feature cache speed-up, epochs 2..{a.epochs}: {later_plain / later_cached:.1f}x")


if __name__ == "__main__":
    main()
