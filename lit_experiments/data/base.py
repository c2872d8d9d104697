"""Base class of the file readers: sample scan with the ``on_bad_sample`` policy, lazy fallback, fingerprint."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .errors import BadSampleError, BadSamples


class FileDataset(Dataset):
    """A dataset over a list of sample records, each with a ``path``.

    Subclasses fill ``self.samples`` and implement :meth:`_check` (cheap validity test, raises
    :class:`BadSampleError`) and :meth:`_load` (the item dict). With ``check_files=True`` every sample is
    checked once at construction: bad ones are dropped (``skip``) or raise (``error``); the number skipped
    is in ``.skipped`` and a warning lists them at the end of the scan. Samples that turn out bad only
    when loaded (``check_files=False`` or a file changed later) are counted and warned about too, and the
    next good sample is returned in their place.
    """

    samples: list[Any]

    def _init_policy(self, on_bad_sample: str) -> None:
        self.bad = BadSamples(type(self).__name__, on_bad_sample)

    def _scan(self, check_files: bool) -> None:
        if not check_files:
            return
        good = []
        for s in self.samples:
            try:
                self._check(s)
                good.append(s)
            except BadSampleError as e:
                self.bad.bad(self._path(s), e)
        total = len(self.samples)
        self.samples = good
        self.bad.report(total)

    @property
    def skipped(self) -> int:
        """Number of samples skipped as unreadable (scan plus lazy failures)."""
        return self.bad.skipped

    def _path(self, sample: Any) -> Path:
        return Path(sample["path"] if isinstance(sample, dict) else sample)

    def _check(self, sample: Any) -> None:
        raise NotImplementedError

    def _load(self, index: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        n = len(self.samples)
        if n == 0:
            raise IndexError(f"{type(self).__name__} is empty")
        index = int(index) % n
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                item = self._load(j)
                item.setdefault("index", j)
                return item
            except BadSampleError as e:
                self.bad.lazy_bad(self._path(self.samples[j]), e)
        raise BadSampleError(f"{type(self).__name__}: no readable sample left")

    def fingerprint(self) -> str:
        """Hash of the sample files (path, size, mtime) and the reader's settings."""
        h = hashlib.sha1(type(self).__name__.encode())
        h.update(repr(self.settings()).encode())
        for s in self.samples:
            p = self._path(s)
            st = p.stat() if p.exists() else None
            h.update(f"{p}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}".encode())
        return f"{type(self).__name__}-{h.hexdigest()[:16]}"

    def settings(self) -> dict:
        """Reader settings that change the items (part of the fingerprint)."""
        return {}
