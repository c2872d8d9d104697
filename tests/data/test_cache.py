"""FeatureCache: hits, invalidation, corruption, random transforms, atomicity, workers, DDP-style waiting,
checksums, non-finite features, progress output and the global random state."""
import contextlib
import json
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T1
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lit_experiments.backbones import build_backbone
from lit_experiments.data import cache as cache_module
from lit_experiments.data.cache import (
    CacheCorruptError,
    FeatureCache,
    NonFiniteFeaturesError,
    RandomTransformError,
    find_random_transforms,
)
from lit_experiments.data.shapes import ShapesWorld

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


class Counting:
    """Wraps a backbone and counts ``features`` calls (and can fail after some calls)."""

    def __init__(self, backbone, fail_after: int | None = None):
        self.backbone, self.calls, self.fail_after = backbone, 0, fail_after
        self.name = backbone.name

    def cache_key(self):
        return self.backbone.cache_key()

    def features(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        return self.backbone.features(x)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY)


def _cache(tmp_path, backbone, world, **kw):
    kw.setdefault("transform", v2.Resize((28, 28), antialias=True))
    return FeatureCache(tmp_path / "cache", backbone, world, batch_size=4, progress=False, **kw)


def test_hit_returns_stored_tensors_without_calling_backbone(tmp_path, vit):
    world = ShapesWorld(10, 32, seed=1)
    counting = Counting(vit)
    first = _cache(tmp_path, counting, world)
    assert first.built_now and counting.calls == 3
    again = _cache(tmp_path, counting, world)
    assert not again.built_now and counting.calls == 3
    item = again[7]
    assert item["features"].shape == (4, 32) and item["features"].dtype == torch.float32
    assert torch.equal(item["image"], world[7]["image"]) and item["caption"] == world[7]["caption"]
    direct = vit.features(v2.Resize((28, 28), antialias=True)(world[7]["image"].float()[None] / 255))[0]
    assert torch.allclose(item["features"], direct.half().float())
    shard = np.load(again.path / again.manifest["shards"][0]["file"], mmap_mode="r")
    assert isinstance(shard, np.memmap) and shard.dtype == np.float16
    assert torch.equal(item["features"], torch.from_numpy(np.array(shard[7])).float())


def test_layer_transform_data_and_key_fields_invalidate(tmp_path, vit):
    world = ShapesWorld(6, 32, seed=1)
    counting = Counting(vit)
    base = _cache(tmp_path, counting, world)
    calls = counting.calls
    torch.manual_seed(0)
    other_layer = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs=TINY, layers=[0])
    assert other_layer.weights_fingerprint() == vit.weights_fingerprint()
    variants = [
        _cache(tmp_path, Counting(other_layer), world),
        _cache(tmp_path, counting, world, transform=v2.Resize((14, 14), antialias=True)),
        _cache(tmp_path, counting, ShapesWorld(6, 32, seed=2)),
        _cache(tmp_path, counting, world, key_fields={"note": "v2"}),
    ]
    assert all(v.built_now for v in variants)
    assert len({base.path, *(v.path for v in variants)}) == 5
    assert counting.calls == calls + 3 * 2
    assert not _cache(tmp_path, counting, world).built_now


def test_truncated_shard_detected_and_rebuilt(tmp_path, vit, capsys):
    world = ShapesWorld(6, 32, seed=1)
    c = _cache(tmp_path, vit, world, shard_size=4)
    ref = c[5]["features"]
    shard = c.path / "shard_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert "truncated" in c.check()
    capsys.readouterr()
    again = _cache(tmp_path, vit, world, shard_size=4)
    assert again.built_now and "rebuilding" in capsys.readouterr().out
    assert torch.equal(again[5]["features"], ref)


def test_bad_manifest_rebuilds(tmp_path, vit, capsys):
    world = ShapesWorld(4, 32, seed=1)
    c = _cache(tmp_path, vit, world)
    man = json.loads((c.path / "manifest.json").read_text())
    man["count"] = 3
    (c.path / "manifest.json").write_text(json.dumps(man))
    again = _cache(tmp_path, vit, world)
    assert again.built_now and "rebuilding" in capsys.readouterr().out and len(again) == 4


@pytest.mark.parametrize("transform, where", [
    (v2.Compose([v2.RandomResizedCrop(28, antialias=True)]), "RandomResizedCrop"),
    (T1.Compose([T1.Resize(28), T1.RandomHorizontalFlip()]), "RandomHorizontalFlip"),
    (torch.nn.Sequential(v2.Resize(28), v2.ColorJitter(0.2)), "ColorJitter"),
])
def test_random_augmentation_is_refused(tmp_path, vit, transform, where):
    with pytest.raises(RandomTransformError, match=f"random augmentation.*{where}.*frozen into the cache"):
        _cache(tmp_path, vit, ShapesWorld(2, 32), transform=transform)
    assert not (tmp_path / "cache").exists()


def test_random_flag_and_unstable_transform_description(tmp_path, vit):
    with pytest.raises(RandomTransformError, match="random=True"):
        _cache(tmp_path, vit, ShapesWorld(2, 32), random=True)

    def my_resize(x):
        return torch.nn.functional.interpolate(x[None], size=(28, 28), mode="bilinear")[0]

    with pytest.raises(ValueError, match="transform_id"):
        _cache(tmp_path, vit, ShapesWorld(2, 32), transform=my_resize)
    c = _cache(tmp_path, vit, ShapesWorld(2, 32), transform=my_resize, transform_id="bilinear28")
    assert c[0]["features"].shape == (4, 32)
    assert find_random_transforms(v2.Compose([v2.Resize(28), v2.CenterCrop(28)])) == []


def test_video_features_per_frame_and_workers(tmp_path, vit):
    world = ShapesWorld(4, 32, num_frames=3, seed=1)
    c = _cache(tmp_path, vit, world, dtype=torch.float16)
    assert c[0]["features"].shape == (3, 4, 32) and c[0]["features"].dtype == torch.float16
    batches = list(DataLoader(c, batch_size=2, num_workers=2))
    feats = torch.cat([b["features"] for b in batches])
    assert torch.equal(feats, torch.stack([c[i]["features"] for i in range(4)]))
    only = _cache(tmp_path, vit, world, include_items=False)
    assert set(only[1]) == {"index", "features"}


def test_crash_during_build_leaves_no_partial_cache(tmp_path, vit):
    world = ShapesWorld(12, 32, seed=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _cache(tmp_path, Counting(vit, fail_after=1), world)
    root = tmp_path / "cache"
    assert not any((p / "manifest.json").exists() for p in root.iterdir() if not p.name.startswith("."))
    assert not list(root.glob("*.lock"))
    c = _cache(tmp_path, vit, world)
    assert c.built_now and len(c) == 12
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]  # the crashed build cleaned up


def test_non_zero_rank_waits_for_the_writer(tmp_path, vit, monkeypatch):
    world = ShapesWorld(4, 32, seed=1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    counting = Counting(vit)
    with pytest.raises(TimeoutError, match="waited"):
        _cache(tmp_path, counting, world, wait_timeout_s=0.5)
    assert counting.calls == 0  # a non-zero rank never builds
    monkeypatch.setenv("LOCAL_RANK", "0")
    _cache(tmp_path, vit, world)
    monkeypatch.setenv("LOCAL_RANK", "1")
    reader = _cache(tmp_path, counting, world)
    assert not reader.built_now and counting.calls == 0 and len(reader) == 4


DDP_WORKER = """
import json, os, sys
import torch
from lit_experiments.backbones import build_backbone
from lit_experiments.data.cache import FeatureCache
from lit_experiments.data.shapes import ShapesWorld
rank, port, cache_dir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
torch.manual_seed(0)
bb = build_backbone("vit_small_patch14_dinov2", img_size=28, model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2})
calls = []
orig = bb.features
bb.features = lambda x: (calls.append(1), orig(x))[1]
c = FeatureCache(cache_dir, bb, ShapesWorld(4, 28, seed=1), progress=False)
json.dump([len(calls), c.built_now, c[3]["features"].sum().item()], open(out, "w"))
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow  # two fresh interpreters importing torch + timm: ~20 s on the shared 2-core box
def test_ddp_rank_zero_builds_others_wait(tmp_path):
    """Two real gloo processes: rank 0 builds, rank 1 waits on the barrier and reads the same features."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(port), str(tmp_path / "cache"),
                               str(tmp_path / f"rank{r}.json")]) for r in (0, 1)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0[0] > 0 and r0[1] and r1 == [0, False, r0[2]]


def test_lock_of_a_dead_builder_is_broken(tmp_path, vit, capsys):
    import shutil
    import socket

    world = ShapesWorld(4, 32, seed=1)
    probe = _cache(tmp_path, vit, world)  # learn the path, then pretend a crashed process holds the lock
    shutil.rmtree(probe.path)
    lock = probe.path.parent / (probe.path.name + ".lock")
    lock.write_text(f"{socket.gethostname()}:999999999")
    c = _cache(tmp_path, vit, world)
    assert c.built_now and "breaking stale lock" in capsys.readouterr().out and not lock.exists()


class Poisoned(Counting):
    """Sets sample ``index`` (global position in the build) to ``value`` in the backbone's output."""

    def __init__(self, backbone, index: int, value: float, batch_size: int = 4):
        super().__init__(backbone)
        self.index, self.value, self.batch_size = index, value, batch_size

    def features(self, x):
        out = super().features(x).clone()
        k, row = divmod(self.index, self.batch_size)
        if self.calls - 1 == k:
            out[row, 1, 2] = self.value
        return out


class DrawsRandomness(Counting):
    """A backbone (or anything else run at build time) that draws from the torch / numpy / python RNGs."""

    def features(self, x):
        torch.rand(3), np.random.rand(3), random.random()
        return super().features(x)


def _rng_states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _assert_same_states(before, after):
    assert torch.equal(before[0], after[0]), "global torch RNG moved"
    assert np.array_equal(before[1], after[1]), "global numpy RNG moved"
    assert before[2] == after[2], "python random moved"


def test_cache_build_and_open_leave_global_rng_untouched(tmp_path, vit):
    """Seed per purpose: building (or opening) a cache before training must not move the RNG training sees."""
    world = ShapesWorld(10, 32, seed=1)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = _rng_states()
    built = _cache(tmp_path, DrawsRandomness(vit), world, num_workers=0)
    assert built.built_now
    _assert_same_states(before, _rng_states())
    opened = _cache(tmp_path, DrawsRandomness(vit), world)
    assert not opened.built_now
    _assert_same_states(before, _rng_states())


def test_build_dataloader_does_not_draw_from_global_torch_rng(tmp_path, vit, monkeypatch):
    """Without the RNG guard around it, the build itself (its DataLoader's base seed) must not draw either."""
    monkeypatch.setattr(cache_module, "isolated_rng", contextlib.nullcontext)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    assert _cache(tmp_path, vit, ShapesWorld(6, 32, seed=1)).built_now
    assert torch.equal(before, torch.get_rng_state())


def test_same_size_corrupt_shard_is_rejected_naming_the_file(tmp_path, vit):
    world = ShapesWorld(6, 32, seed=1)
    c = _cache(tmp_path, vit, world, shard_size=4)
    assert all(isinstance(sh["crc32"], int) for sh in c.manifest["shards"])
    shard = c.path / "shard_00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[-7] ^= 0x40  # one byte of feature data, same size: the size check cannot see it
    shard.write_bytes(bytes(raw))
    assert c.check() is None
    with pytest.raises(CacheCorruptError, match=rf"{shard}.*corrupt.*delete {c.path}.*rebuild"):
        _cache(tmp_path, vit, world, shard_size=4)
    assert shard.read_bytes() == bytes(raw)  # rejected, not silently rebuilt over (the evidence stays)
    unchecked = _cache(tmp_path, vit, world, shard_size=4, verify=False)
    assert not unchecked.built_now and len(unchecked) == 6


@pytest.mark.parametrize("value, what", [(float("nan"), "NaN / inf"), (float("inf"), "NaN / inf"),
                                         (1e6, "float16 range")])
def test_non_finite_features_at_build_are_refused(tmp_path, vit, value, what):
    world = ShapesWorld(12, 32, seed=1)
    with pytest.raises(NonFiniteFeaturesError, match=rf"backbone '{vit.name}'.*{what}.*sample 6 of ShapesWorld"):
        _cache(tmp_path, Poisoned(vit, index=6, value=value), world)
    root = tmp_path / "cache"
    assert not list(root.rglob("manifest.json")) and not list(root.glob("*.lock")) and not list(root.glob(".tmp*"))


def test_failed_rebuild_keeps_what_was_there(tmp_path, vit):
    """A build that fails removes only its own temporary files: the copy being rebuilt and other caches stay."""
    world, other = ShapesWorld(8, 32, seed=1), ShapesWorld(8, 32, seed=2)
    stale = _cache(tmp_path, vit, world, shard_size=4)
    kept = _cache(tmp_path, vit, other, shard_size=4)
    ref = stale[5]["features"]
    shard = stale.path / "shard_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    snapshot = {p: p.read_bytes() for p in sorted((tmp_path / "cache").rglob("*")) if p.is_file()}
    with pytest.raises(NonFiniteFeaturesError):
        _cache(tmp_path, Poisoned(vit, index=5, value=float("nan")), world, shard_size=4)
    assert {p: p.read_bytes() for p in sorted((tmp_path / "cache").rglob("*")) if p.is_file()} == snapshot
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary or trash directory left
    rebuilt = _cache(tmp_path, vit, world, shard_size=4)
    assert rebuilt.built_now and torch.equal(rebuilt[5]["features"], ref)
    assert not list((tmp_path / "cache").glob(".*"))  # the replaced copy's trash is gone too
    assert kept.check() is None and not _cache(tmp_path, vit, other, shard_size=4).built_now


def test_build_progress_lines_in_logs_and_quiet_when_asked(tmp_path, vit, capsys):
    world = ShapesWorld(12, 32, seed=1)
    FeatureCache(tmp_path / "a", vit, world, batch_size=4, transform=v2.Resize((28, 28), antialias=True))
    out = capsys.readouterr().out  # stderr is not a terminal under pytest: lines instead of a bar
    steps = [line for line in out.splitlines() if "samples (" in line]
    assert [s.split(": ")[1].split(" samples")[0] for s in steps] == ["4/12", "8/12", "12/12"]
    assert "(100%)" in steps[-1] and "built 12 samples" in out
    FeatureCache(tmp_path / "b", vit, world, batch_size=4, progress=False, transform=v2.Resize((28, 28), antialias=True))
    out = capsys.readouterr().out
    assert "samples (" not in out and "building" in out and "built 12 samples" in out
