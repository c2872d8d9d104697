"""FeatureCache: hits, invalidation, corruption, random transforms, atomicity, workers, DDP-style waiting."""
import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T1
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from lit_experiments.backbones import build_backbone
from lit_experiments.data.cache import FeatureCache, RandomTransformError, find_random_transforms
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
