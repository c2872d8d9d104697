"""Honest numbers for the retrieval study (issue 22): leak-free temporal positives and splits on a frames folder
(F47), floors and references beside the headline (F49), seeds that follow ``seed_everything`` (F50)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from lit_experiments.core.curriculum import apply_data_overrides
from lit_experiments.core.results import check_floors
from lit_experiments.core.seeding import RUN_SEED_ENV
from lit_experiments.core.specs import StageSpec
from lit_experiments.core.splits import SplitOverlapError
from lit_experiments.data.tools import write_shapes
from lit_experiments.metrics import expected_random_ap
from lit_experiments.studies.retrieval import evaluation
from lit_experiments.studies.retrieval.datamodule import RetrievalDataModule, RetrievalPositives, _collate
from lit_experiments.studies.retrieval.parts import TimmBackbone
from lit_experiments.studies.retrieval.sampler import MPerClassBatches, MPerClassBatchSampler
from lit_experiments.studies.retrieval.sources import VideoFrameFolder

from .helpers import results, run_curriculum, tiny_overlay
from .test_datamodule import fake_trainer, shapes_dm


def frames_dm(tmp: Path, **source) -> RetrievalDataModule:
    """A frames folder written by the product's writer (`lit-exp data shapes --format frames`): 10 videos of 5
    frames named <video>_<t>.png; 5 frames and groups of 4 make blocks that would straddle videos in file order."""
    root = tmp / "frames"
    if not root.is_dir():
        write_shapes(root, "frames", n=10, image_size=16, num_frames=5, max_objects=1, motion_blur=True, queries=0)
    folder = VideoFrameFolder(**{"root": str(root), "val_fraction": 0.2, "test_fraction": 0.2, **source})
    return RetrievalDataModule(source=folder, cache_dir=str(tmp / "cache"), batch_size=8,
                               positives=RetrievalPositives(use_labels=False, temporal_window=2),
                               sampler=MPerClassBatches(m=4))


def video_of(frame_name: str) -> str:
    return frame_name.rsplit("_", 1)[0]  # the writer names frames <video>_<t>.png


# ------------------------------------------------------------------------------------------------ F47
def test_f47_retrieval_temporal_positives_within_video(tmp_path):
    dm = frames_dm(tmp_path)
    dm.setup("fit")
    train = dm.frames("train")
    names = [train.frame_name(i) for i in range(len(train))]
    videos = [video_of(n) for n in names]
    # every frame of the training split as one batch: positives only inside a video, and present there
    dm.trainer = fake_trainer(training=True)
    batch = dm.on_after_batch_transfer(_collate([train[i] for i in range(len(train))]), 0)
    pos = batch["pos_mask"].clone()
    pos.fill_diagonal_(False)
    crossing = [(names[i], names[j]) for i, j in pos.nonzero().tolist() if videos[i] != videos[j]]
    assert not crossing, crossing[:3]
    t = [int(n.rsplit("_", 1)[1].split(".")[0]) for n in names]
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j and videos[i] == videos[j]:
                assert bool(pos[i, j]) == (abs(t[i] - t[j]) <= 2), (names[i], names[j])
    # the m-per-class sampler's groups (blocks of m frames) never straddle two videos either
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, MPerClassBatchSampler)
    for b in loader:
        for k in range(0, len(b["frame"]), 4):
            assert len({video_of(n) for n in b["frame"][k:k + 4]}) == 1, b["frame"]
    # whole videos per split, validation and test disjoint by video, the record kept for results.json
    split_videos = {s: {video_of(dm.frames(s).frame_name(i)) for i in range(len(dm.frames(s)))}
                    for s in ("train", "val", "test")}
    assert split_videos["val"] and split_videos["test"]
    assert not (split_videos["train"] & split_videos["val"]) and not (split_videos["train"] & split_videos["test"])
    assert not (split_videos["val"] & split_videos["test"])
    assert dm.split_info["overlap"] == 0 and dm.split_info["tuned_on_test"] is False
    assert (dm.split_info["n_validation"], dm.split_info["n_test"]) == (2, 2)
    # the test split knows its videos, so the *_xclip numbers work on a frames folder
    test = dm.frames("test")
    groups = evaluation.video_groups(dm, torch.arange(len(test)))
    assert groups is not None and len(torch.unique(groups)) == 2
    assert [video_of(test.frame_name(i)) for i in range(len(test))] == [test.videos[g] for g in groups.tolist()]


def test_f47_retrieval_val_test_overlap_is_refused(tmp_path):
    dm = frames_dm(tmp_path, val_videos=["000007", "000008"], test_videos=["000008", "000009"])
    with pytest.raises(SplitOverlapError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "validation videos" in msg and "test videos" in msg and "000008" in msg
    dm = frames_dm(tmp_path, val_videos=["000007", "000008"], test_videos=["000008", "000009"],
                   allow_val_test_overlap=True)
    dm.setup("fit")
    assert dm.split_info["tuned_on_test"] is True and dm.split_info["overlap"] == 1
    dm = frames_dm(tmp_path, val_videos=["000003"], test_videos=["000042"])
    with pytest.raises(Exception, match="000042"):
        dm.setup("fit")


def test_frames_folder_without_video_ids_is_an_error_naming_the_file(tmp_path):
    root = tmp_path / "frames"
    write_shapes(root, "frames", n=2, image_size=16, num_frames=3, max_objects=1, queries=0)
    lines = (root / "labels.csv").read_text().splitlines()
    for p in (root / "frames").iterdir():
        p.rename(p.with_name(p.name.replace("_", "x")))
    (root / "labels.csv").write_text("\n".join([lines[0]] + [ln.replace("_", "x", 1) for ln in lines[1:]]) + "\n")
    with pytest.raises(Exception, match="no video id"):
        RetrievalDataModule(source=VideoFrameFolder(root=str(root))).setup("fit")


def test_stage_override_selects_the_m_per_class_sampler():
    """A curriculum stage's ``data: {sampler: ...}`` must give the FastAP stage m-per-class batches (it once set an
    attribute the loader never read, and FastAP trained on shuffled frames)."""
    dm = shapes_dm(sampler=None, positives=RetrievalPositives(use_labels=False), batch_size=16)
    apply_data_overrides(dm, StageSpec(name="fastap", max_epochs=1, data={"sampler": MPerClassBatches(m=4)}))
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, MPerClassBatchSampler)
    for b in loader:
        assert sorted(torch.unique(b["clip"], return_counts=True)[1].tolist()) == [4, 4, 4, 4]


# ------------------------------------------------------------------------------------------------ F49
def exact_expected_ap(r: int, n: int) -> float:
    """E[AP] of a random ranking by the distribution of the k-th positive's rank (hypergeometric)."""
    total = math.comb(n, r)
    return sum(math.comb(rank - 1, k - 1) * math.comb(n - rank, r - k) / total * k / rank
               for k in range(1, r + 1) for rank in range(k, n - r + k + 1)) / r


def test_random_ranking_ap_closed_form_equals_brute_force():
    for n in range(1, 8):  # every placement of the positives, AP by sklearn
        for r in range(1, n + 1):
            aps = []
            for pos in __import__("itertools").combinations(range(n), r):
                y = np.zeros(n)
                y[list(pos)] = 1
                aps.append(average_precision_score(y, -np.arange(n)))
            assert float(expected_random_ap(torch.tensor([r]), torch.tensor([n]))) == pytest.approx(np.mean(aps),
                                                                                                    abs=1e-12)
    rs, ns = torch.tensor([1, 3, 16, 40]), torch.tensor([31, 31, 31, 79])
    assert expected_random_ap(rs, ns).tolist() == pytest.approx([exact_expected_ap(int(r), int(n)) for r, n in
                                                                 zip(rs, ns)], abs=1e-12)
    # the study's map_random on labelled frames against a permutation simulation (random rankings, sklearn AP)
    labels = torch.tensor([0] * 7 + [1] * 4 + [2] * 1)
    z = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    res = evaluation.retrieval_numbers(z, z, labels, [1])
    rng = np.random.default_rng(0)
    sims = np.zeros(20000)
    for q in range(12):
        y = np.delete((labels == labels[q]).numpy(), q)
        if not y.any():
            continue
        ranked = y[np.argsort(rng.random((len(sims), 11)), axis=1)]  # a random ranking per simulation
        hits = np.cumsum(ranked, axis=1)
        sims += (ranked * hits / np.arange(1, 12)).sum(1) / y.sum() / 11  # AP / (11 queries with a positive)
    assert res["map_random"] == pytest.approx(sims.mean(), abs=4 * sims.std() / math.sqrt(len(sims)))
    assert abs(res["map_random"] - res["map_chance"]) > 8 * sims.std() / math.sqrt(len(sims))  # another number
    assert res["map_random"] > res["map_chance"]  # above the positive rate


@pytest.fixture(scope="module")
def tested_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("honest")
    overlay = tiny_overlay(tmp, steps=3, limit_val_batches=0, enable_model_summary=False)
    overlay["test_after"] = True
    return run_curriculum(tmp, overlay)


def test_f49_retrieval_headline_has_floors(tested_run):
    res = results(tested_run)
    assert res["status"] == "done"
    assert set(res["headline"]) == {"test/map", "test/map_xclip"}
    assert check_floors(res) == []
    per_item = json.loads((tested_run / "per_item" / "retrieval.json").read_text())
    labels, videos = per_item["meta"]["labels"], per_item["meta"]["videos"]
    for metric, suffix in (("test/map", ""), ("test/map_xclip", "_xclip")):
        rows = {r["name"]: r for r in res["references"][metric]}
        kinds = {name: rows[name]["kind"] for name in rows}
        assert kinds == {"random ranking": "floor", "random-init backbone": "floor", "SimSiam embedding":
                         "reference", "backbone features": "reference", "linear probe": "reference"}, kinds
        for name, key in (("random-init backbone", "map_init"), ("SimSiam embedding", "map_simsiam"),
                          ("backbone features", "map_backbone"), ("linear probe", "map_probe")):
            assert rows[name]["value"] == pytest.approx(res["test"][f"test/{key}{suffix}"], abs=1e-6)
            assert np.nanmean(per_item["scores"][f"test/{key}{suffix}"]) == pytest.approx(rows[name]["value"],
                                                                                          abs=1e-5)
        # the random-ranking floor: exact expectation on the same queries (own frame, and own video for xclip,
        # left out of the gallery)
        expect = []
        for q in range(len(labels)):
            gallery = [j for j in range(len(labels)) if j != q and (not suffix or videos[j] != videos[q])]
            r = sum(labels[j] == labels[q] for j in gallery)
            if r:
                expect.append(exact_expected_ap(r, len(gallery)))
        assert rows["random ranking"]["value"] == pytest.approx(float(np.mean(expect)), abs=1e-9)
        assert np.nanmean(per_item["scores"][metric]) == pytest.approx(res["headline"][metric], abs=1e-5)
    # SimSiam's embedding and the backbone's features are different keys with different values
    assert per_item["scores"]["test/map_simsiam"] != per_item["scores"]["test/map_backbone"]
    assert len(per_item["ids"]) == len(labels) == res["test"]["test/n_queries"]


def test_simsiams_embedding_is_the_projector_as_the_simsiam_stage_left_it(tested_run):
    def state(stage: str) -> dict:
        ckpt = next(tested_run.glob(f"stages/*{stage}/final.ckpt"))
        return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    simsiam, fastap = state("simsiam"), state("fastap")
    keys = [k for k in simsiam if k.startswith("projector.")]
    assert keys
    for k in keys:
        assert torch.equal(fastap["simsiam_projector.part." + k.removeprefix("projector.")], simsiam[k]), k
    assert bool(fastap["simsiam_projector.taken"])
    assert any(not torch.equal(fastap[k], simsiam[k]) for k in keys if simsiam[k].is_floating_point())


# ------------------------------------------------------------------------------------------------ F50
def seeded(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """What a run's start leaves in the environment after seed_everything(seed)."""
    monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
    monkeypatch.setenv(RUN_SEED_ENV, str(seed))


def test_f50_retrieval_sampler_and_init_follow_seed_everything(monkeypatch):
    def batches(seed: int, pinned: int | None = None) -> list[list[int]]:
        seeded(monkeypatch, seed)
        dm = shapes_dm(sampler=MPerClassBatches(m=4, seed=pinned), positives=RetrievalPositives(use_labels=False),
                       batch_size=16)
        return [b["index"].tolist() for b in dm.train_dataloader()]

    assert batches(0) == batches(0)
    assert batches(0) != batches(1)
    assert batches(0, pinned=5) == batches(1, pinned=5)  # pinned in the YAML

    def weights(seed: int, **kw) -> torch.Tensor:
        seeded(monkeypatch, seed)
        net = TimmBackbone("resnet18", model_kwargs={"channels": [4, 8, 8, 8]}, **kw)
        return torch.cat([p.flatten() for p in net.parameters()])

    assert torch.equal(weights(0), weights(0)) and not torch.equal(weights(0), weights(1))
    assert torch.equal(weights(0, init_seed=3), weights(1, init_seed=3))
