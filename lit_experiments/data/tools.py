"""``lit-exp data``: plain data tools.

``lit-exp data shapes --out DIR --format {movi,coco,multilabel,frames} --n N --seed S [--image-size 64]``
writes a ShapesWorld to disk in a real format so the readers run on files:

* ``movi``: ``DIR/<i>.npz`` clips (``--num-frames`` frames) + ``vocab.json`` -> :class:`MoviClips`
* ``coco``: ``DIR/images`` + ``annotations/instances.json`` (RLE masks, attributes) + ``captions.json``
  -> :class:`CocoInstances` / :class:`CocoMultiLabel`
* ``multilabel``: ``DIR/images`` + ``labels.csv`` + ``labels.jsonl`` + ``classes.txt`` -> :class:`MultiLabelFiles`
* ``frames``: ``DIR/frames`` (N clips x T frames, ``<clip>_<t>.png``) + ``labels.csv`` (label = phase) +
  ``queries/`` (``--queries`` images of another seed) -> :class:`FrameFolder`

``DIR/world.json`` records the generator's arguments (``ShapesWorld(**json)`` rebuilds it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .shapes import MATERIALS, ShapesWorld

FORMATS = ("movi", "coco", "multilabel", "frames")


def _world(args: argparse.Namespace, video: bool) -> tuple[ShapesWorld, dict]:
    kwargs = {
        "n": args.n, "image_size": args.image_size, "num_frames": args.num_frames if video else None,
        "min_objects": args.min_objects, "max_objects": args.max_objects, "seed": args.seed,
        "background": args.background, "motion_blur": bool(getattr(args, "motion_blur", False)),
    }
    return ShapesWorld(**kwargs), kwargs


def _objects(world: ShapesWorld, item: dict, instances: np.ndarray) -> list[dict]:
    n = int(item["num_objects"])
    return [
        {
            "mask": instances == k + 1,
            "category": world.categories[int(item["category"][k])],
            "attributes": {"color": world.COLOR_NAMES[int(item["color"][k])],
                           "material": MATERIALS[int(item["material"][k])], "size": float(item["size"][k])},
        }
        for k in range(n)
    ]


def write_shapes(out: str | Path, fmt: str, n: int, seed: int = 0, image_size: int = 64, num_frames: int = 8,
                 min_objects: int = 1, max_objects: int = 3, background: str = "plain", queries: int = 4,
                 motion_blur: bool = False) -> dict:
    """Write a ShapesWorld in format ``fmt`` to ``out``; returns the generator's arguments."""
    args = argparse.Namespace(n=n, seed=seed, image_size=image_size, num_frames=num_frames, min_objects=min_objects,
                              max_objects=max_objects, background=background, queries=queries,
                              motion_blur=motion_blur)
    return _write(Path(out), fmt, args)


def _write(out: Path, fmt: str, args: argparse.Namespace) -> dict:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    out.mkdir(parents=True, exist_ok=True)
    world, kwargs = _world(args, video=fmt in ("movi", "frames"))
    items = [world[i] for i in range(len(world))]
    if fmt == "movi":
        from .movi import write_movi_clip

        (out / "vocab.json").write_text(json.dumps({"categories": world.categories, "colors": list(world.COLOR_NAMES)}))
        for i, it in enumerate(items):
            n = int(it["num_objects"])
            inst = {
                "category": np.asarray([world.categories[c] for c in it["category"][:n].tolist()]),
                "color": np.asarray([world.COLOR_NAMES[c] for c in it["color"][:n].tolist()]),
                "material": np.asarray([MATERIALS[m] for m in it["material"][:n].tolist()]),
                "size": it["size"][:n].numpy(),
            }
            write_movi_clip(out / f"{i:06d}.npz", it["video"].permute(0, 2, 3, 1).numpy(),
                            it["instances"].numpy().astype(np.uint8)[..., None], inst, it["caption"], it["phase"].numpy())
    elif fmt == "coco":
        from .coco import write_coco

        imgs = [it["image"].permute(1, 2, 0).numpy() for it in items]
        objs = [_objects(world, it, it["instances"].numpy()) for it in items]
        write_coco(out, imgs, objs, world.categories, [it["caption"] for it in items])
    elif fmt == "multilabel":
        from .multilabel import write_multilabel

        imgs = [it["image"].permute(1, 2, 0).numpy() for it in items]
        labs = [[world.categories[c] for c in np.flatnonzero(it["labels"].numpy())] for it in items]
        write_multilabel(out, imgs, labs, [it["caption"] for it in items], world.categories)
    else:
        from .frames import write_frames

        frames, names, labels = [], [], []
        for i, it in enumerate(items):
            for t in range(it["video"].shape[0]):
                frames.append(it["video"][t].permute(1, 2, 0).numpy())
                names.append(f"{i:06d}_{t:03d}")
                labels.append(int(it["phase"][t]))
        qargs = argparse.Namespace(**{**vars(args), "n": args.queries, "seed": args.seed + 1})
        qworld, qkwargs = _world(qargs, video=False)
        qitems = [qworld[i] for i in range(len(qworld))]
        write_frames(out, frames, names, labels, [q["image"].permute(1, 2, 0).numpy() for q in qitems],
                     [int(q["phase"]) for q in qitems])
        kwargs = {**kwargs, "queries": qkwargs}
    (out / "world.json").write_text(json.dumps({"format": fmt, "world": kwargs}, indent=1))
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    """Parser of ``lit-exp data``."""
    p = argparse.ArgumentParser(prog="lit-exp data", description="Data tools of lit_experiments.")
    sub = p.add_subparsers(dest="tool", required=True)
    s = sub.add_parser("shapes", help="write a ShapesWorld to disk in a real data format")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--format", required=True, choices=FORMATS)
    s.add_argument("--n", type=int, default=32, help="images (coco, multilabel) or clips (movi, frames)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--num-frames", type=int, default=8, help="frames per clip (movi, frames)")
    s.add_argument("--min-objects", type=int, default=1)
    s.add_argument("--max-objects", type=int, default=3)
    s.add_argument("--background", choices=("plain", "textured"), default="plain")
    s.add_argument("--queries", type=int, default=4, help="external query images (frames format)")
    s.add_argument("--motion-blur", action="store_true", help="smear object 1 while it moves (phase visible per frame)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lit-exp data``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.tool == "shapes":
        out = Path(args.out)
        _write(out, args.format, args)
        print(f"wrote ShapesWorld ({args.format}, n={args.n}, seed={args.seed}) to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
