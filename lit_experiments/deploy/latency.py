"""Measurements shared by ``lit-exp quantize`` and the latency cards: CPU latency (median of repeats), model
size (bytes of a saved state dict) and peak resident memory (RSS sampled in a thread).

Absolute times on a shared machine drift: compare variants measured in one process (ratios), as the tools do.
"""
from __future__ import annotations

import io
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MB = 1024 * 1024


def describe_threads() -> str:
    return f"torch.get_num_threads() = {torch.get_num_threads()}"


def measure_latency(fn: Callable[[], Any], per: int = 1, repeats: int = 20, warmup: int = 1) -> dict[str, Any]:
    """Time ``fn()`` (under ``torch.inference_mode``) ``repeats`` times after ``warmup`` calls.

    Returns ``median_ms`` (one call), ``per_item_ms`` (median / ``per``, e.g. the images of the batch),
    ``min_ms``, ``repeats`` and ``threads`` (``torch.get_num_threads()`` at measurement time)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: expected >= 1")
    times = []
    with torch.inference_mode():
        for _ in range(max(warmup, 0)):
            fn()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000.0)
    median = statistics.median(times)
    return {"median_ms": median, "per_item_ms": median / max(per, 1), "min_ms": min(times), "repeats": repeats,
            "threads": torch.get_num_threads()}


def state_dict_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())`` (in memory): the model's size as a file."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def state_dict_mb(module: torch.nn.Module) -> float:
    return state_dict_bytes(module) / MB


def file_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / MB


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Peak resident memory of the process while the block runs, sampled every ``interval`` s in a thread.

    ``peak_mb``: the highest RSS seen; ``delta_mb``: that peak minus the RSS when the block started (what the
    block added; memory freed earlier but kept by the allocator is not counted twice). Without ``/proc`` it falls
    back to ``ru_maxrss`` (a process-wide high-water mark: the delta is 0 unless the block set a new record);
    ``source`` says which was used."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_mb = self.delta_mb = 0.0
        self.source = "/proc/self/statm RSS sampled every %g ms" % (interval * 1000)
        self._stop = threading.Event()
        self._start = self._peak = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes() or 0
            self._peak = max(self._peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        start = _rss_bytes()
        if start is None:
            self.source = "resource.getrusage ru_maxrss (process high-water mark)"
            self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._thread = None
            return self
        self._start = self._peak = start
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is None:
            self._peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
        self.peak_mb = self._peak / MB
        self.delta_mb = max(self._peak - self._start, 0) / MB
