"""docs/lessons.md stays true: each failure mode F01-F54 has one row, the tests it names exist, every
``test_fNN_...`` regression test is listed in its row, and the enforcing files exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "lessons.md"
IDS = [f"F{i:02d}" for i in range(1, 55)]
ROW = re.compile(r"^\|\s*(F\d{2})\s*\|(.*)\|\s*$")
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
LESSON_TEST = re.compile(r"^\s*def (test_((?:f\d{2}_)+)\w*)\(", re.MULTILINE)


def rows() -> dict[str, list[str]]:
    """ID -> cells (symptom, rule, enforced in, tests); an ID seen twice keeps a list of both for the check."""
    out: dict[str, list[str]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            ident = match.group(1)
            assert ident not in out, f"{DOC.name}: {ident} has more than one row"
            out[ident] = [cell.strip() for cell in match.group(2).split("|")]
    return out


def lesson_tests() -> dict[tuple[str, str], list[str]]:
    """(file, test name) -> the IDs in its name prefix, for every ``test_fNN_...`` function under tests/."""
    found = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for match in LESSON_TEST.finditer(path.read_text(encoding="utf-8")):
            ids = [f"F{n}" for n in re.findall(r"f(\d{2})_", match.group(2))]
            found[(str(path.relative_to(ROOT)), match.group(1))] = ids
    return found


def test_every_failure_mode_has_one_row_with_four_cells():
    table = rows()
    assert sorted(table) == IDS, f"missing rows: {sorted(set(IDS) - set(table))}, extra: {sorted(set(table) - set(IDS))}"
    for ident, cells in table.items():
        assert len(cells) == 4 and all(cells), f"{ident}: expected 4 non-empty cells (symptom, rule, file, tests)"


def test_named_tests_exist_and_carry_the_rows_id():
    for ident, cells in rows().items():
        refs = TEST_REF.findall(cells[3])
        assert refs or cells[3] == "planned", f"{ident}: name a test (tests/x.py::test_...) or write 'planned'"
        for path, name in refs:
            source = ROOT / path
            assert source.is_file(), f"{ident}: {path} does not exist"
            assert re.search(rf"^\s*def {name}\(", source.read_text(encoding="utf-8"), re.MULTILINE), \
                f"{ident}: {path} has no test {name}"
            prefix = re.match(r"test_((?:f\d{2}_)+)", name)
            if prefix:
                assert ident.lower() in prefix.group(1), f"{ident}: lists {name}, which belongs to another row"


def test_every_lesson_test_in_tests_is_listed_in_its_row():
    table = rows()
    missing = [f"{ident}: {path}::{name}" for (path, name), ids in lesson_tests().items() for ident in ids
               if f"{path}::{name}" not in table.get(ident, ["", "", "", ""])[3]]
    assert not missing, "add these tests to their rows of docs/lessons.md:\n" + "\n".join(missing)


def test_enforcing_files_exist():
    for ident, cells in rows().items():
        files = re.findall(r"`([\w/.]+\.py)`", cells[2])
        assert files or cells[2] == "planned", f"{ident}: name the enforcing file(s) in backticks or write 'planned'"
        for name in files:
            assert (ROOT / name).is_file(), f"{ident}: enforcing file {name} does not exist"
