"""Stand-in caches (core/standins.py): a cached stand-in is served only for what made it (F50)."""
from __future__ import annotations

import pytest
import torch

from lit_experiments.core import standins


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _train_counter(model: torch.nn.Module, trained: list[int]):
    def train() -> dict:
        trained.append(torch.get_num_threads())
        with torch.no_grad():
            model.weight.fill_(float(torch.get_num_threads()))
        return {"training": {"steps": 1}}
    return train


def test_f50_standin_thread_count_not_served(tmp_path, restore_threads):
    """A stand-in trained under one torch thread count (its float sums run in another order, so other weights) is
    not served for another: cache_path keys the thread count, load_or_train trains again; the same count loads."""
    key = {"config": {"hidden": 4}, "data": {"n": 8, "seed": 0}, "training": {"steps": 1}}
    trained: list[int] = []
    paths, infos = {}, {}
    for threads in (1, 2, 1, 2):
        torch.set_num_threads(threads)
        model = torch.nn.Linear(2, 2)
        path = standins.cache_path(tmp_path, "standin", key)
        info = standins.load_or_train(path, model, _train_counter(model, trained))
        paths.setdefault(threads, path)
        assert path == paths[threads]  # the same thread count, the same key
        infos.setdefault(threads, []).append(info["cached"])
        assert torch.all(model.weight == float(threads)), "served weights trained under another thread count"
    assert paths[1] != paths[2]
    assert trained == [1, 2] and infos == {1: [False, True], 2: [False, True]}
    # everything else in the key still counts too
    torch.set_num_threads(1)
    assert standins.cache_path(tmp_path, "standin", {**key, "data": {"n": 8, "seed": 1}}) != paths[1]


# ------------------------------------------------------------------ corruption names the file (issue 25, item 4)
@pytest.mark.parametrize("damage", ["truncate", "random", "flip"])
def test_a_corrupt_standin_cache_names_the_file_and_never_advises_unsafe_loading(tmp_path, damage):
    path = tmp_path / "standin-x.pt"
    model = torch.nn.Linear(2, 2)
    standins.load_or_train(path, model, _train_counter(model, []))
    assert (tmp_path / "standin-x.pt.sha256").is_file()
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "random":
        path.write_bytes(bytes(range(256)) * 8)
    else:  # same length, one byte changed: only the checksum sees it
        path.write_bytes(blob[:-40] + bytes([blob[-40] ^ 1]) + blob[-39:])
    with pytest.raises(standins.StandinCacheError) as err:
        standins.load_or_train(path, torch.nn.Linear(2, 2), _train_counter(model, []))
    text = str(err.value)
    assert str(path) in text and "Delete it" in text and "weights_only" not in text


def test_a_standin_cache_of_another_shape_names_the_file(tmp_path):
    path = tmp_path / "standin-y.pt"
    model = torch.nn.Linear(2, 2)
    standins.load_or_train(path, model, _train_counter(model, []))
    with pytest.raises(standins.StandinCacheError, match="does not fit this stand-in"):
        standins.load_or_train(path, torch.nn.Linear(3, 2), _train_counter(model, []))
