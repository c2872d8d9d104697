"""ShapesWorld: a seeded procedural world of coloured shapes with real ground truth.

Every demo and test of the workbench runs on it. A sample is fully determined by ``(seed, index)``:
a private ``numpy.random.Generator`` is derived from both (never the global RNG), so the same
sample comes back in any process or DataLoader worker.

Conventions (also the contract the real-format readers follow):

* ``image`` uint8 (3,H,W), or ``video`` uint8 (T,3,H,W) when ``num_frames`` is set.
* ``instances`` int64 (H,W) / (T,H,W): 0 = background, objects ``1..n`` in depth order,
  **1 = nearest** (drawn last, never occluded by the others), ``n`` = farthest.
* per-object arrays padded to ``max_objects`` (index ``k`` = object id ``k+1``): ``category``
  (index into ``self.categories``, -1 pad), ``color`` (index into ``COLORS``, -1 pad),
  ``material`` (index into ``MATERIALS``: 0 rubber, 1 metal, -1 pad), ``size`` (float32 diameter as a
  fraction of the image side, 0 pad); ``num_objects`` int64 scalar.
* ``labels`` float32 multi-hot over ``self.categories``; ``caption`` str naming every object
  nearest first ("a red metal square and a blue rubber circle").
* ``phase`` int64 (T,) (scalar for images: frame 0 of the same schedule): 1 while object 1 holds
  still, 0 while it moves. With ``motion=False`` nothing moves and the phase is always 1. Phase is a
  temporal property; ``motion_blur=True`` also makes it visible in single frames (object 1 smeared).

Metal objects carry a shading gradient and a specular highlight; rubber objects are flat
(all their visible pixels share one colour). Rasterisation is vectorised numpy over each object's
bounding box only, so generation is never the bottleneck (see ``bench/shapes_throughput.py``).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (230, 200, 40),
    "purple": (140, 60, 190), "cyan": (30, 190, 205), "orange": (240, 130, 30), "pink": (235, 90, 170),
}
MATERIALS: tuple[str, ...] = ("rubber", "metal")
METAL = 1  # index of "metal" in MATERIALS
BLUR_STEPS = 4  # sub-frame positions averaged for motion blur
PLAIN_BACKGROUND: tuple[int, int, int] = (112, 112, 112)


def _chord_normals(vertices: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals and offsets of the chords ``(v_k, v_{k+step})`` of a polygon inscribed in the unit circle."""
    mids = (vertices + np.roll(vertices, -step, axis=0)) / 2.0
    dist = np.linalg.norm(mids, axis=1)
    return mids / dist[:, None], dist


def _regular(n: int, step: int = 1, phase: float = np.pi / 2) -> tuple[np.ndarray, np.ndarray]:
    ang = phase + 2 * np.pi * np.arange(n) / n
    return _chord_normals(np.stack([np.cos(ang), np.sin(ang)], 1), step)


# half-plane tables (normals (n,2), offsets (n,), minimum count of satisfied half-planes)
_HALF_PLANES = {
    "triangle": (*_regular(3), 3),
    "hexagon": (*_regular(6, phase=0.0), 6),
    "star": (*_regular(5, step=2), 4),  # filled pentagram = inside at least 4 of its 5 edge lines
}
# scale of each shape's unit outline so that areas are comparable for one ``size``
_SCALE = {"circle": 0.95, "square": 0.8, "triangle": 1.15, "star": 1.2, "hexagon": 1.0, "cross": 1.0}


def shape_mask(category: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``category`` at normalised, rotated coordinates ``(u, v)`` (radius 1 = object radius)."""
    s = _SCALE[category]
    if category == "circle":
        return u * u + v * v <= s * s
    if category == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= s
    if category == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= s) & (av <= 0.32 * s)) | ((au <= 0.32 * s) & (av <= s))
    normals, offsets, need = _HALF_PLANES[category]
    proj = normals[:, 0, None, None] * u[None] + normals[:, 1, None, None] * v[None]
    inside = (proj <= (offsets * s)[:, None, None]).sum(0)
    return inside >= need


def make_caption(objects: Sequence[Sequence[str | None]]) -> str:
    """"a red metal square and an orange rubber circle" from (colour, material, category) triples.

    ``None`` words are left out (readers whose format lacks colour or material).
    """
    parts = []
    for words in objects:
        text = " ".join(w for w in words if w)
        parts.append(("an " if text[:1] in "aeiou" else "a ") + text)
    if not parts:
        return "an empty scene"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass
class Scene:
    """Everything needed to render one sample; arrays are indexed by object (0 = object id 1, nearest)."""

    categories: np.ndarray  # (n,) indices into ShapesWorld.categories
    colors: np.ndarray  # (n,) indices into COLORS
    materials: np.ndarray  # (n,) indices into MATERIALS
    sizes: np.ndarray  # (n,) diameter / image side
    rotations: np.ndarray  # (n,) radians
    positions: np.ndarray  # (T, n, 2) object centres in pixels (x, y)
    phase: np.ndarray  # (T,) 1 while object 1 holds still
    background: np.ndarray  # (H, W, 3) uint8
    blur: np.ndarray | None = None  # (T, 2) displacement of object 1 into each frame (0 while still)

    @property
    def num_objects(self) -> int:
        return len(self.categories)


class ShapesWorld(Dataset):
    """Deterministic dataset of images or videos of 1..K shapes with masks, attributes, captions and phase."""

    CATEGORIES = CATEGORIES
    COLORS = COLORS
    COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
    MATERIALS = MATERIALS

    def __init__(
        self,
        n: int,
        image_size: int = 64,
        num_frames: int | None = None,
        min_objects: int = 1,
        max_objects: int = 3,
        seed: int = 0,
        categories: Sequence[str] | None = None,
        materials: Sequence[str] = ("metal", "rubber"),
        size_range: tuple[float, float] = (0.15, 0.3),
        background: str = "plain",
        motion: bool = True,
        speed_range: tuple[float, float] = (0.03, 0.07),
        motion_blur: bool = False,
        colors: Sequence[str] | None = None,
    ) -> None:
        """
        Args:
            n: number of samples.
            image_size: side H = W in pixels.
            num_frames: None for images, else T frames per video.
            min_objects, max_objects: object count drawn uniformly in this range per sample.
            seed: world seed; sample ``i`` depends only on ``(seed, i)`` and these arguments.
            categories: subset of ``CATEGORIES`` (order defines label indices); default all.
            materials: allowed materials (``"metal"``, ``"rubber"``).
            size_range: object diameter range as a fraction of the image side.
            background: ``"plain"`` (uniform grey) or ``"textured"`` (stripes and noise, static per sample).
            motion: objects move with constant velocity and bounce off the borders; object 1 alternates
                between holding still and moving (``phase``).
            speed_range: speed per frame as a fraction of the image side.
            motion_blur: smear object 1 along its displacement while it moves (``phase`` 0), so the
                phase is visible in a single frame (frame retrieval); its mask covers the smear.
            colors: subset of ``COLORS`` objects are drawn from (default all); ``color`` indices stay indices into
                ``COLORS``. One colour removes the colour shortcut of self-supervised learning.
        """
        cats = list(categories) if categories is not None else list(CATEGORIES)
        unknown = [c for c in cats if c not in CATEGORIES]
        if unknown or not cats:
            raise ValueError(f"ShapesWorld: unknown categories {unknown}; expected a non-empty subset of {CATEGORIES}")
        bad_mat = [m for m in materials if m not in MATERIALS]
        if bad_mat or not materials:
            raise ValueError(f"ShapesWorld: unknown materials {bad_mat}; expected a subset of {MATERIALS}")
        if background not in ("plain", "textured"):
            raise ValueError(f"ShapesWorld: background={background!r}; expected 'plain' or 'textured'")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(f"ShapesWorld: need 1 <= min_objects ({min_objects}) <= max_objects ({max_objects})")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"ShapesWorld: num_frames={num_frames}; expected None or >= 1")
        allowed = list(colors) if colors is not None else list(COLORS)
        bad_col = [c for c in allowed if c not in COLORS]
        if bad_col or not allowed:
            raise ValueError(f"ShapesWorld: unknown colors {bad_col}; expected a non-empty subset of {tuple(COLORS)}")
        self.colors = [self.COLOR_NAMES.index(c) for c in allowed]
        self.n = int(n)
        self.image_size = int(image_size)
        self.num_frames = num_frames
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.seed = int(seed)
        self.categories = cats
        self.materials = [MATERIALS.index(m) for m in materials]
        self.size_range = (float(size_range[0]), float(size_range[1]))
        self.background = background
        self.motion = bool(motion)
        self.motion_blur = bool(motion_blur)
        self.speed_range = (float(speed_range[0]), float(speed_range[1]))
        self._centres = np.arange(self.image_size, dtype=np.float32) + 0.5  # pixel centres
        self._palette = np.asarray([COLORS[c] for c in self.COLOR_NAMES], dtype=np.float32)

    def __len__(self) -> int:
        return self.n

    # ------------------------------------------------------------------ identity
    def config(self) -> dict:
        """The arguments that determine every sample (used for fingerprints)."""
        return {
            "n": self.n, "image_size": self.image_size, "num_frames": self.num_frames,
            "min_objects": self.min_objects, "max_objects": self.max_objects, "seed": self.seed,
            "categories": self.categories, "materials": self.materials, "size_range": self.size_range,
            "background": self.background, "motion": self.motion, "speed_range": self.speed_range,
            "motion_blur": self.motion_blur,
            "version": 1,
            **({"colors": self.colors} if len(self.colors) != len(COLORS) else {}),
        }

    def fingerprint(self) -> str:
        """Stable hash of the world's configuration (same fingerprint = same samples)."""
        blob = json.dumps(self.config(), sort_keys=True).encode()
        return "shapesworld-" + hashlib.sha1(blob).hexdigest()[:16]

    def rng(self, index: int) -> np.random.Generator:
        """The private generator of sample ``index`` (depends on ``(seed, index)`` only)."""
        return np.random.default_rng(np.random.SeedSequence([abs(self.seed), int(index), 0x5A4E]))

    # ------------------------------------------------------------------ scene sampling
    def sample_scene(self, index: int) -> Scene:
        """Draw the parameters (attributes, trajectories, phase, background) of sample ``index``."""
        if not 0 <= index < self.n:
            raise IndexError(f"ShapesWorld index {index} out of range [0, {self.n})")
        rng, s = self.rng(index), self.image_size
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        u = rng.random((7, n))  # one draw for every per-object scalar
        cats = (u[0] * len(self.categories)).astype(np.int64)
        colors = np.asarray(self.colors, dtype=np.int64)[(u[1] * len(self.colors)).astype(np.int64)]
        materials = np.asarray(self.materials, dtype=np.int64)[(u[2] * len(self.materials)).astype(np.int64)]
        lo_size, hi_size = self.size_range
        sizes = lo_size + (hi_size - lo_size) * u[3]
        rotations = 2 * np.pi * u[4]
        radii = sizes * s / 2
        # rejection sampling keeps every object at least partly visible in frame 0: the first of 30
        # candidate centres far enough from the objects placed before (else the last candidate)
        cand = radii[None, :, None] + rng.random((30, n, 2)) * (s - 2 * radii)[None, :, None]
        start = np.empty((n, 2))
        for k in range(n):
            if k:
                diff = cand[:, k, None, :] - start[None, :k, :]
                ok = ((diff**2).sum(-1) > (0.75 * (radii[:k] + radii[k])) ** 2).all(1)
                start[k] = cand[int(np.argmax(ok)) if ok.any() else -1, k]
            else:
                start[k] = cand[0, k]
        t_len = self.num_frames or 1
        phase = self._phase(rng, t_len)
        positions, blur = self._trajectories(start, radii, phase, t_len, u[5], u[6])
        background = self._background(rng)
        return Scene(cats, colors, materials, sizes, rotations, positions, phase, background, blur)

    def _phase(self, rng: np.random.Generator, t_len: int) -> np.ndarray:
        if not self.motion:
            return np.ones(t_len, dtype=np.int64)
        phase = np.empty(t_len, dtype=np.int64)
        state, t = int(rng.integers(0, 2)), 0
        while t < t_len:
            seg = int(rng.integers(2, max(3, t_len // 2) + 1))
            phase[t : t + seg] = state
            t, state = t + seg, 1 - state
        return phase

    def _trajectories(self, start, radii, phase, t_len, u_angle, u_speed) -> tuple[np.ndarray, np.ndarray]:
        """Centres (T, n, 2) with bounces, and object 1's displacement into each frame (T, 2)."""
        n, s = len(start), self.image_size
        pos = np.empty((t_len, n, 2))
        pos[0] = start
        ang = 2 * np.pi * u_angle
        speed = (self.speed_range[0] + (self.speed_range[1] - self.speed_range[0]) * u_speed) * s
        vel = np.stack([np.cos(ang), np.sin(ang)], 1) * speed[:, None]
        if not self.motion:
            vel[:] = 0
        blur = np.zeros((t_len, 2))
        blur[0] = vel[0] * (phase[0] == 0)
        if t_len == 1:
            return pos, blur
        cur = start.copy()
        lo, hi = radii[:, None], s - radii[:, None]
        for t in range(t_len):
            if t > 0:
                step = vel.copy()
                if phase[t] == 1:
                    step[0] = 0.0  # object 1 holds still
                cur = cur + step
                low, high = cur < lo, cur > hi
                cur = np.where(low, 2 * lo - cur, np.where(high, 2 * hi - cur, cur))
                vel = np.where(low | high, -vel, vel)
            pos[t] = cur
        blur[1:] = pos[1:, 0] - pos[:-1, 0]
        return pos, blur

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        if self.background == "plain":  # shared read-only array; render() copies it
            return np.broadcast_to(np.asarray(PLAIN_BACKGROUND, np.uint8), (s, s, 3))
        base = rng.uniform(90, 150)
        ang, freq = rng.uniform(0, np.pi), rng.uniform(3, 8) * 2 * np.pi / s
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        stripes = 18 * np.sin(freq * (xx * np.cos(ang) + yy * np.sin(ang)))
        noise = rng.normal(0, 6, (s, s, 1))
        tint = rng.uniform(-8, 8, 3)
        return np.clip(base + stripes[..., None] + noise + tint, 0, 255).astype(np.uint8)

    # ------------------------------------------------------------------ rendering
    def render(self, scene: Scene, t: int = 0, skip: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Render frame ``t`` of ``scene`` -> (image uint8 (H,W,3), instances int64 (H,W)).

        ``skip``: object ids (1-based) left out, e.g. to render a scene without its front object.
        """
        s = self.image_size
        img = scene.background.copy()
        inst = np.zeros((s, s), dtype=np.int64)
        skipped = set(skip)
        for k in range(scene.num_objects - 1, -1, -1):  # farthest first, object 1 last (on top)
            if k + 1 in skipped:
                continue
            cx, cy = float(scene.positions[t, k, 0]), float(scene.positions[t, k, 1])
            blur = scene.blur[t] if k == 0 and self.motion_blur and scene.blur is not None else None
            if blur is None or not blur.any():
                drawn = self._draw(scene, k, cx, cy)
                if drawn is not None:
                    ys, xs, pix = drawn
                    img[ys, xs] = np.clip(pix + 0.5, 0, 255).astype(np.uint8)
                    inst[ys, xs] = k + 1
                continue
            acc, cnt = np.zeros((s, s, 3), np.float32), np.zeros((s, s), np.float32)
            for j in range(BLUR_STEPS):  # average of sub-frame positions along the displacement
                drawn = self._draw(scene, k, cx - blur[0] * j / BLUR_STEPS, cy - blur[1] * j / BLUR_STEPS)
                if drawn is not None:
                    acc[drawn[0], drawn[1]] += drawn[2]
                    cnt[drawn[0], drawn[1]] += 1
            m = cnt > 0
            mix = (acc[m] + (BLUR_STEPS - cnt[m])[:, None] * img[m]) / BLUR_STEPS
            img[m] = np.clip(mix + 0.5, 0, 255).astype(np.uint8)
            inst[m] = k + 1
        return img, inst

    def _draw(self, scene: Scene, k: int, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Pixels (ys, xs) covered by object ``k`` centred at (cx, cy) and their float colours (P, 3)."""
        s = self.image_size
        r = float(scene.sizes[k]) * s / 2
        reach = r * 1.25 + 1
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, s)
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, s)
        if x0 >= x1 or y0 >= y1:
            return None
        dx = (self._centres[x0:x1] - cx) / r  # normalised offsets (radius 1 = object radius)
        dy = (self._centres[y0:y1, None] - cy) / r
        rot = float(scene.rotations[k])
        c, sn = math.cos(rot), math.sin(rot)
        ys, xs = np.nonzero(shape_mask(self.categories[scene.categories[k]], c * dx + sn * dy, c * dy - sn * dx))
        if len(ys) == 0:
            return None
        colour = self._palette[scene.colors[k]]
        if scene.materials[k] == METAL:  # light from the upper left: shading gradient plus a specular spot
            d = np.sqrt((dx[xs] + 0.4) ** 2 + (dy[ys, 0] + 0.4) ** 2)
            shade = 0.5 + 0.5 * np.clip(1.0 - d / 1.8, 0.0, 1.0)
            spec = 0.85 * np.exp(-((d / 0.35) ** 2))
            pix = ((1 - spec) * shade)[:, None] * colour + (spec * 255.0)[:, None]
        else:
            pix = np.broadcast_to(colour, (len(ys), 3))
        return ys + y0, xs + x0, pix

    # ------------------------------------------------------------------ samples
    def caption(self, scene: Scene) -> str:
        """Caption naming every object, nearest first."""
        return make_caption([(self.COLOR_NAMES[c], MATERIALS[m], self.categories[g])
                             for c, m, g in zip(scene.colors, scene.materials, scene.categories)])

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += self.n
        scene = self.sample_scene(index)
        out: dict = {}
        if self.num_frames is None:
            img, inst = self.render(scene, 0)
            out["image"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
            out["instances"], out["phase"] = torch.from_numpy(inst), torch.tensor(int(scene.phase[0]))
        else:
            frames = [self.render(scene, t) for t in range(len(scene.phase))]
            imgs = np.stack([f[0] for f in frames]).transpose(0, 3, 1, 2)
            out["video"] = torch.from_numpy(np.ascontiguousarray(imgs))
            out["instances"] = torch.from_numpy(np.stack([f[1] for f in frames]))
            out["phase"] = torch.from_numpy(scene.phase.copy())
        out.update(self.object_arrays(scene))
        out["caption"] = self.caption(scene)
        out["index"] = torch.tensor(index)
        return out

    def object_arrays(self, scene: Scene) -> dict[str, torch.Tensor]:
        """Padded per-object arrays, ``num_objects`` and ``labels`` of ``scene``."""
        n, k = scene.num_objects, self.max_objects
        ints = np.full((3, k), -1, dtype=np.int64)  # category, color, material
        ints[0, :n], ints[1, :n], ints[2, :n] = scene.categories, scene.colors, scene.materials
        size = np.zeros(k, dtype=np.float32)
        size[:n] = scene.sizes
        labels = np.zeros(len(self.categories), dtype=np.float32)
        labels[scene.categories] = 1.0
        t = torch.from_numpy(ints)
        return {"category": t[0], "color": t[1], "material": t[2], "size": torch.from_numpy(size),
                "num_objects": torch.tensor(n, dtype=torch.int64), "labels": torch.from_numpy(labels)}
