"""Frozen-feature cache speed-up: epochs 2..N of a frozen ViT feature pipeline on ShapesWorld.

Both variants run in this process on the same data: (a) every epoch generates the images and runs the
frozen ViT; (b) epoch 1 builds the cache, later epochs read fp16 memory-mapped features (plus the
dataset items). The ratio of (a) to (b) over epochs 2..N is printed (goal >= 10x).
Default backbone: the ViT-S/14 (DINOv2) architecture, random init, at 112 px (8x8 patches).

Then the cost of the CRC-32 check on open: a cache of realistic size (default 196 MB, the slots demo's:
2000 clips x 3 frames x 256 tokens x 64 dims, float16) written by a cheap stand-in backbone, opened with
``verify=True`` and ``verify=False`` (best of 3 each, page cache warm), and compared with one pass over
its features. The last line is the ratio open-with-verify / open-without.

Usage: ``python bench/feature_cache.py [--n 64] [--epochs 3] [--img-size 112] [--depth 12] [--verify-mb 196]``
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
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


class BlankClips(torch.utils.data.Dataset):
    """``n`` blank clips (the stand-in backbone below ignores pixels); fingerprinted by size only."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"video": torch.zeros(3, 3, 8, 8, dtype=torch.uint8)}

    def fingerprint(self) -> str:
        return f"blank-{self.n}"


class NoiseBackbone:
    """Cheap stand-in: (B, T, tokens, dim) features of seeded noise, so a large cache is written in seconds."""

    name = "noise"

    def __init__(self, tokens: int = 256, dim: int = 64) -> None:
        self.tokens, self.dim, self.gen = tokens, dim, torch.Generator().manual_seed(0)

    def cache_key(self) -> str:
        return f"noise-{self.tokens}x{self.dim}"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(*x.shape[:2], self.tokens, self.dim, generator=self.gen)


def best_of(fn, k: int = 3) -> float:
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def verify_cost(megabytes: float) -> None:
    backbone = NoiseBackbone()
    per_clip = 3 * backbone.tokens * backbone.dim * 2
    clips = BlankClips(max(1, int(megabytes * 1e6 / per_clip)))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = FeatureCache(tmp, backbone, clips, batch_size=64, include_items=False, progress=False)
        build = time.perf_counter() - t0
        size = sum(sh["bytes"] for sh in cache.manifest["shards"])
        plain = best_of(lambda: FeatureCache(tmp, backbone, clips, include_items=False, verify=False))
        checked = best_of(lambda: FeatureCache(tmp, backbone, clips, include_items=False, verify=True))
        epoch = best_of(lambda: [np.asarray(s).sum(dtype=np.float32) for s in cache._open()], k=2)
    print(f"cache of {len(clips)} clips, {size / 1e6:.0f} MB in {len(cache.manifest['shards'])} shards, "
          f"built in {build:.1f}s")
    print(f"open without verify {plain * 1e3:.1f} ms, with CRC-32 verify {checked * 1e3:.0f} ms "
          f"({size / 1e9 / max(checked - plain, 1e-9):.2f} GB/s); one pass over the features {epoch * 1e3:.0f} ms "
          f"(verify / one pass: {checked / epoch:.2f})")
    print(f"open with verify / open without: {checked / plain:.0f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--verify-mb", type=float, default=196.0, help="size of the cache whose verify is timed")
    p.add_argument("--skip-speedup", action="store_true", help="only time the checksum verify")
    a = p.parse_args()
    if not a.skip_speedup:
        speedup(a)
    verify_cost(a.verify_mb)


def speedup(a: argparse.Namespace) -> None:
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
