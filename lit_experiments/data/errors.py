"""Errors and bad-sample handling shared by the real-format readers.

* :class:`DataLayoutError` (a ``FileNotFoundError``): a path is missing; the message names it and shows
  the layout the reader expects.
* :class:`LabelError` (a ``ValueError``): a label outside the class list; the message names the file and
  the line (or record).
* :class:`BadSamples`: the ``on_bad_sample: "skip" | "error"`` policy for unreadable or truncated files.
  Skips are counted (``.skipped``), listed (``.skipped_files``) and reported with a warning when the
  scan ends, never silently.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import LitExpError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class DataLayoutError(LitExpError, FileNotFoundError):
    """A required file or folder is missing (the CLI prints the message as one block)."""


class LabelError(LitExpError, ValueError):
    """A label is not in the class list."""


class BadSampleError(LitExpError, OSError):
    """A sample file could not be read (on_bad_sample='error'); one block naming the file, no traceback."""


def require(path: str | os.PathLike, what: str, layout: str, is_dir: bool | None = None) -> Path:
    """Return ``Path(path)`` or raise :class:`DataLayoutError` naming it and showing ``layout``."""
    p = Path(path)
    ok = p.is_dir() if is_dir is True else p.is_file() if is_dir is False else p.exists()
    if not ok:
        kind = "folder" if is_dir else "file" if is_dir is False else "path"
        raise DataLayoutError(f"{what}: {kind} not found: {p}\nexpected layout:\n{layout.rstrip()}")
    return p


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image fully -> uint8 (H, W, 3) RGB. Raises :class:`BadSampleError` when unreadable/truncated."""
    try:
        with Image.open(path) as im:
            im.load()  # full decode: truncated files fail here, not later in a worker
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad sample
        raise BadSampleError(f"unreadable image {path}: {type(e).__name__}: {e}") from e


def image_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


class BadSamples:
    """The ``on_bad_sample`` policy of one reader: ``"error"`` raises, ``"skip"`` counts and reports."""

    def __init__(self, owner: str, policy: str = "error") -> None:
        if policy not in ("skip", "error"):
            raise ValueError(f"{owner}: on_bad_sample={policy!r}; expected 'skip' or 'error'")
        self.owner, self.policy = owner, policy
        self.skipped_files: list[str] = []
        self.reasons: list[str] = []

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def bad(self, path: str | os.PathLike, err: Exception) -> None:
        """Record a bad sample (or raise under 'error')."""
        if self.policy == "error":
            raise BadSampleError(
                f"{self.owner}: {err} (set on_bad_sample='skip' to skip unreadable samples)"
            ) from err
        self.skipped_files.append(str(path))
        self.reasons.append(str(err))

    def report(self, total: int) -> None:
        """Warn once with the count and the first few skipped files (called at the end of a scan)."""
        if not self.skipped_files:
            return
        shown = "; ".join(self.reasons[:3]) + (" ..." if self.skipped > 3 else "")
        warnings.warn(f"{self.owner}: skipped {self.skipped} of {total} samples: {shown}", stacklevel=3)

    def lazy_bad(self, path: str | os.PathLike, err: Exception) -> None:
        """Record a failure found while loading (after the scan) and warn immediately."""
        self.bad(path, err)
        warnings.warn(f"{self.owner}: skipped bad sample ({self.skipped} so far): {err}", stacklevel=3)


def resize_pair(image: torch.Tensor, masks: torch.Tensor | None, size: int | None):
    """Resize an image (3,H,W) uint8 bilinearly and masks (...,H,W) nearest to ``size`` x ``size``."""
    if size is None or tuple(image.shape[-2:]) == (size, size):
        return image, masks
    img = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)[0]
    image = img.round().clamp(0, 255).to(torch.uint8)
    if masks is not None:
        m = torch.nn.functional.interpolate(masks[None].float().reshape(1, -1, *masks.shape[-2:]),
                                            size=(size, size), mode="nearest")[0]
        masks = m.reshape(*masks.shape[:-2], size, size).to(masks.dtype)
    return image, masks


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (by extension), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
