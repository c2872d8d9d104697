"""ShapesWorld: determinism, masks vs pixels, occlusion, materials, attributes / labels / captions, phase."""
import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from lit_experiments.data.shapes import COLORS, MATERIALS, PLAIN_BACKGROUND, ShapesWorld


def _digest(item: dict) -> str:
    h = hashlib.sha1()
    for k in sorted(item):
        v = item[k]
        h.update(k.encode())
        h.update(v.encode() if isinstance(v, str) else v.numpy().tobytes())
    return h.hexdigest()


def test_keys_shapes_and_dtypes_image_and_video():
    img = ShapesWorld(4, image_size=32, max_objects=4)[0]
    assert img["image"].shape == (3, 32, 32) and img["image"].dtype == torch.uint8
    assert img["instances"].shape == (32, 32) and img["instances"].dtype == torch.int64
    for k, dt in [("category", torch.int64), ("color", torch.int64), ("material", torch.int64), ("size", torch.float32)]:
        assert img[k].shape == (4,) and img[k].dtype == dt
    assert img["num_objects"].shape == () and img["phase"].shape == ()
    assert img["labels"].shape == (6,) and img["labels"].dtype == torch.float32
    vid = ShapesWorld(4, image_size=32, num_frames=5)[1]
    assert vid["video"].shape == (5, 3, 32, 32) and vid["instances"].shape == (5, 32, 32)
    assert vid["phase"].shape == (5,) and "image" not in vid
    batch = default_collate([ShapesWorld(4, image_size=32, num_frames=5)[i] for i in range(4)])
    assert batch["video"].shape == (4, 5, 3, 32, 32) and len(batch["caption"]) == 4


def test_class_attributes():
    assert {"circle", "square", "triangle", "star", "hexagon", "cross"} <= set(ShapesWorld.CATEGORIES)
    assert "red" in ShapesWorld.COLORS and len(ShapesWorld.COLORS) >= 6
    assert ShapesWorld.MATERIALS == ("rubber", "metal")


def test_determinism_same_seed_index_and_differs_otherwise():
    a, b = ShapesWorld(10, 32, num_frames=3, seed=7), ShapesWorld(10, 32, num_frames=3, seed=7)
    assert _digest(a[3]) == _digest(b[3])
    b[5]  # drawing other samples first changes nothing
    assert _digest(a[3]) == _digest(b[3])
    assert _digest(a[3]) != _digest(a[4])
    assert _digest(a[3]) != _digest(ShapesWorld(10, 32, num_frames=3, seed=8)[3])


def test_determinism_across_processes():
    code = (
        "import hashlib,sys\n"
        "from lit_experiments.data.shapes import ShapesWorld\n"
        f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})\n"
        "from test_shapes import _digest\n"
        "import numpy as np; np.random.seed(123)\n"
        "print(_digest(ShapesWorld(10, 32, num_frames=3, seed=7, background='textured')[6]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _digest(ShapesWorld(10, 32, num_frames=3, seed=7, background="textured")[6])


def test_determinism_across_dataloader_workers():
    world = ShapesWorld(6, 32, seed=3)
    loader = DataLoader(world, batch_size=2, num_workers=2, shuffle=False)
    got = [b for b in loader]
    ref = default_collate([world[i] for i in range(6)])
    assert torch.equal(torch.cat([b["image"] for b in got]), ref["image"])
    assert torch.equal(torch.cat([b["instances"] for b in got]), ref["instances"])


def test_masks_agree_with_pixels_on_plain_background():
    world = ShapesWorld(20, 48, max_objects=4, seed=1)
    bg = torch.tensor(PLAIN_BACKGROUND, dtype=torch.uint8).view(3, 1, 1)
    for i in range(20):
        s = world[i]
        is_bg = (s["image"] == bg).all(0)
        fg = s["instances"] > 0
        assert torch.equal(is_bg, ~fg), f"sample {i}: mask and pixels disagree"
        ids = set(s["instances"].unique().tolist()) - {0}
        assert ids <= set(range(1, int(s["num_objects"]) + 1))


def test_occluded_objects_lose_exactly_the_covered_pixels():
    world = ShapesWorld(40, 48, min_objects=2, max_objects=4, seed=2, size_range=(0.3, 0.45))
    covered_total = 0
    for i in range(40):
        scene = world.sample_scene(i)
        n = scene.num_objects
        img, inst = world.render(scene)
        img_wo, inst_wo = world.render(scene, skip={1})  # without the front object
        _, inst_front = world.render(scene, skip=set(range(2, n + 1)))
        front = inst_front == 1
        assert np.array_equal(inst == 1, front)  # object 1 is never occluded
        for j in range(2, n + 1):
            assert np.array_equal(inst == j, (inst_wo == j) & ~front)
            covered_total += int(((inst_wo == j) & front).sum())
        keep = ~front
        assert np.array_equal(img[keep], img_wo[keep])  # pixels outside the front object do not change
    assert covered_total > 0  # the check above actually saw occlusions


def test_metal_is_shaded_and_rubber_is_flat():
    world = ShapesWorld(60, 64, max_objects=3, seed=4, size_range=(0.25, 0.35))
    seen = {"metal": 0, "rubber": 0}
    for i in range(60):
        s = world[i]
        for k in range(int(s["num_objects"])):
            m = s["instances"] == k + 1
            if m.sum() < 30:
                continue
            pix = s["image"][:, m].T  # (P, 3)
            colour = torch.tensor(COLORS[world.COLOR_NAMES[int(s["color"][k])]], dtype=torch.uint8)
            if MATERIALS[int(s["material"][k])] == "rubber":
                assert (pix == colour).all()
                seen["rubber"] += 1
            else:
                assert len(torch.unique(pix, dim=0)) > 10
                assert pix.float().mean(1).max() > colour.float().mean() + 20  # specular highlight
                seen["metal"] += 1
    assert seen["metal"] > 5 and seen["rubber"] > 5


def test_attributes_labels_and_captions_agree():
    world = ShapesWorld(30, 32, min_objects=1, max_objects=4, seed=5, categories=["circle", "star", "cross"])
    pat = re.compile(r"an? (\w+) (\w+) (\w+)")
    for i in range(30):
        s = world[i]
        n = int(s["num_objects"])
        assert 1 <= n <= 4
        assert (s["category"][n:] == -1).all() and (s["color"][n:] == -1).all() and (s["material"][n:] == -1).all()
        assert (s["size"][n:] == 0).all() and ((s["size"][:n] >= 0.15) & (s["size"][:n] <= 0.3)).all()
        expected = torch.zeros(3)
        expected[s["category"][:n]] = 1
        assert torch.equal(s["labels"], expected)
        objs = pat.findall(s["caption"])
        assert len(objs) == n, s["caption"]
        for k, (col, mat, cat) in enumerate(objs):
            assert col == world.COLOR_NAMES[int(s["color"][k])]
            assert mat == MATERIALS[int(s["material"][k])]
            assert cat == world.categories[int(s["category"][k])]


def test_phase_marks_when_object_one_holds_still():
    world = ShapesWorld(8, 48, num_frames=10, seed=6)
    both = set()
    for i in range(8):
        scene = world.sample_scene(i)
        s = world[i]
        assert torch.equal(s["phase"], torch.from_numpy(scene.phase))
        only1 = set(range(2, scene.num_objects + 1))
        masks = [world.render(scene, t, skip=only1)[1] == 1 for t in range(10)]
        for t in range(1, 10):
            same = np.array_equal(masks[t], masks[t - 1])
            assert same == bool(scene.phase[t] == 1), (i, t, scene.phase)
        both |= set(scene.phase.tolist())
        r = scene.sizes * 48 / 2
        assert (scene.positions >= r[None, :, None] - 1e-6).all() and (scene.positions <= 48 - r[None, :, None] + 1e-6).all()
    assert both == {0, 1}
    still = ShapesWorld(2, 32, num_frames=4, motion=False)[0]
    assert (still["phase"] == 1).all() and (still["video"] == still["video"][0]).all()


def test_textured_background_varies_and_objects_stay_consistent():
    s = ShapesWorld(3, 48, background="textured", seed=9)[0]
    bgpix = s["image"][:, s["instances"] == 0]
    assert len(torch.unique(bgpix, dim=1).T) > 20
    assert s["instances"].max() == s["num_objects"]


@pytest.mark.parametrize("kwargs, msg", [
    ({"categories": ["circle", "blob"]}, "blob"),
    ({"materials": ["wood"]}, "wood"),
    ({"background": "sky"}, "sky"),
    ({"min_objects": 3, "max_objects": 2}, "min_objects"),
])
def test_bad_arguments_are_named(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ShapesWorld(2, **kwargs)
    with pytest.raises(IndexError, match="out of range"):
        ShapesWorld(2)[5]


def test_motion_blur_makes_phase_visible_and_keeps_masks_consistent():
    world = ShapesWorld(12, 48, num_frames=8, seed=3, motion_blur=True, materials=("rubber",))
    bg = torch.tensor(PLAIN_BACKGROUND, dtype=torch.uint8).view(3, 1, 1)
    seen = set()
    for i in range(12):
        s = world[i]
        colour = torch.tensor(COLORS[world.COLOR_NAMES[int(s["color"][0])]], dtype=torch.uint8)
        for t in range(8):
            frame, inst = s["video"][t], s["instances"][t]
            assert torch.equal((frame == bg).all(0), inst == 0)  # masks still agree with pixels
            pix = frame[:, inst == 1].T
            crisp = bool((pix == colour).all())
            assert crisp == bool(s["phase"][t] == 1), (i, t)  # smeared exactly while object 1 moves
            seen.add(crisp)
    assert seen == {True, False}
    plain = ShapesWorld(12, 48, num_frames=8, seed=3, materials=("rubber",))
    assert torch.equal(plain[0]["phase"], world[0]["phase"])
