"""Loggers: CSV always (in the run dir); wandb when asked, offline automatically without an API key (F38).

Importing this module also silences Lightning's advertising tips (litlogger, litmodels) in the console.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_info

WANDB_MODES = ("online", "offline", "disabled")
_told_offline = False
#: loggers through which Lightning's ``rank_zero_info`` prints (lightning 2.6)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class AdvertisingFilter(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger / litmodels" messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("💡 Tip:") or ("litlogger" in message or "litmodels" in message)
                    and "pypi.org" in message)


def silence_lightning_tips() -> None:
    """Install :class:`AdvertisingFilter` once on Lightning's rank-zero loggers (and drop a deprecation
    notice Lightning 2.6 triggers inside torch's pytree on every run, which no user can act on)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    for name in RANK_ZERO_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, AdvertisingFilter) for f in log.filters):
            log.addFilter(AdvertisingFilter())


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is *now* (Lightning binds its handler at import time)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def follow_stderr() -> None:
    """Point Lightning's own console handlers at the current ``sys.stderr``.

    Lightning adds a ``StreamHandler`` bound to the ``sys.stderr`` of the moment it is first imported. When that
    is a temporary stream (a notebook cell's or a test's captured output, both closed later), every later log line
    fails with "I/O operation on closed file"; following the current stream avoids that.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler and not isinstance(handler.stream, _CurrentStderr):
                handler.setStream(_CurrentStderr())


silence_lightning_tips()
follow_stderr()


@dataclass
class WandbSpec:
    """wandb settings (``configs/logger/wandb.yaml`` sets ``trainer.wandb``).

    ``mode``: ``online`` | ``offline`` | ``disabled`` | ``None`` (= ``$WANDB_MODE`` if set, else online with an
    API key and offline without one).
    """

    project: str = "lit_experiments"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None


def wandb_api_key_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(spec: WandbSpec) -> str:
    """The mode wandb will run in; says once when it falls back to offline for lack of a key."""
    global _told_offline
    mode = spec.mode or os.environ.get("WANDB_MODE")
    if mode is not None and mode not in WANDB_MODES:
        raise ValueError(f"wandb mode {mode!r} (trainer.wandb.mode or $WANDB_MODE); expected one of {WANDB_MODES}")
    if mode is None:
        mode = "online" if wandb_api_key_present() else "offline"
        if mode == "offline" and not _told_offline:
            rank_zero_info("wandb: no API key found (WANDB_API_KEY or ~/.netrc); logging offline. "
                           "Upload later with `wandb sync <run_dir>/wandb/offline-run-*`.")
            _told_offline = True
    return mode


def make_wandb_logger(spec: WandbSpec, run_dir: Path, run_name: str) -> Logger | None:
    mode = resolve_wandb_mode(spec)
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    run_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=spec.project, entity=spec.entity, name=spec.name or run_name, group=spec.group,
                       tags=spec.tags or None, save_dir=str(run_dir), mode=mode)


def csv_logger(directory: Path) -> CSVLogger:
    """A CSV logger writing ``metrics.csv`` and ``hparams.yaml`` straight into ``directory``."""
    return CSVLogger(save_dir=str(directory), name="", version="")
