"""ShapesWorld generation speed on one core: 64x64 images per second (last line).

Usage: ``python bench/shapes_throughput.py [--n 2000] [--image-size 64] [--max-objects 3]``.
Also prints the video rate (frames/s) and the textured-background rate for reference.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from lit_experiments.data.shapes import ShapesWorld


def rate(world: ShapesWorld, n: int, frames: int = 1) -> tuple[float, float]:
    """(per CPU second, per wall second) samples or frames generated over ``n`` samples, after a warm-up.

    The CPU-time rate is what one core delivers; the wall rate also counts time the shared machine
    gave to other processes.
    """
    for i in range(min(20, n)):
        world[i]
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        world[i]
    return n * frames / (time.process_time() - c0), n * frames / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-objects", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    s = a.image_size
    video = rate(ShapesWorld(a.n // 8, s, num_frames=8, max_objects=a.max_objects), a.n // 8, frames=8)
    textured = rate(ShapesWorld(a.n, s, max_objects=a.max_objects, background="textured"), a.n)
    print(f"video frames ({s}x{s}, T=8): {video[0]:,.0f} frames/s (wall: {video[1]:,.0f})")
    print(f"textured images ({s}x{s}): {textured[0]:,.0f} images/s (wall: {textured[1]:,.0f})")
    cpu, wall = rate(ShapesWorld(a.n, s, max_objects=a.max_objects), a.n)
    print(f"plain images wall-clock rate on the shared machine: {wall:,.0f} images/s")
    print(f"ShapesWorld {s}x{s} images/s on one core (CPU time): {cpu:,.0f}")


if __name__ == "__main__":
    main()
