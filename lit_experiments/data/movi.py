"""MOVi clips (Kubric TFDS exports) stored as one ``.npz`` or one folder per clip, plus the TFDS converter.

Items carry the ShapesWorld keys the format holds: ``video`` uint8 (T,3,H,W), ``instances`` int64
(T,H,W) (0 = background, id ``k+1`` = ``instances[k]`` metadata, as in Kubric), padded per-object
``category`` / ``color`` / ``material`` (0 rubber, 1 metal) / ``size`` (-1 / 0 where the clip lacks the
field: MOVi-A/B have ``material``, MOVi-C/E ``category`` only), ``num_objects``, ``labels``
(multi-hot over ``self.categories``), ``caption`` (stored one, else built from the attributes), ``phase`` when
the clip stores one, and ``index`` (the clip's position in the reader, set by ``FileDataset``).

A clip's id is ``<split folder>/<file or folder name>`` (:attr:`MoviClips.clip_ids`); :meth:`MoviClips.subset`
keeps the clips of given ids, so a held-out validation part of a folder (``core.splits.ensure_holdout``) and the
rest are two readers whose ids can be checked disjoint (F47).
"""
from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import FileDataset
from .errors import BadSampleError, DataLayoutError, LabelError, require, resize_pair
from .shapes import COLORS, MATERIALS, make_caption

LAYOUT = """\
<root>/  (or <root>/<split>/)
  vocab.json              optional: {"categories": [...], "colors": [...]} (label order)
  <clip>.npz              video (T,H,W,3) uint8 | segmentations (T,H,W[,1]) int, 0 = background |
                          instances.<field>: one entry per object, field in material (metal/rubber),
                          category or shape_label, color or color_label, size | optional caption, phase (T,)
  <clip>/                 the same as a folder: video.npy, segmentations.npy,
                          metadata.json {"instances": {"material": [...], ...}, "caption": ..., "phase": [...]}
"""
ALIASES = {
    "category": ("category", "shape_label", "category_label"),
    "color": ("color", "color_label"),
    "material": ("material", "material_label"),
    "size": ("size",),
}


def _meta_npz(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        missing = {"video", "segmentations"} - names
        if missing:
            raise BadSampleError(f"{path}: missing arrays {sorted(missing)} (has {sorted(names)})")
        inst = {k.split(".", 1)[1]: z[k].tolist() for k in names if k.startswith("instances.")}
        meta = {"instances": inst}
        if "caption" in names:
            meta["caption"] = str(z["caption"])
        if "phase" in names:
            meta["phase"] = z["phase"].tolist()
    return meta


def _meta_dir(path: Path) -> dict[str, Any]:
    for f in ("video.npy", "segmentations.npy"):
        if not (path / f).is_file():
            raise BadSampleError(f"{path}: missing {f}")
    m = path / "metadata.json"
    return json.loads(m.read_text()) if m.is_file() else {"instances": {}}


class MoviClips(FileDataset):
    """Reader of MOVi clips (see module docstring and ``LAYOUT``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        max_objects: int = 24,
        categories: list[str] | None = None,
        colors: list[str] | None = None,
        image_size: int | None = None,
        on_bad_sample: str = "error",
    ) -> None:
        folder = require(Path(root) / split if split else root, "MoviClips root", LAYOUT, is_dir=True)
        self._init_policy(on_bad_sample)
        self.root, self.max_objects, self.image_size = folder, int(max_objects), image_size
        clips = sorted(p for p in folder.iterdir() if p.suffix == ".npz" or (p / "video.npy").is_file())
        if not clips:
            raise DataLayoutError(f"MoviClips: no clips (*.npz or folders with video.npy) in {folder}\nexpected layout:\n{LAYOUT}")
        vocab_file = folder / "vocab.json"
        vocab = json.loads(vocab_file.read_text()) if vocab_file.is_file() else {}
        self.samples = [{"path": p} for p in clips]
        self._scan(check_files=True)  # reads each clip's metadata (small) and drops unreadable clips
        self.categories = list(categories or vocab.get("categories") or self._discover("category"))
        self.colors = list(colors or vocab.get("colors") or COLORS)
        for s in self.samples:
            self._validate(s)

    @property
    def clip_ids(self) -> list[str]:
        """One id per clip, in reader order: ``<folder name>/<clip file or folder name>``."""
        return [f"{self.root.name}/{s['path'].name}" for s in self.samples]

    def subset(self, keep: set[str] | list[str], exclude: bool = False) -> MoviClips:
        """A reader over the clips whose id is in ``keep`` (``exclude=True``: every other clip); same settings.

        An id of ``keep`` that names no clip of this reader is an error (a held-out list written for other data).
        """
        keep = set(keep)
        ids = self.clip_ids
        unknown = keep - set(ids)
        if unknown:
            raise DataLayoutError(f"MoviClips {self.root}: {len(unknown)} clip ids are not in this folder "
                                  f"(e.g. {sorted(unknown)[:3]})")
        out = copy.copy(self)
        out.samples = [s for s, i in zip(self.samples, ids) if (i in keep) != exclude]
        if not out.samples:
            raise DataLayoutError(f"MoviClips {self.root}: no clips left after "
                                  f"{'excluding' if exclude else 'keeping'} {len(keep)} ids")
        return out

    def settings(self) -> dict:
        return {"max_objects": self.max_objects, "categories": self.categories, "colors": self.colors,
                "image_size": self.image_size}

    def _check(self, sample: dict) -> None:
        p = sample["path"]
        try:
            sample["meta"] = _meta_npz(p) if p.suffix == ".npz" else _meta_dir(p)
        except BadSampleError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError, KeyError) as e:
            raise BadSampleError(f"unreadable clip {p}: {type(e).__name__}: {e}") from e

    def _field(self, meta: dict, name: str) -> tuple[str, list] | None:
        for alias in ALIASES[name]:
            if alias in meta["instances"]:
                return alias, list(meta["instances"][alias])
        return None

    def _discover(self, name: str) -> list[str]:
        found: set = set()
        for s in self.samples:
            f = self._field(s["meta"], name)
            if f:
                found.update(str(v) for v in f[1])
        return sorted(found)

    def _validate(self, sample: dict) -> None:
        """Map attribute names to indices; unknown names raise LabelError naming the clip and entry."""
        meta, path = sample["meta"], sample["path"]
        n = 0
        arrays = {}
        for name, vocab in (("category", self.categories), ("color", self.colors), ("material", list(MATERIALS))):
            f = self._field(meta, name)
            if f is None:
                continue
            alias, values = f
            idx = []
            for k, v in enumerate(values):
                if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and name != "material":
                    ok = 0 <= int(v) < len(vocab)
                    idx.append(int(v))
                else:
                    ok = str(v) in vocab
                    idx.append(vocab.index(str(v)) if ok else -1)
                if not ok:
                    raise LabelError(f"{path}: instances.{alias}[{k}] = {v!r} is not in the {name} list {vocab}")
            arrays[name], n = idx, max(n, len(values))
        size = self._field(meta, "size")
        if size:
            arrays["size"], n = [float(v) for v in size[1]], max(n, len(size[1]))
        if n > self.max_objects:
            raise ValueError(f"{path}: {n} objects > max_objects={self.max_objects}; raise max_objects")
        sample["arrays"], sample["n"] = arrays, n

    def _load(self, index: int) -> dict:
        s = self.samples[index]
        p = s["path"]
        try:
            if p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    video, seg = z["video"], z["segmentations"]
            else:
                video, seg = np.load(p / "video.npy"), np.load(p / "segmentations.npy")
        except (OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
            raise BadSampleError(f"unreadable clip {p}: {type(e).__name__}: {e}") from e
        if seg.ndim == 4:
            seg = seg[..., 0]
        vid = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).contiguous()
        inst = torch.from_numpy(seg.astype(np.int64))
        if self.image_size is not None:
            frames = [resize_pair(v, m[None], self.image_size) for v, m in zip(vid, inst)]
            vid, inst = torch.stack([f[0] for f in frames]), torch.stack([f[1][0] for f in frames])
        n = s["n"] or int(inst.max())
        k = self.max_objects
        out: dict[str, Any] = {"video": vid, "instances": inst}
        for name in ("category", "color", "material"):
            arr = torch.full((k,), -1, dtype=torch.int64)
            if name in s["arrays"]:
                arr[: len(s["arrays"][name])] = torch.tensor(s["arrays"][name], dtype=torch.int64)
            out[name] = arr
        size = torch.zeros(k, dtype=torch.float32)
        if "size" in s["arrays"]:
            size[: len(s["arrays"]["size"])] = torch.tensor(s["arrays"]["size"], dtype=torch.float32)
        out["size"] = size
        out["num_objects"] = torch.tensor(n, dtype=torch.int64)
        labels = torch.zeros(len(self.categories), dtype=torch.float32)
        cats = out["category"][:n]
        labels[cats[cats >= 0]] = 1.0
        out["labels"] = labels
        out["caption"] = s["meta"].get("caption") or make_caption([
            (self.colors[c] if c >= 0 else None, MATERIALS[m] if m >= 0 else None,
             self.categories[g] if g >= 0 else "object")
            for c, m, g in zip(out["color"][:n].tolist(), out["material"][:n].tolist(), cats.tolist())
        ])
        if "phase" in s["meta"]:
            out["phase"] = torch.tensor(s["meta"]["phase"], dtype=torch.int64)
        return out


def write_movi_clip(path: str | os.PathLike, video: np.ndarray, segmentations: np.ndarray,
                    instances: dict[str, Any], caption: str | None = None, phase: np.ndarray | None = None) -> None:
    """Write one clip as ``.npz``: video (T,H,W,3) uint8, segmentations (T,H,W,1) uint8/int, ``instances.<field>``."""
    arrays: dict[str, np.ndarray] = {"video": np.asarray(video, np.uint8), "segmentations": np.asarray(segmentations)}
    for k, v in instances.items():
        arrays[f"instances.{k}"] = np.asarray(v)
    if caption is not None:
        arrays["caption"] = np.asarray(caption)
    if phase is not None:
        arrays["phase"] = np.asarray(phase, np.int64)
    np.savez_compressed(path, **arrays)


def convert_tfds_movi(out_dir: str | os.PathLike, name: str = "movi_a/128x128", split: str = "train",
                      data_dir: str | None = None, limit: int | None = None) -> int:
    """Convert Kubric TFDS MOVi records to ``<out_dir>/<split>/<i>.npz`` clips readable by :class:`MoviClips`.

    Needs ``tensorflow-datasets`` (optional extra ``pip install lit_experiments[movi]``), imported only
    here. Class-label fields (``material_label``, ``shape_label``, ``color_label``, ``category``) are written
    as names using the TFDS feature metadata; ``vocab.json`` records the category order. Returns the number
    of clips written. Example: ``convert_tfds_movi("data/movi_c", "movi_c/128x128", "validation",
    data_dir="gs://kubric-public/tfds")``.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError("convert_tfds_movi needs tensorflow-datasets: pip install 'lit_experiments[movi]'") from e
    builder = tfds.builder(name, data_dir=data_dir)  # pragma: no cover - needs TFDS and the data
    inst_feat = builder.info.features["instances"].feature
    label_names = {k: list(inst_feat[k].names) for k in inst_feat.keys() if hasattr(inst_feat[k], "names")}
    out = Path(out_dir) / split
    out.mkdir(parents=True, exist_ok=True)
    cat_key = next((k for k in ("shape_label", "category") if k in label_names), None)
    vocab = {"categories": label_names.get(cat_key, [])}
    if "color_label" in label_names:
        vocab["colors"] = label_names["color_label"]
    (out / "vocab.json").write_text(json.dumps(vocab))
    count = 0
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
        inst = {}
        for k, v in ex["instances"].items():
            if k in label_names:
                inst[k] = np.asarray([label_names[k][int(i)] for i in v])
            elif np.asarray(v).ndim == 1:
                inst[k] = np.asarray(v)
        write_movi_clip(out / f"{count:06d}.npz", ex["video"], ex["segmentations"], inst)
        count += 1
        if limit is not None and count >= limit:
            break
    return count
