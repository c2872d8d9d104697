"""Clips of the distill study: ShapesWorld videos as (clip, prompt) units for the ``video`` stage and the clip test.

A clip split is a ShapesWorld with ``num_frames = T`` and motion (seed ``seed + 10 + split index``). Its frames,
flattened (frame ``f = clip * T + t``), form a :class:`~.units.UnitSource`, so the teacher's outputs of
every (frame, vocabulary prompt) go through the same cache as images. A clip unit is (clip, prompt): training
draws one prompt per clip and epoch (:class:`~.prompts.PromptSampler` over the concepts visible in any frame);
evaluation units are every visible concept of a clip plus one absent concept (seeded), each over all T frames.

Items (``video`` ``(T, 3, S, S)``): ``image`` (T, 3, S, S), ``prompt``, ``kind``, ``targets`` (T dicts),
``teacher`` (contract stacked over frames), both models' ids, ``index`` (clip), ``unit``. :func:`collate_clips`
stacks them to ``image`` (B, T, 3, S, S) and ``teacher`` (B, T, ...). The module flattens frames to units.

Clip metrics are kept apart from image metrics (F27: the seed's video gains were invisible to an image-only
evaluation): ``test/video/*`` come from clip frames only, with a temporal stability number per model.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from lit_experiments.data.shapes import ShapesWorld

from .prompts import Prompt, fixed_units

if TYPE_CHECKING:  # pragma: no cover
    from ..datamodule import DistillDataModule
    from .units import UnitSource

class Frames(Dataset):
    """The frames of a ShapesWorld video dataset as image items (``image``, ``instances`` and the per-object
    arrays of the clip), frame ``f`` = clip ``f // T``, time ``f % T``."""

    def __init__(self, world: ShapesWorld) -> None:
        if world.num_frames is None:
            raise ValueError("Frames: the world has no num_frames")
        self.world, self.t = world, int(world.num_frames)
        self._clip: tuple[int, dict] | None = None

    def __len__(self) -> int:
        return len(self.world) * self.t

    def fingerprint(self) -> str:
        return f"frames-{self.world.fingerprint()}"

    def __getitem__(self, f: int) -> dict:
        c, t = divmod(int(f), self.t)
        if self._clip is None or self._clip[0] != c:
            self._clip = (c, self.world[c])
        clip = self._clip[1]
        item = {k: v for k, v in clip.items() if k not in ("video", "instances", "phase")}
        return {**item, "image": clip["video"][t], "instances": clip["instances"][t], "index": torch.tensor(int(f))}


class ClipSplit(Dataset):
    """The (clip, prompt) units of one split's clips; ``train`` items are indexed by ``(clip, epoch)``."""

    def __init__(self, dm: DistillDataModule, split: str) -> None:
        self.dm, self.split, self.name = dm, split, f"clips-{split}"
        self.source: UnitSource = dm.unit_source(self.name)
        self.t = int(dm.source.clips.num_frames)
        self.n = len(self.source) // self.t
        self.present = [sorted({c for t in range(self.t) for c in self.source.present[k * self.t + t]})
                        for k in range(self.n)]
        self.units: list[tuple[int, Prompt]] | None = None
        if split != "train":
            self.units = fixed_units(self.present, dm.categories, None,
                                     [dm.source.seed, 10 + ("train", "val", "test").index(split), 0x5EED])

    def __len__(self) -> int:
        return self.n if self.units is None else len(self.units)


    def __getitem__(self, key: int | tuple[int, ...]) -> dict:
        if self.units is None:
            k, epoch, r = (*key, 0)[:3] if isinstance(key, tuple) else (int(key), 0, 0)
            prompt = self.dm.prompt_sampler.sample_many(self.present[k], k, epoch, r + 1)[r]
        else:
            k, prompt = self.units[int(key)]
        v = self.dm.vocab.index(prompt.text)
        frames = range(k * self.t, (k + 1) * self.t)
        item = {"image": torch.stack([self.source.image(f) for f in frames]), "prompt": prompt.text,
                "kind": prompt.kind, "targets": [self.source.targets(f, prompt) for f in frames],
                "index": torch.tensor(k), "unit": torch.tensor(v), **{n: t[v] for n, t in self.dm.vocab_ids.items()}}
        teacher = self.dm.teacher_cache(self.name)
        if teacher is not None:
            outs = [teacher(f * len(self.dm.vocab) + v) for f in frames]
            item["teacher"] = {n: torch.stack([o[n] for o in outs]) for n in outs[0]}
        return item


def collate_clips(items: list[dict]) -> dict:
    """Like :func:`~.units.collate_units`: ``targets`` becomes a list (clips) of lists (frames)."""
    from .units import collate_units

    return collate_units(items)


def flatten_clips(batch: dict) -> dict:
    """A clip batch (``image`` (B, T, 3, S, S)) as a batch of B * T frame units (clip-major): ids repeated per
    frame, ``targets`` flattened, ``teacher`` (B, T, ...) -> (B * T, ...); ``frames`` = T."""
    b, t = batch["image"].shape[:2]
    out = dict(batch)
    out["image"] = batch["image"].flatten(0, 1)
    for key in ("student_input_ids", "teacher_input_ids", "teacher_attention_mask", "unit"):
        if key in batch:
            out[key] = batch[key].repeat_interleave(t, 0)
    out["prompt"] = [p for p in batch["prompt"] for _ in range(t)]
    out["kind"] = [k for k in batch["kind"] for _ in range(t)]
    out["targets"] = [frame for clip in batch["targets"] for frame in clip]
    if "teacher" in batch:
        out["teacher"] = {k: v.flatten(0, 1) for k, v in batch["teacher"].items()}
    out["frames"] = t
    return out


def temporal_change(out: dict[str, torch.Tensor], frames: int) -> torch.Tensor:
    """Mean absolute change between consecutive frames of a clip (units clip-major, ``frames`` per clip) of the
    presence probability and of every query's score ``sigmoid(logit) * sigmoid(presence)``: 0 = the answer to
    the prompt holds still over the clip (the concept does not come and go while objects move)."""
    presence = out["presence_logits"].sigmoid().reshape(-1, frames)
    scores = (out["pred_logits"].sigmoid() * out["presence_logits"].sigmoid()[:, None]).reshape(-1, frames,
                                                                                                 out["pred_logits"].shape[-1])
    return ((presence[:, 1:] - presence[:, :-1]).abs().mean() + (scores[:, 1:] - scores[:, :-1]).abs().mean()) / 2
