"""Backbone analysis before training slot attention (F06): does a layer separate positions?

For every layer: ``spatial_std`` (std over positions per channel; what slot attention groups by),
``channel_std`` (std over channels per position; the feature scale) and their ratio. The seed found
CLIP's best layer at ~1/10 of DINOv2's spatial std, which no loss can fix.

    lit-exp slots-analyze --backbone vit_small_patch14_dinov2 --pretrained --n 32 --out runs/analysis
    python -m lit_experiments.studies.slots.analyze --backbone colour_edge --image-size 64

Writes ``<out>/<backbone>_layers.csv`` and ``<out>/<backbone>_layers.png`` and prints the table,
layers ranked by ratio.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used, so `lit-exp slots-analyze --help` starts fast
    import torch


def feature_stats(feats: torch.Tensor) -> dict[str, float]:
    """(B, N, C) features -> mean spatial std, mean channel std and spatial / channel ratio."""
    if feats.dim() != 3 or feats.shape[1] < 2 or feats.shape[2] < 2:
        raise ValueError(f"feature_stats needs (B, N>=2, C>=2) features, got {tuple(feats.shape)}")
    f = feats.double()
    spatial = f.std(dim=1, unbiased=False).mean().item()
    channel = f.std(dim=2, unbiased=False).mean().item()
    return {"spatial_std": spatial, "channel_std": channel, "ratio": spatial / max(channel, 1e-12)}


def _depth(backbone: Any) -> int | None:
    model = getattr(backbone, "model", None)
    for path in ("blocks", "transformer.resblocks", "trunk.blocks", "visual.transformer.resblocks"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "__len__"):
            return len(obj)
    return None


def layer_features(backbone: Any, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a concat-reduced multi-layer backbone's output into one (B,N,C_l) tensor per layer."""
    feats = backbone.features(images)
    dims = list(getattr(backbone, "layer_dims", [feats.shape[-1]]))
    layers = list(getattr(backbone, "layers", [0]))
    if len(dims) != len(layers) or sum(dims) != feats.shape[-1]:
        return {"features": feats}
    return {f"layer{layer}": part for layer, part in zip(layers, feats.split(dims, dim=-1))}


def analyze_backbone(name: str, images: torch.Tensor, layers: list[int] | None = None, **build: Any) -> list[dict]:
    """Per-layer statistics of backbone ``name`` on (B,3,H,W) images in [0,1]."""
    from lit_experiments.backbones import build_backbone

    if layers is None and name != "colour_edge":
        depth = _depth(build_backbone(name, **build))
        layers = list(range(depth)) if depth else None
    kwargs = dict(build)
    if name != "colour_edge":
        kwargs["layers"] = layers
    backbone = build_backbone(name, **kwargs)
    if getattr(backbone, "layer_reduce", "concat") != "concat":
        raise ValueError("analysis needs the concat layer reduction")
    rows = []
    for layer, feats in layer_features(backbone, images).items():
        rows.append({"backbone": name, "layer": layer, **feature_stats(feats.float())})
    return rows


def load_images(dataset: str, n: int, image_size: int, movi_root: str | None, seed: int = 3) -> torch.Tensor:
    import torch

    if dataset == "shapes":
        from lit_experiments.data.shapes import ShapesWorld

        ds = ShapesWorld(n, image_size=image_size, min_objects=3, max_objects=5, seed=seed)
        imgs = [ds[i]["image"] for i in range(n)]
    elif dataset == "movi":
        from lit_experiments.data.movi import MoviClips

        if not movi_root:
            raise SystemExit("--dataset movi needs --movi-root")
        ds = MoviClips(movi_root)
        imgs = [ds[i]["video"][0] for i in range(min(n, len(ds)))]
    else:
        raise SystemExit(f"unknown --dataset {dataset!r}; expected shapes or movi")
    return torch.stack(imgs).float() / 255.0


def write_outputs(rows: list[dict], out: Path, tag: str) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)
    csv_path, png_path = out / f"{safe}_layers.csv", out / f"{safe}_layers.png"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    labels = [str(r["layer"]) for r in rows]
    axes[0].plot(labels, [r["spatial_std"] for r in rows], "o-", label="spatial std")
    axes[0].plot(labels, [r["channel_std"] for r in rows], "s-", label="channel std")
    axes[0].legend()
    axes[0].set_title(f"{tag}: feature spread")
    axes[1].bar(labels, [r["ratio"] for r in rows])
    axes[1].set_title("spatial / channel ratio")
    for ax in axes:
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


def format_table(rows: list[dict]) -> str:
    lines = [f"{'backbone':<34} {'layer':<10} {'spatial_std':>11} {'channel_std':>11} {'ratio':>7}"]
    for r in sorted(rows, key=lambda r: -r["ratio"]):
        lines.append(f"{r['backbone']:<34} {r['layer']:<10} {r['spatial_std']:>11.4f} {r['channel_std']:>11.4f} "
                     f"{r['ratio']:>7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lit-exp slots-analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", action="append", required=True,
                   help="backbone name (repeatable): timm / open_clip name or colour_edge")
    p.add_argument("--layers", type=str, default=None, help="comma-separated block indices (default: all)")
    p.add_argument("--pretrained", default="false", help="false | true | PATH to weights")
    p.add_argument("--img-size", type=int, default=None, help="backbone input size (frames are resized)")
    p.add_argument("--model-kwargs", type=json.loads, default=None, help='JSON, e.g. \'{"depth": 2}\'')
    p.add_argument("--dataset", default="shapes", help="shapes | movi")
    p.add_argument("--movi-root", default=None)
    p.add_argument("--image-size", type=int, default=64, help="ShapesWorld image size")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--out", default="runs/slots/analysis")
    a = p.parse_args(argv)
    pretrained: bool | str = {"false": False, "true": True}.get(a.pretrained.lower(), a.pretrained)
    layers = [int(x) for x in a.layers.split(",")] if a.layers else None
    images = load_images(a.dataset, a.n, a.image_size, a.movi_root)
    if a.img_size:
        from .datamodule import Resize

        images = Resize(a.img_size)(images)
    all_rows: list[dict] = []
    for name in a.backbone:
        build: dict[str, Any] = {"model_kwargs": a.model_kwargs}
        if name != "colour_edge":
            build.update(pretrained=pretrained, img_size=a.img_size)
        rows = analyze_backbone(name, images, layers, **build)
        csv_path, png_path = write_outputs(rows, Path(a.out), name)
        print(f"{name}: {csv_path} {png_path}")
        all_rows += rows
    print(format_table(all_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
