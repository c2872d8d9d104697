"""Stand-ins that learned something: a tiny model trained once, saved under a key of what made it, reused.

* :func:`cache_path` - ``<cache_dir>/<prefix>-<sha1 of the key>.pt`` (the key: config, data, training, version).
* :func:`load_or_train` - load the saved weights into the model, or train it (under
  :func:`~lit_experiments.core.seeding.isolated_rng`: the global RNGs are untouched) and save it atomically (a
  temporary file renamed into place; a failed save leaves nothing behind). Each file has a sha256 beside it
  (``<file>.sha256``); a file that does not match it or cannot be read is named with "delete it and rerun"
  (:class:`StandinCacheError`), never a pickle hint.
* :func:`fit_loop` - the one training loop of every stand-in: loss, backward, optional clipping, optimizer and
  scheduler step, progress every ``log_every`` steps, an optional callback (a learning curve).
* :func:`loss_summary` - the first / last tenth of a loss trace (at most 10 steps each) and the wall time.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import LitExpError
from .seeding import isolated_rng


class StandinCacheError(LitExpError, RuntimeError):
    """A stand-in cache file that is corrupt, truncated or not the stand-in's; the message names the file."""

    exit_code = 2


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_cached(path: Path) -> Any:
    """``torch.load`` of a stand-in cache file (weights only) after its checksum; a bad file is a
    :class:`StandinCacheError` naming it."""
    def bad(why: str) -> StandinCacheError:
        return StandinCacheError(f"stand-in cache {path} is unusable: {why}. Delete it (and {_sidecar(path).name}) "
                                 "and rerun: the stand-in is trained again and saved under the same name")

    sidecar = _sidecar(path)
    if sidecar.is_file():
        expected = sidecar.read_text().strip()
        if expected and _sha256(path) != expected:
            raise bad("its sha256 does not match the one written with it (the file was truncated or changed)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file says the same thing
        raise bad(f"it cannot be read as saved weights ({type(err).__name__})") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "info" not in blob:
        raise bad("it holds no stand-in (expected a dict with `state_dict` and `info`)")
    if not sidecar.is_file():  # a file from before checksums: its sum from now on
        sidecar.write_text(_sha256(path) + "\n")
    return blob


def cache_path(cache_dir: str | Path, prefix: str, key: dict[str, Any]) -> Path:
    """``cache_dir/<prefix>-<sha1 of json(key)>.pt`` (keys sorted, non-JSON values as ``str``).

    The torch thread count is part of every key (F50): a stand-in trained with another number of threads has
    other weights (float reductions run in another order), so it is never served for this one."""
    key = {**key, "torch_threads": torch.get_num_threads()}
    blob = json.dumps(key, sort_keys=True, default=str).encode()
    return Path(cache_dir) / f"{prefix}-{hashlib.sha1(blob).hexdigest()[:16]}.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` into a temporary file of ``path``'s folder, then renamed to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        _sidecar(path).write_text(_sha256(Path(tmp)) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_or_train(path: Path, model: torch.nn.Module, train: Callable[[], dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load ``path``'s weights into ``model`` (``info`` with ``cached: True``), or run ``train()`` (which trains
    ``model`` in place and returns its info), add ``extra`` to the info and save both atomically
    (``cached: False``). ``path`` is in the returned info."""
    if path.is_file():
        blob = read_cached(path)
        try:
            model.load_state_dict(blob["state_dict"])
        except RuntimeError as err:
            raise StandinCacheError(f"stand-in cache {path} does not fit this stand-in ({str(err).splitlines()[0]}); "
                                    "delete it and rerun") from None
        return {**blob["info"], "cached": True, "path": str(path)}
    with isolated_rng():
        info = train()
    info.update(extra or {})
    atomic_save({"state_dict": model.state_dict(), "info": info}, path)
    return {**info, "cached": False, "path": str(path)}


def loss_summary(losses: Sequence[float], started: float, steps: int) -> dict[str, Any]:
    """``loss_first`` / ``loss_last`` (means of the first / last tenth, at most 10 steps), ``train_seconds``
    since ``started`` (a ``time.perf_counter()`` value) and ``steps``."""
    k = max(1, min(10, steps // 10))
    return {"loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
            "train_seconds": time.perf_counter() - started, "steps": steps}


def info_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a stand-in part records about its training (results.json): cache ``path``, whether it was ``cached``,
    ``loss_first`` / ``loss_last``, ``train_seconds`` and the ``training`` arguments."""
    return {k: info[k] for k in ("path", "cached", "loss_first", "loss_last", "train_seconds", "training")
            if k in info}


def log_progress(tag: str, step: int, steps: int, losses: Sequence[float], every: int, started: float) -> None:
    """Print ``[tag] step s/N loss L (Ts)`` every ``every`` steps and at the last one (``step`` counts from 0)."""
    if (step + 1) % every == 0 or step + 1 == steps:
        print(f"[{tag}] step {step + 1}/{steps} loss {np.mean(losses[-every:]):.3f} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)


def fit_loop(tag: str, steps: int, step_loss: Callable[[int], torch.Tensor], optimizer: torch.optim.Optimizer,
             scheduler: Any = None, log_every: int = 100, clip: tuple[Iterable[torch.nn.Parameter], float] | None = None,
             callback: Callable[[int], None] | None = None, every: int = 0) -> dict[str, Any]:
    """Train a stand-in for ``steps`` steps; ``step_loss(step)`` draws that step's batch and returns its loss.

    Each step: ``zero_grad``, ``backward``, gradient-norm clipping when ``clip = (params, max_norm)``, the
    optimizer step, then the scheduler step. Prints ``[tag] step s/N loss L (Ts)`` every ``log_every`` steps and
    calls ``callback(steps_done)`` every ``every`` steps (``0``: never). Returns :func:`loss_summary`."""
    losses: list[float] = []
    started = time.perf_counter()
    clip_params = list(clip[0]) if clip is not None else None
    for step in range(steps):
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_params is not None:
            torch.nn.utils.clip_grad_norm_(clip_params, clip[1])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
        log_progress(tag, step, steps, losses, log_every, started)
        if callback is not None and every > 0 and (step + 1) % every == 0:
            callback(step + 1)
    return loss_summary(losses, started, steps)
