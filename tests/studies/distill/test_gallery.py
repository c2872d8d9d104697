"""Visual checks of the distill study: PNG grid and static HTML gallery (teacher vs student per prompt)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from lit_experiments.studies.distill.components import gallery as G

SIZE = 16


def _images(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 120, (n, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)


def _square(y: int, x: int, w: int, size: int = SIZE) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y:y + w, x:x + w] = True
    return m


def test_overlay_changes_exactly_the_masked_pixels() -> None:
    img = _images(1)[0]
    mask = _square(4, 4, 6)
    out = G.overlay(img, mask[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1))
    changed = (out != img).any(0)
    assert torch.equal(changed, mask)
    small = G.overlay(img, mask[::2, ::2])  # an (8, 8) mask is resized to the image (nearest)
    assert torch.equal((small != img).any(0), mask)


def test_mask_grid_writes_a_png_with_one_cell_per_prompt_and_image(tmp_path) -> None:
    images = _images(5)
    masks = torch.stack([torch.stack([_square(p, i, 5) for i in range(5)]) for p in range(3)])  # (P, N, H, W)
    path = G.mask_grid(images, masks, ["circle", "a <b>red</b> square", "cost $5 $"], tmp_path / "g" / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 5 * SIZE and im.size[1] >= 3 * SIZE
    with pytest.raises(ValueError, match="2 mask sets for 3 prompts"):
        G.mask_grid(images, masks[:2], ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        G.mask_grid(images.float(), masks, ["a", "b", "c"], tmp_path / "x.png")


def test_html_gallery_is_self_contained_escaped_and_reports_iou(tmp_path) -> None:
    images = _images(2)
    evil = '<script>alert("x")</script>'
    entries = [G.GalleryEntry(evil, 0, images[0], _square(0, 0, 4), _square(0, 2, 4)),  # IoU 8 / 24
               G.GalleryEntry(evil, "img&1", images[1], _square(0, 0, 4), _square(0, 0, 4), gt_mask=_square(0, 0, 8)),
               G.GalleryEntry("circle", 0, images[0], torch.zeros(SIZE, SIZE), torch.zeros(SIZE, SIZE))]
    out = tmp_path / "gallery"
    page = G.html_gallery(out, entries).read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "img&amp;1" in page
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 6 and all(not s.startswith(("/", "http")) and (out / s).is_file() for s in srcs)
    assert "IoU t/s 0.33" in page and "GT: t 0.25 s 0.25" in page and "IoU t/s 1.00" in page
    assert f"Mean teacher/student IoU {(1 / 3 + 1 + 1) / 3:.3f}" in page
    with Image.open(out / srcs[0]) as im:
        assert im.size == (96, 96)


def _toy(shift: int):
    """score_fn: one query segmenting the square of channel 1, moved right by ``shift`` pixels; score high
    unless the prompt says "none"."""
    def score_fn(images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        obj = torch.roll(images[:, 1] > 200, shift, dims=2)
        logit = torch.tensor([-5.0 if p == "none" else 5.0 for p in prompts])
        return {"pred_masks": torch.where(obj, 6.0, -6.0)[:, None, ::2, ::2],  # predicted at half resolution
                "pred_boxes": torch.rand(len(prompts), 1, 4), "pred_logits": logit[:, None],
                "presence_logits": torch.full((len(prompts),), 4.0)}
    return score_fn


def test_visual_check_writes_grids_and_gallery_with_brute_force_iou(tmp_path) -> None:
    images = torch.zeros(4, 3, SIZE, SIZE, dtype=torch.uint8)
    for i in range(4):
        images[i, 1, 2:10, 2 + i:10 + i] = 255
    prompts = ["square", "none", "<script>x</script>"]
    res = G.visual_check(_toy(0), _toy(2), images, prompts, tmp_path / "vis", batch_size=5)
    for key in ("teacher_grid", "student_grid", "html"):
        assert res[key].is_file()
    teacher = (images[:, 1] > 200)[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2)
    student = torch.roll(images[:, 1] > 200, 2, dims=2)[:, ::2, ::2].repeat_interleave(2, 1).repeat_interleave(2, 2)
    ious = [G.mask_iou(teacher[i], student[i]) for i in range(4)]
    expected = (2 * sum(ious) + 4 * 1.0) / 12  # "none": both empty, IoU 1
    assert res["mean_iou"] == pytest.approx(expected) and res["mean_iou"] < 1
    assert G.visual_check(_toy(0), _toy(0), images, prompts, tmp_path / "same")["mean_iou"] == 1.0
    assert len(list((tmp_path / "vis" / "thumbs").glob("*.png"))) == 2 * 3 * 4
    with pytest.raises(ValueError, match="non-empty strings"):
        G.visual_check(_toy(0), _toy(0), images, ["ok", " "], tmp_path / "bad")


def test_legends_name_the_colours_the_masks_are_drawn_in(tmp_path) -> None:
    """Issue 25: the legend said blue / red (the word "red" in white) over masks drawn black and white. Each
    legend word must be the colour of its swatch and of the drawn outline, a colour no ShapesWorld object has."""
    from matplotlib.colors import to_hex

    from lit_experiments.data.shapes import COLORS

    images = torch.full((2, 3, SIZE, SIZE), 120, dtype=torch.uint8)
    for i in range(2):
        images[i, 1, 2:10, 2 + i:10 + i] = 255
    G.visual_check(_toy(0), _toy(2), images, ["square"], tmp_path / "vis", batch_size=5)
    page = (tmp_path / "vis" / "index.html").read_text()
    legend = re.findall(r'(Left|right): the (teacher|student)\'s mask, <span class="swatch" data-color="(#[0-9a-f]{6})"'
                        r'[^>]*></span> (\w+) outline', page)
    assert [(w, c) for _, w, c, _ in legend] == [("teacher", G.TEACHER_COLOR), ("student", G.STUDENT_COLOR)]
    assert "color:#ffffff" not in page.replace("background:#ffffff", "")  # no legend text drawn in white
    for _, who, color, word in legend:
        assert to_hex(word) == color, (who, word, color)  # the word names the swatch's colour
        rgb = torch.tensor([int(color[k:k + 2], 16) for k in (1, 3, 5)])
        assert all((rgb - torch.tensor(c)).abs().sum() > 150 for c in COLORS.values()), (who, color)
        shift = 0 if who == "teacher" else 2
        mask = torch.roll(images[0, 1] > 200, shift, dims=1)
        edge = G.outline(mask)
        thumb = torch.as_tensor(np.array(Image.open(tmp_path / "vis" / "thumbs" / f"000_000_{who}.png")))
        small = torch.nn.functional.interpolate(thumb.permute(2, 0, 1)[None].float(), size=(SIZE, SIZE),
                                                mode="nearest")[0].to(torch.uint8)
        drawn = small[:, edge].T  # (n, 3): the outline pixels as written to the PNG
        assert edge.sum() > 0 and (drawn == rgb.to(torch.uint8)).all(), (who, color, drawn[:3])
        inside = mask & ~edge
        assert not (small[:, inside].T == images[0][:, inside].T).all(1).any()  # the inside is tinted
