"""Frozen-feature cache: backbone features computed once, served memory-mapped every epoch after.

``FeatureCache(cache_dir, backbone, dataset, transform=None, transform_id=None, key_fields=None, ...)`` is
a ``Dataset`` yielding ``dataset[i]`` plus ``features``: (N, C) per image, (T, N, C) per video (one
feature map per frame). Features are stored **float16** and returned as ``dtype`` (default float32).

Layout: ``<cache_dir>/<backbone>-<keyhash>/{manifest.json, shard_00000.npy, ...}``. The key (see
``cache_keys.py``) holds the backbone's ``cache_key()``, the transform, the data fingerprint and
``key_fields``; changing any of them selects another directory. A transform with random augmentation is
refused (the cache stores one view per sample).

Integrity. On open the manifest (key, count, shape, dtype, shard sizes) is checked: a mismatch, a missing
or truncated shard triggers a rebuild with a printed message. The manifest holds a CRC-32 of every shard
file and a cache this process did not build is **fully verified** on open (``verify=True``): a same-size
altered shard raises :class:`CacheCorruptError` naming the file and asking to delete the cache to rebuild
it. Not sampled: ``bench/feature_cache.py`` measured 0.22 s for the slots demo's 196 MB cache (~0.9 GB/s
on a loaded 2-core box), about half of one plain pass over the same features (an unverified open only
reads headers: ~380x faster, but training reads every byte each epoch anyway, and the check warms the
page cache for it). ``verify=False`` skips it.
NaN / inf features, or values that overflow float16, are refused at build time with
:class:`NonFiniteFeaturesError` naming the backbone and the sample index.

Atomic builds. Shards, then the manifest, are written into a temporary directory renamed into place
(``os.replace``); a failed build removes only its temporary directory, so an older copy being rebuilt and
every other cache stay as they were until a complete build replaces them. Under DDP rank 0 builds while
the others wait on a barrier; processes sharing a cache dir without ``torch.distributed`` (``LOCAL_RANK >
0`` or a held build lock) poll for the manifest. Builds show a tqdm bar on a terminal, a line every 10% in
logs (``progress=None``).

Random state: **a seed per purpose.** Whatever runs before training (a cache build, a stand-in, a data
generator) draws from its own generator seeded for that purpose, never from the global torch / numpy /
python RNGs that ``seed_everything`` set for training; else a run's numbers depend on what was on disk.
The cache runs under :func:`isolated_rng` (global states restored) and its DataLoader has its own
``generator`` (iterating a DataLoader draws a base seed from the global RNG, even with ``shuffle=False``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..core.errors import LitExpError
from ..core.seeding import isolated_rng
from .cache_keys import RandomTransformError, data_fingerprint, describe_transform, find_random_transforms

FORMAT_VERSION = 2  # 2: CRC-32 per shard in the manifest


class FeatureCacheError(LitExpError, RuntimeError):
    """A feature cache cannot be built or trusted (base of the two errors below; the CLI prints it in one block)."""


class CacheCorruptError(FeatureCacheError):
    """A shard on disk no longer matches the checksum its build recorded."""


class NonFiniteFeaturesError(FeatureCacheError):
    """The backbone produced NaN / inf features (or values beyond float16) while the cache was built."""


def file_crc32(path: Path, chunk: int = 1 << 20) -> int:
    """CRC-32 of a whole file, read into one reused 1 MiB buffer (faster than larger reads here)."""
    crc, buf = 0, bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            crc = zlib.crc32(view[:k], crc)
    return crc


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
        self, cache_dir: str | os.PathLike, backbone: Any, dataset: Dataset, transform: Callable | None = None,
        transform_id: str | None = None, key_fields: dict | None = None, batch_size: int = 32,
        image_key: str | None = None, dtype: torch.dtype = torch.float32, include_items: bool = True,
        shard_size: int = 4096, num_workers: int = 0, random: bool = False, wait_timeout_s: float = 3600.0,
        progress: bool | None = None, verify: bool = True,
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
            progress: None: a tqdm bar on a terminal, a line every 10% otherwise; True: always the bar;
                False: only the start and end lines.
            verify: check every shard's CRC-32 when opening a cache this process did not build.
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
        self.verify, self.built_now, self.wait_timeout_s = verify, False, wait_timeout_s
        self._shards: list[np.ndarray] | None = None
        with isolated_rng():  # neither checking nor building the cache moves the RNG training sees
            self.image_key = image_key or ("video" if "video" in dataset[0] else "image")
            self.key = {
                "format": FORMAT_VERSION, "backbone": backbone.cache_key(),
                "transform": describe_transform(transform, transform_id),
                "data": data_fingerprint(dataset, self.image_key), "count": len(dataset), "image_key": self.image_key,
                "fields": json.loads(json.dumps(key_fields or {}, sort_keys=True, default=str)),
            }
            digest = hashlib.sha1(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in getattr(backbone, "name", "backbone"))
            self.path = Path(cache_dir) / f"{safe}-{digest}"
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
        manifest = json.loads((self.path / "manifest.json").read_text())
        if self.verify and not self.built_now:
            self.verify_checksums(manifest)
        return manifest

    def verify_checksums(self, manifest: dict | None = None) -> None:
        """Raise :class:`CacheCorruptError` naming the first shard whose CRC-32 differs from the manifest's."""
        for sh in (manifest or self.manifest)["shards"]:
            f = self.path / sh["file"]
            if (crc := file_crc32(f)) != sh["crc32"]:
                raise CacheCorruptError(
                    f"feature cache shard {f} is corrupt: CRC-32 {crc:08x}, its manifest recorded {sh['crc32']:08x} "
                    "when it was built (the file was altered afterwards: disk error, an interrupted copy, another "
                    f"program writing). The cached features cannot be trusted; delete {self.path} (or the whole "
                    "cache_dir) and rerun to rebuild it."
                )

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
            generator=torch.Generator().manual_seed(0),  # the loader's base seed: never from the global RNG
        )
        yield from loader

    def _check_finite(self, out: torch.Tensor, feats: np.ndarray, first: int) -> None:
        """Raise :class:`NonFiniteFeaturesError` naming the first sample with NaN / inf (or float16 overflow)."""
        if np.isfinite(feats).all():
            return
        rows32 = torch.isfinite(out.detach().float()).flatten(1).all(1)
        if not rows32.all():
            i, what = int((~rows32).nonzero()[0]), "NaN / inf features"
        else:
            i = int(np.argmin(np.isfinite(feats.reshape(len(feats), -1)).all(1)))
            what = f"features beyond the float16 range (max |x| = {out[i].abs().max().item():.4g} > 65504)"
        raise NonFiniteFeaturesError(
            f"feature cache: backbone {getattr(self.backbone, 'name', type(self.backbone).__name__)!r} produced "
            f"{what} for sample {first + i} of {type(self.dataset).__name__} (transform {self.key['transform']}); "
            "nothing was cached. Check that sample and the backbone's weights / input scaling."
        )

    def _progress(self, n: int) -> Callable[[int], None]:
        """Update function: tqdm bar on a terminal (or ``progress=True``), else a line every 10% (``None``)."""
        name, t0, done, next_line = getattr(self.backbone, "name", ""), time.time(), 0, 0.1
        tty = sys.stderr.isatty()
        lines = self.progress is None and not tty
        bar = tqdm(total=n, desc=f"features {name}", disable=not (self.progress or (self.progress is None and tty)))

        def update(k: int) -> None:
            nonlocal done, next_line
            bar.update(k)
            done += k
            if lines and done >= next_line * n:
                dt = time.time() - t0
                print(f"[feature-cache] {name}: {done}/{n} samples ({100 * done // n}%), {dt:.0f}s, "
                      f"~{dt * (n - done) / done:.0f}s left", flush=True)
                next_line = (10 * done // n + 1) / 10
            if done >= n:
                bar.close()

        return update

    def _build(self, tmp: Path) -> None:
        n = len(self.dataset)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0, written, shards, arrays = time.time(), 0, [], []
        sample_shape: list[int] | None = None
        update = self._progress(n)
        for x in self._batches():
            out = self.backbone.features(x)
            feats = out.detach().to("cpu", torch.float16).numpy()
            self._check_finite(out, feats, written)
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
            update(len(feats))
        for a in arrays:
            a.flush()
        del arrays
        for sh in shards:
            sh["bytes"] = (tmp / sh["file"]).stat().st_size
            sh["crc32"] = file_crc32(tmp / sh["file"])
        manifest = {
            "key": self.key, "count": written, "dtype": "float16", "sample_shape": sample_shape or [],
            "shards": shards, "shard_size": self.shard_size, "build_seconds": round(time.time() - t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        trash = self.path.parent / f".trash-{self.path.name}-{os.getpid()}"
        if self.path.exists():  # the stale copy is moved aside only now that the new one is complete
            os.replace(self.path, trash)
        os.replace(tmp, self.path)
        shutil.rmtree(trash, ignore_errors=True)
        print(f"[feature-cache] built {written} samples in {time.time() - t0:.1f}s: {self.path}", flush=True)

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
