"""The mutation check's catalogue stays true (issue 26): every pattern still occurs exactly once in its product file
(fast: a refactor that moves the code fails here, in `make test`), every row's lesson names tests, and the slow check
runs ``bench/mutants.py`` over the catalogue and fails on any survivor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from mutants import check_pattern, named_tests  # noqa: E402
from mutants_catalogue import MUTANTS  # noqa: E402


def test_every_catalogue_pattern_occurs_once_in_its_product_file():
    stale = [f"{m.key}: {problem}" for m in MUTANTS if not m.pending for problem in [check_pattern(m)] if problem]
    assert not stale, "bench/mutants_catalogue.py went stale (update the pattern where the code moved):\n" + \
        "\n".join(stale)


def test_catalogue_rows_are_unique_change_the_code_and_name_tests():
    keys = [m.key for m in MUTANTS]
    assert len(keys) == len(set(keys))
    rows = named_tests()
    for m in MUTANTS:
        assert m.id in rows, m.key
        if not m.pending:
            assert m.pattern != m.replacement, m.key
            assert m.file.startswith("lit_experiments/"), f"{m.key}: a mutant goes into the product code"
            assert rows[m.id], f"{m.key}: docs/lessons.md row {m.id} names no test"


@pytest.mark.slow
def test_no_catalogue_mutant_survives_its_rows_tests(tmp_path):
    out = tmp_path / "mutants.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "mutants.py"), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "SURVIVED" not in out.read_text()
