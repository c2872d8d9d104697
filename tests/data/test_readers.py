"""Writer / reader round trips (``lit-exp data shapes``) and bad-input handling of every reader."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_experiments.data.coco import CocoInstances, CocoMultiLabel, encode_mask
from lit_experiments.data.errors import BadSampleError, DataLayoutError, LabelError
from lit_experiments.data.frames import FrameFolder
from lit_experiments.data.movi import MoviClips
from lit_experiments.data.multilabel import MultiLabelFiles
from lit_experiments.data.shapes import ShapesWorld
from lit_experiments.data.tools import main

N, SEED, SIZE = 5, 11, 32


def _write(tmp_path, fmt, extra=()):
    out = tmp_path / fmt
    assert main(["shapes", "--out", str(out), "--format", fmt, "--n", str(N), "--seed", str(SEED),
                 "--image-size", str(SIZE), "--max-objects", "3", *extra]) == 0
    return out


def _assert_same(ref: dict, got: dict, keys):
    for k in keys:
        if isinstance(ref[k], str):
            assert ref[k] == got[k], k
        else:
            assert torch.equal(ref[k], got[k]), k


def test_movi_round_trip(tmp_path):
    out = _write(tmp_path, "movi", ["--num-frames", "4"])
    world = ShapesWorld(N, SIZE, num_frames=4, seed=SEED, max_objects=3)
    reader = MoviClips(out, max_objects=3)
    assert len(reader) == N and reader.categories == world.categories
    for i in range(N):
        _assert_same(world[i], reader[i], ["video", "instances", "category", "color", "material", "size",
                                           "num_objects", "labels", "caption", "phase"])
    assert json.loads((out / "world.json").read_text())["world"]["seed"] == SEED


def test_coco_round_trip_and_pairs(tmp_path):
    out = _write(tmp_path, "coco")
    world = ShapesWorld(N, SIZE, seed=SEED, max_objects=3)
    reader = CocoInstances(out, max_objects=3)
    assert reader.categories == list(world.categories)
    for i in range(N):
        _assert_same(world[i], reader[i], ["image", "instances", "category", "color", "material", "size",
                                           "num_objects", "labels", "caption"])
    pairs = CocoInstances(out, mode="pairs", negatives=2)
    n_pos = sum(int(world[i]["labels"].sum()) for i in range(N))
    assert len(pairs) == n_pos + 2 * N
    for j in range(len(pairs)):
        p = pairs[j]
        ref = world[int(p["image_id"]) - 1]
        c = int(p["category"])
        assert p["prompt"] == world.categories[c]
        ids = [k + 1 for k in range(int(ref["num_objects"])) if int(ref["category"][k]) == c]
        expected = torch.isin(ref["instances"], torch.tensor(ids or [-5]))
        assert torch.equal(p["mask"], expected) and bool(p["positive"]) == bool(ids)
    ml = CocoMultiLabel(out)
    _assert_same(world[2], ml[2], ["image", "labels", "caption"])


@pytest.mark.parametrize("file", ["labels.csv", "labels.jsonl"])
def test_multilabel_round_trip(tmp_path, file):
    out = _write(tmp_path, "multilabel")
    world = ShapesWorld(N, SIZE, seed=SEED, max_objects=3)
    reader = MultiLabelFiles(out, file=file)
    assert reader.classes == list(world.categories)
    for i in range(N):
        _assert_same(world[i], reader[i], ["image", "labels", "caption"])


def test_frames_round_trip_with_queries(tmp_path):
    out = _write(tmp_path, "frames", ["--num-frames", "3", "--queries", "2", "--motion-blur"])
    world = ShapesWorld(N, SIZE, num_frames=3, seed=SEED, max_objects=3, motion_blur=True)
    reader = FrameFolder(out)
    assert len(reader) == N * 3
    for j in range(len(reader)):
        ref = world[j // 3]
        assert torch.equal(reader[j]["image"], ref["video"][j % 3])
        assert int(reader[j]["label"]) == int(ref["phase"][j % 3])
    queries = FrameFolder(out, split="queries")
    qworld = ShapesWorld(2, SIZE, seed=SEED + 1, max_objects=3, motion_blur=True)
    assert len(queries) == 2 and torch.equal(queries[1]["image"], qworld[1]["image"])
    assert int(queries[1]["label"]) == int(qworld[1]["phase"])


def test_frames_video_ids_from_the_name_prefix_or_videos_csv(tmp_path):
    out = _write(tmp_path, "frames", ["--num-frames", "3", "--queries", "0"])
    reader = FrameFolder(out)  # names <clip>_<t>.png: the video is the prefix
    assert reader.video_ids == [f"{j // 3:06d}" for j in range(N * 3)]
    assert reader.positions == [j % 3 for j in range(N * 3)]
    assert reader[4]["video"] == "000001"
    from lit_experiments.data.frames import write_frames

    ims = [np.full((8, 8, 3), i, np.uint8) for i in range(4)]
    root = tmp_path / "csv"
    write_frames(root, ims, ["a", "b", "c", "d"], [0, 1, 0, 1], videos=["v1", "v1", "v2", "v2"])
    reader = FrameFolder(root)  # no prefix in the names: videos.csv says it
    assert reader.video_ids == ["v1", "v1", "v2", "v2"] and reader.positions == [0, 1, 0, 1]
    (root / "videos.csv").write_text("frame,video\na.png,v1\nb.png,v1\nc.png,v2\n")
    with pytest.raises(DataLayoutError, match="'d.png' has no video row"):
        FrameFolder(root)
    (root / "videos.csv").unlink()
    with pytest.raises(DataLayoutError, match="no video id"):
        FrameFolder(root)


def test_coco_polygon_and_uncompressed_rle(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    square = [[5, 4, 15, 4, 15, 12, 5, 12]]  # x, y pairs of a 10 x 8 rectangle
    m = np.zeros((20, 30), np.uint8)
    m[14:18, 20:26] = 1
    counts, prev, run = [], 0, 0  # uncompressed RLE, column-major
    for v in m.flatten(order="F"):
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    ann = {"images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 30}],
           "categories": [{"id": 3, "name": "box"}, {"id": 9, "name": "bar"}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": square, "iscrowd": 0},
                           {"id": 2, "image_id": 7, "category_id": 9, "iscrowd": 1,
                            "segmentation": {"size": [20, 30], "counts": counts}}]}
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps(ann))
    item = CocoInstances(tmp_path)[0]
    poly = item["instances"] == 1
    assert 70 <= int(poly.sum()) <= 110 and poly[8, 10] and not poly[2, 10]
    assert torch.equal(item["instances"] == 2, torch.from_numpy(m.astype(bool)))
    assert item["caption"] == "a box and a bar" and item["labels"].tolist() == [1.0, 1.0]
    assert encode_mask(m)["counts"]  # compressed form is JSON-ready


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make", [
    lambda p: MoviClips(p),
    lambda p: CocoInstances(p),
    lambda p: MultiLabelFiles(p),
    lambda p: FrameFolder(p),
])
def test_missing_root_names_path_and_layout(tmp_path, make):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataLayoutError) as e:
        make(missing)
    assert str(missing) in str(e.value) and "expected layout" in str(e.value)


def test_missing_annotation_file_and_frames_labels(tmp_path):
    out = _write(tmp_path, "coco")
    (out / "annotations" / "instances.json").unlink()
    with pytest.raises(DataLayoutError, match="instances.json"):
        CocoInstances(out)
    fr = _write(tmp_path, "frames", ["--num-frames", "2"])
    (fr / "labels.csv").unlink()
    with pytest.raises(DataLayoutError, match="labels.csv.*\n.*expected layout"):
        FrameFolder(fr)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_image_error_or_skip_with_report(tmp_path):
    out = _write(tmp_path, "multilabel")
    bad = out / "images" / "000002.png"
    _truncate(bad)
    with pytest.raises(BadSampleError, match="000002.png"):
        MultiLabelFiles(out)
    with pytest.warns(UserWarning, match="skipped 1 of 5"):
        reader = MultiLabelFiles(out, on_bad_sample="skip")
    assert reader.skipped == 1 and len(reader) == 4 and str(bad) in reader.bad.skipped_files


@pytest.mark.parametrize("fmt", ["coco", "frames"])
def test_truncated_image_skip_in_other_readers(tmp_path, fmt):
    out = _write(tmp_path, fmt, ["--num-frames", "2"])
    folder = out / ("images" if fmt == "coco" else "frames")
    _truncate(sorted(folder.iterdir())[1])
    cls = CocoInstances if fmt == "coco" else FrameFolder
    with pytest.raises(BadSampleError):
        cls(out)
    with pytest.warns(UserWarning, match="skipped 1"):
        reader = cls(out, on_bad_sample="skip")
    assert reader.skipped == 1 and len(reader) == (N if fmt == "coco" else 2 * N) - 1


def test_lazy_bad_sample_is_counted_and_replaced(tmp_path):
    out = _write(tmp_path, "multilabel")
    reader = MultiLabelFiles(out, on_bad_sample="skip", check_files=False)
    _truncate(out / "images" / "000001.png")
    with pytest.warns(UserWarning, match="skipped bad sample"):
        item = reader[1]
    assert reader.skipped == 1 and item["index"] == 2
    strict = MultiLabelFiles(out, check_files=False)
    with pytest.raises(BadSampleError, match="000001.png"):
        strict[1]


def test_truncated_movi_clip(tmp_path):
    out = _write(tmp_path, "movi", ["--num-frames", "2"])
    _truncate(out / "000003.npz")
    with pytest.raises(BadSampleError, match="000003.npz"):
        MoviClips(out, max_objects=3)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        reader = MoviClips(out, max_objects=3, on_bad_sample="skip")
    assert reader.skipped == 1 and len(reader) == N - 1 and any("skipped 1 of 5" in str(w.message) for w in rec)


def test_label_outside_class_list_multilabel(tmp_path):
    out = _write(tmp_path, "multilabel")
    lines = (out / "labels.csv").read_text().splitlines()
    lines[3] = "images/000002.png,circle;blob,a blob"
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelError, match=r"labels\.csv:4: label 'blob' is not in the class list"):
        MultiLabelFiles(out, file="labels.csv")
    js = (out / "labels.jsonl").read_text().splitlines()
    js[1] = json.dumps({"image": "images/000001.png", "labels": ["square", "moon"], "caption": ""})
    (out / "labels.jsonl").write_text("\n".join(js) + "\n")
    with pytest.raises(LabelError, match=r"labels\.jsonl:2: label 'moon'"):
        MultiLabelFiles(out, file="labels.jsonl")


def test_label_outside_class_list_frames_coco_movi(tmp_path):
    fr = _write(tmp_path, "frames", ["--num-frames", "2"])
    (fr / "classes.txt").write_text("moving\nstill\n")
    lines = (fr / "labels.csv").read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",jumping"
    (fr / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelError, match=r"labels\.csv:3: label 'jumping' is not in the class list"):
        FrameFolder(fr)
    co = _write(tmp_path, "coco")
    ann = json.loads((co / "annotations" / "instances.json").read_text())
    ann["annotations"][1]["category_id"] = 99
    (co / "annotations" / "instances.json").write_text(json.dumps(ann))
    with pytest.raises(LabelError, match=r"instances\.json: annotation #1 .* category_id 99"):
        CocoInstances(co)
    mv = _write(tmp_path, "movi", ["--num-frames", "2"])
    with np.load(mv / "000000.npz") as z:
        arrays = dict(z)
    arrays["instances.material"] = np.asarray(["wood"] * len(arrays["instances.material"]))
    np.savez(mv / "000000.npz", **arrays)
    with pytest.raises(LabelError, match=r"000000\.npz: instances\.material\[0\] = 'wood'"):
        MoviClips(mv, max_objects=3)


def test_movi_folder_clip_with_category_only_metadata(tmp_path):
    """MOVi-C/E style: a folder per clip, ``category`` names and no material (material stays -1)."""
    clip = tmp_path / "clips" / "clip_a"
    clip.mkdir(parents=True)
    video = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    seg = np.zeros((2, 8, 8, 1), np.uint8)
    seg[:, 1:3, 1:3] = 1
    seg[:, 5:7, 4:8] = 2
    np.save(clip / "video.npy", video)
    np.save(clip / "segmentations.npy", seg)
    (clip / "metadata.json").write_text(json.dumps({"instances": {"category": ["shoe", "toy"], "scale": [1.0, 2.0]}}))
    reader = MoviClips(tmp_path / "clips", max_objects=4)
    item = reader[0]
    assert reader.categories == ["shoe", "toy"]
    assert torch.equal(item["video"], torch.from_numpy(video).permute(0, 3, 1, 2))
    assert torch.equal(item["instances"], torch.from_numpy(seg[..., 0].astype(np.int64)))
    assert item["category"].tolist() == [0, 1, -1, -1] and item["material"].tolist() == [-1] * 4
    assert item["num_objects"] == 2 and item["caption"] == "a shoe and a toy" and "phase" not in item
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataLayoutError, match="no clips"):
        MoviClips(empty)


def test_reader_items_collate(tmp_path):
    from torch.utils.data import default_collate

    out = _write(tmp_path, "coco")
    batch = default_collate([CocoInstances(out, max_objects=3)[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, SIZE, SIZE) and batch["category"].shape == (3, 3)
    pairs = CocoInstances(out, mode="pairs", negatives=1)
    pb = default_collate([pairs[i] for i in range(4)])
    assert pb["mask"].dtype == torch.bool and len(pb["prompt"]) == 4


def test_coco_annotation_naming_an_unknown_image_is_an_error(tmp_path):
    co = _write(tmp_path, "coco")
    ann = json.loads((co / "annotations" / "instances.json").read_text())
    ann["annotations"][2]["image_id"] = 987654
    (co / "annotations" / "instances.json").write_text(json.dumps(ann))
    with pytest.raises(LabelError, match=r"instances\.json: annotation #2 .* names image_id 987654, which is not"):
        CocoInstances(co)


# ------------------------------------------------------------------ a bad file is one block (issue 25, item 4)
SLOTS_DEMO = Path(__file__).resolve().parents[2] / "configs" / "slots" / "demo.yaml"


def test_a_truncated_movi_clip_is_one_block_naming_the_file_and_the_run_records_it(tmp_path, capsys):
    """It printed three chained tracebacks (96 lines) before its good last line."""
    import json as _json

    from lit_experiments.cli import main as cli_main
    from lit_experiments.data.tools import main as data_main

    for split in ("train", "validation"):
        data_main(["shapes", "--format", "movi", "--out", str(tmp_path / "movi" / split), "--n", "6",
                   "--image-size", "32", "--num-frames", "3"])
    bad = sorted((tmp_path / "movi" / "train").glob("*.npz"))[0]
    bad.write_bytes(bad.read_bytes()[:300])
    delta = tmp_path / "movi.yaml"
    delta.write_text("data:\n  init_args:\n    source:\n"
                     "      class_path: lit_experiments.studies.slots.sources.MoviClipSplits\n"
                     f"      init_args: {{root: {tmp_path / 'movi'}, folders: {{train: train, val: train, "
                     "test: validation}, val_fraction: 0.25}\n    cache_dir: null\n"
                     "stages:\n  - {name: slots, max_steps: 2}\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli_main(["curriculum", "-c", str(SLOTS_DEMO), "-c", str(delta), f"--trainer.run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err and "direct cause" not in err
    block = [line for line in err.splitlines() if line.startswith(("lit-exp: error", "  "))]
    assert block[0].startswith("lit-exp: error: MoviClips: unreadable clip") and str(bad) in block[0]
    record = _json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and str(bad) in record["error"]


@pytest.mark.parametrize("make", [lambda: BadSampleError("x.png: truncated"),
                                  lambda: DataLayoutError("no folder r/images"),
                                  lambda: LabelError("labels.csv:3: unknown class 'kat'")])
def test_every_data_error_is_one_block_for_the_cli(make):
    from lit_experiments.core.errors import explain

    report = explain(make())
    assert report is not None and report.exit_code == 1 and len(report.render().splitlines()) <= 3
