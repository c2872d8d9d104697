"""Frozen-feature cache: backbone features computed once, served memory-mapped every epoch after.

``FeatureCache(cache_dir, backbone, dataset, transform=None, transform_id=None, key_fields=None, ...)`` is
a ``Dataset`` yielding ``dataset[i]`` plus ``features``: (N, C) per image, (T, N, C) per video (one
feature map per frame). Features are stored **float16** and returned as ``dtype`` (default float32).

Layout: ``<cache_dir>/<backbone>-<keyhash>/{manifest.json, shard_00000.npy, ...}``. The key holds the
backbone's ``cache_key()`` (name, weights fingerprint, layers, resolution), the transform description,
the data fingerprint (``dataset.fingerprint()`` when the dataset has one, else a hash of its type, length
and three samples' pixels) and ``key_fields``; changing any of them selects another directory.
On load the manifest (key, count, per-sample shape, dtype, shard sizes) is checked; a mismatch, a
missing or truncated shard triggers a rebuild with a printed message. Writes are atomic: shards and
manifest are written into a temporary directory which is renamed into place (``os.replace``).
Under DDP rank 0 builds while the others wait on a barrier; processes that share a cache dir without
``torch.distributed`` (``LOCAL_RANK > 0`` or a held build lock) poll for the manifest.

Caching stores one view per sample, so a transform with random augmentation is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

FORMAT_VERSION = 1
RANDOM_TRANSFORM_NAMES = {
    "ColorJitter", "GaussianBlur", "RandAugment", "AutoAugment", "TrivialAugmentWide", "AugMix",
    "ElasticTransform", "GaussianNoise", "RandomChoice", "RandomOrder", "RandomApply",
}


class RandomTransformError(ValueError):
    """A random augmentation was found in a transform that should be cached."""


def _children(t: Any) -> Iterator[tuple[str, Any]]:
    for attr in ("transforms", "transform"):
        sub = getattr(t, attr, None)
        if sub is None or sub is t:
            continue
        if isinstance(sub, (list, tuple, torch.nn.ModuleList)):
            for i, s in enumerate(sub):
                yield f".{attr}[{i}]", s
        elif callable(sub):
            yield f".{attr}", sub
    if isinstance(t, torch.nn.Module):
        for n, m in t.named_children():
            yield f".{n}", m


def find_random_transforms(transform: Any, path: str = "transform") -> list[str]:
    """Locations of random augmentations in a transform pipeline (torchvision v1/v2, nn.Sequential).

    A step counts as random when its class name starts with ``Random`` or is a known random op
    (ColorJitter, GaussianBlur, RandAugment, ...), or when it has an attribute ``random = True``.
    """
    if transform is None:
        return []
    found = []
    cls = type(transform).__name__
    if cls.startswith("Random") or cls in RANDOM_TRANSFORM_NAMES or getattr(transform, "random", False) is True:
        found.append(f"{path} ({cls})")
    seen = set()
    for suffix, child in _children(transform):
        if id(child) in seen:
            continue
        seen.add(id(child))
        found += find_random_transforms(child, path + suffix)
    return found


def describe_transform(transform: Any, transform_id: str | None = None) -> str:
    """Stable description of a transform for the cache key (``transform_id`` wins)."""
    if transform_id is not None:
        return str(transform_id)
    if transform is None:
        return "identity"
    text = repr(transform)
    if " at 0x" in text:
        raise ValueError(
            f"FeatureCache: cannot derive a stable cache key from {text}; pass transform_id='...' naming it"
        )
    return text


def data_fingerprint(dataset: Dataset, image_key: str) -> str:
    """``dataset.fingerprint()`` when defined, else a hash of type, length and three samples' pixels."""
    fp = getattr(dataset, "fingerprint", None)
    if callable(fp):
        return str(fp())
    n = len(dataset)
    h = hashlib.sha1(f"{type(dataset).__module__}.{type(dataset).__qualname__}:{n}".encode())
    for i in sorted({0, n // 2, n - 1} if n else set()):
        h.update(torch.as_tensor(dataset[i][image_key]).contiguous().numpy().tobytes())
    return "sampled-" + h.hexdigest()[:16]


class _StackImages:
    """Collate: [0,1] float images (or frames) of a batch, transformed, stacked."""

    def __init__(self, image_key: str, transform: Callable | None) -> None:
        self.image_key, self.transform = image_key, transform

    def __call__(self, items: list[dict]) -> torch.Tensor:
        out = []
        for item in items:
            x = torch.as_tensor(item[self.image_key])
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            out.append(self.transform(x) if self.transform is not None else x)
        return torch.stack(out)


def _dist() -> tuple[bool, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1, torch.distributed.get_rank()
    return False, int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0)


class FeatureCache(Dataset):
    """Dataset of ``dataset[i]`` + cached frozen ``features`` (see module docstring)."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        backbone: Any,
        dataset: Dataset,
        transform: Callable | None = None,
        transform_id: str | None = None,
        key_fields: dict | None = None,
        batch_size: int = 32,
        image_key: str | None = None,
        dtype: torch.dtype = torch.float32,
        include_items: bool = True,
        shard_size: int = 4096,
        num_workers: int = 0,
        random: bool = False,
        wait_timeout_s: float = 3600.0,
        progress: bool = True,
    ) -> None:
        """
        Args:
            cache_dir: root folder of all caches.
            backbone: a :class:`~lit_experiments.backbones.FrozenBackbone` (``features``, ``cache_key``).
            dataset: yields dicts with ``image`` (3,H,W) or ``video`` (T,3,H,W) uint8 / [0,1] float.
            transform: deterministic callable on the [0,1] float image (or frames) before the backbone.
            transform_id: name of the transform for the key (default ``repr(transform)``).
            key_fields: extra key entries (anything else that changes the features).
            image_key: ``"image"`` / ``"video"``; default: detected from ``dataset[0]``.
            dtype: dtype of returned features (stored as float16).
            include_items: return ``dataset[i]`` plus features (True) or only ``index`` + ``features``.
            random: declare the transform random (refused, like detected random augmentations).
        """
        found = find_random_transforms(transform)
        if random or found:
            where = ", ".join(found) if found else "random=True was passed"
            raise RandomTransformError(
                "FeatureCache refuses a transform with random augmentation "
                f"({where}): the cache stores one feature tensor per sample computed once, so the "
                "augmentation would be frozen into the cache and every epoch would see the same view. "
                "Use a deterministic transform (e.g. Resize) for cached features, or set cache_features: false."
            )
        self.backbone, self.dataset, self.transform = backbone, dataset, transform
        self.dtype, self.include_items, self.batch_size = dtype, include_items, int(batch_size)
        self.shard_size, self.num_workers, self.progress = int(shard_size), int(num_workers), progress
        self.image_key = image_key or ("video" if "video" in dataset[0] else "image")
        self.key = {
            "format": FORMAT_VERSION,
            "backbone": backbone.cache_key(),
            "transform": describe_transform(transform, transform_id),
            "data": data_fingerprint(dataset, self.image_key),
            "count": len(dataset),
            "image_key": self.image_key,
            "fields": json.loads(json.dumps(key_fields or {}, sort_keys=True, default=str)),
        }
        digest = hashlib.sha1(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in getattr(backbone, "name", "backbone"))
        self.path = Path(cache_dir) / f"{safe}-{digest}"
        self.built_now = False
        self.wait_timeout_s = wait_timeout_s
        self._shards: list[np.ndarray] | None = None
        self.manifest = self._ensure()

    # ------------------------------------------------------------------ validation
    def check(self) -> str | None:
        """None when the cache on disk is complete and matches the key, else the reason it is not."""
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            return "no manifest (not built yet)"
        try:
            man = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as e:
            return f"unreadable manifest {mpath}: {e}"
        if man.get("key") != self.key:
            return f"manifest key differs from the requested key ({mpath})"
        if man.get("dtype") != "float16" or man.get("count") != len(self.dataset):
            return f"manifest count/dtype {man.get('count')}/{man.get('dtype')} != {len(self.dataset)}/float16"
        total = 0
        for sh in man.get("shards", []):
            f = self.path / sh["file"]
            if not f.is_file():
                return f"missing shard {f}"
            if f.stat().st_size != sh["bytes"]:
                return f"truncated or altered shard {f}: {f.stat().st_size} bytes, manifest says {sh['bytes']}"
            try:
                arr = np.load(f, mmap_mode="r")
            except Exception as e:  # noqa: BLE001
                return f"unreadable shard {f}: {e}"
            if arr.dtype != np.float16 or list(arr.shape) != [sh["count"], *man["sample_shape"]]:
                return f"shard {f} has shape {arr.shape} {arr.dtype}, manifest says {[sh['count'], *man['sample_shape']]}"
            total += sh["count"]
        if total != man["count"]:
            return f"shards hold {total} samples, manifest says {man['count']}"
        return None

    def _ensure(self) -> dict:
        distributed, rank = _dist()
        if distributed:
            if rank == 0:
                self._build_if_needed()
            torch.distributed.barrier()
        elif rank > 0:
            self._wait_for_valid()
        else:
            self._build_if_needed()
        if (reason := self.check()) is not None:
            hint = (f" (rank {rank}: its cache key differs from rank 0's? seed random-init backbones identically "
                    "on every rank)") if distributed and rank else ""
            raise RuntimeError(f"FeatureCache {self.path} is not valid after building: {reason}{hint}")
        return json.loads((self.path / "manifest.json").read_text())

    def _wait_for_valid(self, lock: Path | None = None) -> bool:
        """Poll until the cache is valid (True) or, when ``lock`` is given, until the lock is gone (False)."""
        start = time.time()
        while self.check() is not None:
            if lock is not None and not lock.exists():
                return False
            if time.time() - start > self.wait_timeout_s:
                raise TimeoutError(f"FeatureCache: waited {self.wait_timeout_s:.0f}s for {self.path} to be built")
            time.sleep(0.5)
        return True

    def _acquire(self, lock: Path) -> int | None:
        """Create the build lock (``host:pid``); None while a live process holds it. Dead holders' locks are broken."""
        me = f"{socket.gethostname()}:{os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, me.encode())
                return fd
            except FileExistsError:
                try:
                    host, _, pid = lock.read_text().partition(":")
                    age = time.time() - lock.stat().st_mtime
                except (OSError, ValueError):
                    continue  # released meanwhile
                alive = True
                if host == socket.gethostname() and pid.isdigit():
                    try:
                        os.kill(int(pid), 0)
                    except ProcessLookupError:
                        alive = False
                    except PermissionError:
                        pass
                if alive and age < self.wait_timeout_s:
                    return None
                print(f"[feature-cache] breaking stale lock {lock} ({host}:{pid})")
                lock.unlink(missing_ok=True)
        return None

    def _build_if_needed(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.parent / (self.path.name + ".lock")
        while (reason := self.check()) is not None:
            fd = self._acquire(lock)
            if fd is None:  # another process builds it: wait for its manifest (or for its lock to vanish)
                print(f"[feature-cache] waiting for another process building {self.path}")
                if self._wait_for_valid(lock):
                    return
                continue
            try:
                if reason.startswith("no manifest"):
                    print(f"[feature-cache] building {self.path}")
                else:
                    print(f"[feature-cache] rebuilding {self.path}: {reason}")
                tmp = self.path.parent / f".tmp-{self.path.name}-{os.getpid()}"
                try:
                    self._build(tmp)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)  # never leave a partial cache behind
                    raise
                self.built_now = True
            finally:
                os.close(fd)
                lock.unlink(missing_ok=True)
            return

    # ------------------------------------------------------------------ building
    def _batches(self) -> Iterator[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
            collate_fn=_StackImages(self.image_key, self.transform),
        )
        yield from loader

    def _build(self, tmp: Path) -> None:
        n = len(self.dataset)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0, written, shards, arrays = time.time(), 0, [], []
        sample_shape: list[int] | None = None
        bar = tqdm(total=n, desc=f"features {getattr(self.backbone, 'name', '')}", disable=not self.progress)
        for x in self._batches():
            feats = self.backbone.features(x).detach().to("cpu", torch.float16).numpy()
            if sample_shape is None:
                sample_shape = list(feats.shape[1:])
            pos = 0
            while pos < len(feats):
                k, off = divmod(written, self.shard_size)
                if off == 0:
                    count = min(self.shard_size, n - written)
                    f = tmp / f"shard_{k:05d}.npy"
                    arrays.append(np.lib.format.open_memmap(f, mode="w+", dtype=np.float16, shape=(count, *sample_shape)))
                    shards.append({"file": f.name, "count": count})
                take = min(len(feats) - pos, len(arrays[-1]) - off)
                arrays[-1][off : off + take] = feats[pos : pos + take]
                pos, written = pos + take, written + take
            bar.update(len(feats))
        bar.close()
        for a in arrays:
            a.flush()
        del arrays
        for sh in shards:
            sh["bytes"] = (tmp / sh["file"]).stat().st_size
        manifest = {
            "key": self.key, "count": written, "dtype": "float16", "sample_shape": sample_shape or [],
            "shards": shards, "shard_size": self.shard_size, "build_seconds": round(time.time() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if self.path.exists():  # stale / corrupt copy: move aside, then drop it
            trash = self.path.parent / f".trash-{self.path.name}-{os.getpid()}"
            os.replace(self.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, self.path)

    # ------------------------------------------------------------------ reading
    def _open(self) -> list[np.ndarray]:
        if self._shards is None:
            self._shards = [np.load(self.path / sh["file"], mmap_mode="r") for sh in self.manifest["shards"]]
        return self._shards

    def __getstate__(self) -> dict:  # workers re-open the memmaps and never receive the backbone
        state = dict(self.__dict__)
        state["_shards"], state["backbone"] = None, None
        return state

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def features(self, index: int) -> torch.Tensor:
        """Stored features of sample ``index`` as ``self.dtype``."""
        k, off = divmod(int(index), int(self.manifest["shard_size"]))
        return torch.from_numpy(np.array(self._open()[k][off])).to(self.dtype)

    def __getitem__(self, index: int) -> dict:
        feats = self.features(index)
        if not self.include_items:
            return {"index": torch.tensor(int(index)), "features": feats}
        item = dict(self.dataset[index])
        item["features"] = feats
        return item


def cached_features(cache_dir: str | os.PathLike, backbone: Any, dataset: Dataset, **kwargs: Any) -> FeatureCache:
    """Functional form of :class:`FeatureCache`."""
    return FeatureCache(cache_dir, backbone, dataset, **kwargs)
