"""Visual checks of the distill study: the seed's "15 prompts x 25 images" look at masks per prompt.

* :func:`overlay`: a mask drawn on an image as a tint of its colour with a 1-pixel outline in it (teacher white,
  student black: no ShapesWorld object colour; the legends name the colours from :data:`COLOR_NAMES`).
* :func:`mask_grid`: one PNG, rows = prompts, columns = images, each cell the image with its mask overlaid
  (:func:`overlay` + ``make_grid``; prompts as row labels, the colour named in the title, matplotlib Agg).
* :func:`html_gallery`: a self-contained folder (``index.html`` + ``thumbs/*.png``, relative links only) with one
  row per prompt and one column per image; each cell shows the teacher's mask (left) and the student's (right)
  and their IoU (two empty masks: IoU 1), plus the IoU of each against ground truth when given. Prompt and image
  ids are HTML-escaped (prompts are free text).
* :func:`visual_check`: runs a teacher and a student ``score_fn`` (see :mod:`.evaluation`) on every (prompt,
  image) unit and writes ``teacher_grid.png``, ``student_grid.png`` and the HTML gallery.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import write_png
from torchvision.utils import make_grid

from ..evaluation import ScoreFn, postprocess, run_units

#: mask colours: white and black are no ShapesWorld object colour (red, green, blue, yellow, purple, cyan, orange,
#: pink) and stay visible on all of them and on the grey background (a red overlay vanished on red objects, which
#: the demo's colour prompts segment). A mask is drawn as a tint of its colour with a 1-pixel outline in it.
TEACHER_COLOR, STUDENT_COLOR = "#ffffff", "#000000"
#: the word the legends use for each colour (legends are written from these, so they name what is drawn)
COLOR_NAMES = {"#ffffff": "white", "#000000": "black"}


def legend(color: str) -> str:
    """How a legend names a mask drawn in ``color``: ``"white outline and tint"``."""
    return f"{COLOR_NAMES.get(color.lower(), color)} outline and tint"


def _rgb(color: str) -> Tensor:
    c = color.lstrip("#")
    return torch.tensor([int(c[i:i + 2], 16) for i in (0, 2, 4)], dtype=torch.uint8)


def outline(mask: Tensor) -> Tensor:
    """The pixels of a bool (H, W) mask with a 4-neighbour outside the mask (the image border counts as inside)."""
    outside = (~mask).float()[None, None]
    near = F.max_pool2d(F.pad(outside, (1, 1, 1, 1), value=0.0), 3, 1)[0, 0] > 0
    return mask & near


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        got = (images.dtype, tuple(images.shape)) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {got}")
    return images


def _binary(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Bool mask(s) (..., H, W) at ``size``: floats are thresholded at 0.5, then nearest resizing."""
    m = mask > 0.5 if mask.is_floating_point() else mask.bool()
    if tuple(m.shape[-2:]) != tuple(size):
        lead = m.shape[:-2]
        m = F.interpolate(m.reshape(-1, 1, *m.shape[-2:]).float(), size=size, mode="nearest").bool()
        m = m.reshape(*lead, *size)
    return m


def overlay(image: Tensor, mask: Tensor, color: str = STUDENT_COLOR, alpha: float = 0.35) -> Tensor:
    """uint8 (3, H, W) image with ``mask`` (H', W'; resized to the image by nearest) drawn over it: a tint of
    ``color`` at ``alpha`` and a 1-pixel outline in ``color``."""
    m = _binary(mask, tuple(image.shape[-2:]))
    rgb = _rgb(color)[:, None]
    out = image.clone()  # only masked pixels change (a blend of the whole image rounds the others off by one)
    out[:, m] = (image[:, m].float() * (1 - alpha) + rgb.float() * alpha).round().to(torch.uint8)
    out[:, outline(m)] = rgb
    return out


def mask_grid(images: Tensor, masks: Tensor | Sequence[Tensor], prompts: Sequence[str], path: str | Path,
              color: str = STUDENT_COLOR, alpha: float = 0.5, title: str | None = None) -> Path:
    """PNG grid: rows = ``prompts`` (P), columns = ``images`` (uint8 (N, 3, H, W)); ``masks`` (P, N, h, w) or P
    tensors (N, h, w), bool or probabilities. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = _check_images(images)
    n, size = images.shape[0], images.shape[-1]
    masks = list(masks)
    if len(masks) != len(prompts) or not prompts:
        raise ValueError(f"mask_grid: {len(masks)} mask sets for {len(prompts)} prompts (one (N, h, w) per prompt)")
    for p, m in enumerate(masks):
        if m.dim() != 3 or m.shape[0] != n:
            raise ValueError(f"mask_grid: masks for prompt {p} ({prompts[p]!r}) are {tuple(m.shape)}; "
                             f"expected ({n}, h, w)")
    cells = [overlay(images[i], masks[p][i], color, alpha) for p in range(len(prompts)) for i in range(n)]
    pad = 2
    grid = make_grid(cells, nrow=n, padding=pad, pad_value=255)
    step_y, step_x = images.shape[-2] + pad, size + pad
    h, w = grid.shape[-2:]
    top = 0.45 if title and len(title) * 6.5 > w + 180 else 0.3  # room for a title of 1 or 2 lines
    fig = plt.figure(figsize=(w / 100 + 1.8, h / 100 + 0.3 + top), dpi=100)
    ax = fig.add_axes((1.6 / (w / 100 + 1.8), 0.3 / (h / 100 + 0.3 + top), (w / 100) / (w / 100 + 1.8),
                       (h / 100) / (h / 100 + 0.3 + top)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_yticks([pad + step_y * r + images.shape[-2] / 2 for r in range(len(prompts))])
    ax.set_yticklabels([p.replace("$", r"\$") for p in prompts], fontsize=8)
    ax.set_xticks([pad + step_x * c + size / 2 for c in range(n)])
    ax.set_xticklabels([str(c) for c in range(n)], fontsize=6)
    ax.tick_params(length=0)
    if title:  # centred on the figure and wrapped to its width, so a narrow grid does not cut it off
        import textwrap

        fig.suptitle(textwrap.fill(title.replace("$", r"\$"), max(16, int((w / 100 + 1.8) * 100 / 6.5))),
                     fontsize=8, color="black", y=0.995, va="top")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def mask_iou(a: Tensor, b: Tensor) -> float:
    """IoU of two bool masks of the same size (two empty masks: 1.0)."""
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


@dataclass
class GalleryEntry:
    """One cell of :func:`html_gallery`: the ``prompt`` (row), ``image_id`` (column), the uint8 (3, H, W) ``image``
    and the teacher's / student's union masks (h, w); optional ground-truth union mask."""

    prompt: str
    image_id: str | int
    image: Tensor
    teacher_mask: Tensor
    student_mask: Tensor
    gt_mask: Tensor | None = None


def _thumb(image: Tensor, size: int) -> Tensor:
    return F.interpolate(image[None], size=(size, size), mode="nearest")[0]  # uint8 stays uint8


def _swatch(color: str) -> str:
    return (f'<span class="swatch" data-color="{color}" style="display:inline-block;width:0.9em;height:0.9em;'
            f'background:{color};border:1px solid #555;vertical-align:middle"></span>')


def html_gallery(out_dir: str | Path, entries: Sequence[GalleryEntry], thumb_size: int = 96,
                 title: str = "distill: teacher vs student masks per prompt") -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/thumbs/`` (see the module docstring); returns the HTML path."""
    if not entries:
        raise ValueError("html_gallery: no entries")
    out_dir = Path(out_dir)
    (out_dir / "thumbs").mkdir(parents=True, exist_ok=True)
    rows: list[str] = list(dict.fromkeys(e.prompt for e in entries))
    cols: list[str] = list(dict.fromkeys(str(e.image_id) for e in entries))
    cells: dict[tuple[int, int], str] = {}
    ious: list[float] = []
    for e in entries:
        img = _check_images(e.image[None])[0]
        size = tuple(img.shape[-2:])
        t, s = _binary(e.teacher_mask, size), _binary(e.student_mask, size)
        r, c = rows.index(e.prompt), cols.index(str(e.image_id))
        names = []
        for who, m, color in (("teacher", t, TEACHER_COLOR), ("student", s, STUDENT_COLOR)):
            name = f"thumbs/{r:03d}_{c:03d}_{who}.png"
            write_png(_thumb(overlay(img, m, color), thumb_size), str(out_dir / name))
            names.append(name)
        iou = mask_iou(t, s)
        ious.append(iou)
        text = f"IoU t/s {iou:.2f}"
        if e.gt_mask is not None:
            g = _binary(e.gt_mask, size)
            text += f"<br>GT: t {mask_iou(t, g):.2f} s {mask_iou(s, g):.2f}"
        cells[(r, c)] = (f'<td><img src="{names[0]}" alt="teacher" width="{thumb_size}">'
                         f'<img src="{names[1]}" alt="student" width="{thumb_size}"><br>{text}</td>')
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "\n".join(f"<tr><th>{html.escape(p)}</th>" + "".join(cells.get((r, c), "<td></td>")
                                                                for c in range(len(cols))) + "</tr>"
                     for r, p in enumerate(rows))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} td,th{{border:1px solid #ccc;padding:2px;font-size:11px;text-align:center}}
table{{border-collapse:collapse}} img{{image-rendering:pixelated;margin:1px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} prompts x {len(cols)} images. Left: the teacher's mask, {_swatch(TEACHER_COLOR)} {legend(TEACHER_COLOR)};
right: the student's mask, {_swatch(STUDENT_COLOR)} {legend(STUDENT_COLOR)} (the union of each model's kept
predictions; no outline: nothing kept).
Mean teacher/student IoU {sum(ious) / len(ious):.3f} (two empty masks count as IoU 1).</p>
<table><tr><th>prompt \\ image</th>{head}</tr>
{body}
</table></body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


@torch.no_grad()
def _union_masks(score_fn: ScoreFn, images: Tensor, prompts: Sequence[str], kwargs: Mapping[str, Any],
                 batch_size: int) -> Tensor:
    """(P, N, H, W) bool: per prompt and image the union of the kept predictions at the image size."""
    n = images.shape[0]
    index = [i for _ in prompts for i in range(n)]
    flat = [p for p in prompts for _ in range(n)]
    size = tuple(images.shape[-2:])
    units = [u.union() for o in run_units(score_fn, images, index, flat, batch_size)
             for u in postprocess(o, size=size, **kwargs)]
    return torch.stack(units).reshape(len(prompts), n, *size)


def visual_check(teacher_fn: ScoreFn, student_fn: ScoreFn, images: Tensor, prompts: Sequence[str],
                 out_dir: str | Path, gt_masks: Tensor | None = None, teacher_kwargs: Mapping[str, Any] | None = None,
                 student_kwargs: Mapping[str, Any] | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Teacher and student masks for every prompt x image (P x N units), as two grids and one HTML gallery.

    ``*_kwargs``: :func:`~.evaluation.postprocess` arguments per model (e.g. the student's
    ``Calibration.postprocess_kwargs()``); ``gt_masks``: optional (P, N, H, W) union ground truth. Returns the
    written paths and ``mean_iou`` (teacher vs student over the cells)."""
    images = _check_images(images)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"visual_check: prompts must be non-empty strings, got {list(prompts)!r}")
    out_dir = Path(out_dir)
    t = _union_masks(teacher_fn, images, prompts, teacher_kwargs or {}, batch_size)
    s = _union_masks(student_fn, images, prompts, student_kwargs or {}, batch_size)
    if gt_masks is not None and tuple(gt_masks.shape[:2]) != (len(prompts), images.shape[0]):
        raise ValueError(f"visual_check: gt_masks {tuple(gt_masks.shape)}; expected ({len(prompts)}, "
                         f"{images.shape[0]}, H, W)")
    entries = [GalleryEntry(p, i, images[i], t[r, i], s[r, i], None if gt_masks is None else gt_masks[r, i])
               for r, p in enumerate(prompts) for i in range(images.shape[0])]
    paths = {f"{who}_grid": mask_grid(images, m, prompts, out_dir / f"{who}_grid.png", color,
                                      title=f"{who} mask: {legend(color)}")
             for who, m, color in (("teacher", t, TEACHER_COLOR), ("student", s, STUDENT_COLOR))}
    paths["html"] = html_gallery(out_dir, entries)
    ious = [mask_iou(t[r, i], s[r, i]) for r in range(len(prompts)) for i in range(images.shape[0])]
    return {**paths, "mean_iou": sum(ious) / len(ious)}
