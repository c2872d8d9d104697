"""Test-wide settings: nothing downloads, nothing reaches wandb's servers, small thread pools."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # forced, whatever the caller's environment says: tests never download
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"  # tests that need wandb set offline mode in a temp dir themselves
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("PL_DISABLE_FORK", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# one intra-op thread per xdist worker: two workers x two threads on two cores spend most of the time of the small
# convolutions in thread hand-offs (measured 5x slower); a single process keeps two threads
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolate_run_dirs(tmp_path, monkeypatch):
    """Every test runs in its own working directory so run dirs and caches never collide."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (latency numbers and float sums that do not depend on scheduling)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
