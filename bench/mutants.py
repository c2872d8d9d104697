"""Mutation check: put each known bug of ``bench/mutants_catalogue.py`` back into the product code, one at a time,
and run the tests that docs/lessons.md names for its failure mode (issue 26).

Every mutant is applied to a COPY of the repository (``/tmp/mutants/w<i>``: the tracked and untracked-not-ignored
files, ``.venv`` symlinked, ``PYTHONPATH`` pointing at the copy), never to the working tree. A mutant is *caught* when
at least one of its row's named tests fails on it and passed on the unmutated copy; *survived* otherwise. A pattern
that does not occur exactly once in its file is an error (the catalogue went stale), never a pass. Rows marked
``pending`` are printed as pending and not run.

    .venv/bin/python bench/mutants.py                 # every non-pending mutant
    .venv/bin/python bench/mutants.py --only F31,F43  # a few lesson IDs (or mutant keys)
    .venv/bin/python bench/mutants.py --jobs 2

Prints a markdown table (key, ID, file, mutant, caught by, verdict) and writes it to ``bench/out/mutants.md``; exits 1
when a mutant survived or an error occurred.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from mutants_catalogue import MUTANTS, Mutant  # noqa: E402

LESSONS = ROOT / "docs" / "lessons.md"
ROW = re.compile(r"^\|\s*(F\d{2})\s*\|(.*)\|\s*$")
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
FAILED = re.compile(r"^(?:FAILED|ERROR) (tests/[\w/]+\.py::test_\w+)", re.MULTILINE)
WORK = Path(os.environ.get("MUTANTS_DIR", "/tmp/mutants"))
TIMEOUT_S = int(os.environ.get("MUTANTS_TIMEOUT_S", "900"))
#: MUTANTS_LOCK=/tmp/train.lock makes every pytest run hold that lock (queue with the machine's trainings); the
#: runs are niced either way
LOCK = os.environ.get("MUTANTS_LOCK", "")
STOP_AT_FIRST = True


def named_tests() -> dict[str, list[str]]:
    """Lesson ID -> the ``tests/x.py::test_y`` ids its docs/lessons.md row names."""
    out: dict[str, list[str]] = {}
    for line in LESSONS.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            cells = [cell.strip() for cell in match.group(2).split("|")]
            out[match.group(1)] = [f"{path}::{name}" for path, name in TEST_REF.findall(cells[-1])]
    return out


def check_pattern(mutant: Mutant, root: Path = ROOT) -> str | None:
    """None when the pattern occurs exactly once in its file, else what is wrong (the catalogue went stale)."""
    path = root / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    count = path.read_text(encoding="utf-8").count(mutant.pattern)
    if count != 1:
        return f"pattern occurs {count} times in {mutant.file} (expected once): {mutant.pattern!r}"
    return None


def make_copy(dest: Path) -> None:
    """The working tree's tracked and untracked-not-ignored files into ``dest`` (changed ones copied, stale .py files
    deleted), ``.venv`` linked."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    files = [name for name in files if name and (ROOT / name).exists()]
    dest.mkdir(parents=True, exist_ok=True)
    for name in files:  # copy what changed (size or mtime), keep the rest
        src, dst = ROOT / name, dest / name
        if src.is_symlink() or not src.is_file():
            continue
        st = src.stat()
        if dst.is_file() and dst.stat().st_size == st.st_size and int(dst.stat().st_mtime) == int(st.st_mtime):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    # files gone from the tree: drop the stale .py files the copy still has
    wanted = set(files)
    for path in dest.rglob("*.py"):
        rel = str(path.relative_to(dest))
        if not rel.startswith(".venv") and rel not in wanted:
            path.unlink()
    venv = dest / ".venv"
    if not venv.exists():
        venv.symlink_to(ROOT / ".venv")


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{copy}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(copy)
    env["WANDB_MODE"] = "disabled"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_tests(copy: Path, tests: list[str], first: bool = False) -> tuple[set[str], str, float]:
    """Run ``tests`` in ``copy`` (slow ones included; ``first``: stop at the first failure); returns the failed ids,
    the output tail and the wall time."""
    cmd = [str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           "-m", "slow or not slow", "-rfE", "--no-header", *(["-x"] if first else []), *tests]
    if shutil.which("nice"):
        cmd = ["nice", "-n", "10", *cmd]
    if LOCK and shutil.which("flock"):
        cmd = ["flock", LOCK, *cmd]
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=TIMEOUT_S)
        out = proc.stdout + proc.stderr
        failed = set(FAILED.findall(out))
        if proc.returncode not in (0, 1):  # collection error, usage error, internal error: every test counts failed
            failed |= {f"<pytest exit {proc.returncode}>"}
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        failed = {f"<timeout {TIMEOUT_S}s>"}
    return failed, out[-3000:], time.time() - start


def check_import(copy: Path) -> None:
    code = "import lit_experiments, sys; sys.stdout.write(lit_experiments.__file__)"
    where = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], cwd="/tmp", env=env_for(copy),
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(copy)), f"the copy at {copy} imports lit_experiments from {where}"


def run_mutant(mutant: Mutant, copy: Path, tests: list[str], broken: set[str]) -> dict:
    row = {"mutant": mutant, "tests": tests, "caught_by": [], "verdict": "", "detail": "", "seconds": 0.0}
    if not tests:
        row["verdict"] = "error"
        row["detail"] = f"docs/lessons.md row {mutant.id} names no test"
        return row
    path = copy / mutant.file
    original = path.read_text(encoding="utf-8")
    stale = check_pattern(mutant, copy)
    if stale:
        row["verdict"], row["detail"] = "error", stale
        return row
    try:
        path.write_text(original.replace(mutant.pattern, mutant.replacement, 1), encoding="utf-8")
        failed, tail, seconds = run_tests(copy, tests, first=STOP_AT_FIRST)
    finally:
        path.write_text(original, encoding="utf-8")
    row["seconds"] = seconds
    row["caught_by"] = sorted(test for test in failed if test in tests and test not in broken)
    other = sorted(failed - set(tests))
    if row["caught_by"]:
        row["verdict"] = "caught"
    elif other:  # a collection error or a timeout is no catch: the mutant must be fixed in the catalogue
        row["verdict"], row["detail"] = "error", "; ".join(other) + " " + tail[-300:]
    else:
        row["verdict"] = "SURVIVED"
        row["detail"] = tail[-400:]
    return row


def table(rows: list[dict], pending: list[Mutant]) -> str:
    lines = ["| key | ID | file | mutant | caught by | verdict |", "|---|---|---|---|---|---|"]
    for row in rows:
        m = row["mutant"]
        caught = "<br>".join(t.split("::")[-1] for t in row["caught_by"]) or row["detail"].replace("\n", " ")[:200]
        lines.append(f"| {m.key} | {m.id} | `{m.file}` | {m.note} | {caught} | {row['verdict']} |")
    for m in pending:
        lines.append(f"| {m.key} | {m.id} | `{m.file}` | {m.note} | - | pending |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated lesson IDs or mutant keys")
    parser.add_argument("--jobs", type=int, default=1, help="copies run side by side (each runs its tests serially)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "mutants.md"))
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run (a test failing there then counts as catching)")
    parser.add_argument("--all-tests", action="store_true",
                        help="run every named test of a mutant (default: stop at the first that fails)")
    args = parser.parse_args(argv)
    global STOP_AT_FIRST
    STOP_AT_FIRST = not args.all_tests
    wanted = {part.strip() for part in args.only.split(",") if part.strip()}
    chosen = [m for m in MUTANTS if not wanted or m.id in wanted or m.key in wanted]
    pending = [m for m in chosen if m.pending]
    active = [m for m in chosen if not m.pending]
    keys = [m.key for m in MUTANTS]
    assert len(keys) == len(set(keys)), "mutant keys must be unique"
    rows_tests = named_tests()

    copies = [WORK / f"w{i}" for i in range(max(1, args.jobs))]
    for copy in copies:
        make_copy(copy)
    check_import(copies[0])

    broken: set[str] = set()
    if not args.no_baseline and active:
        union = sorted({t for m in active for t in rows_tests.get(m.id, [])})
        failed, tail, seconds = run_tests(copies[0], union)
        broken = failed
        print(f"baseline: {len(union)} named tests in {seconds:.0f}s, failing unmutated: {sorted(failed) or 'none'}",
              flush=True)
        if any(t.startswith("<") for t in failed):
            print(tail)
            return 2

    free: Queue = Queue()
    for copy in copies:
        free.put(copy)

    def job(mutant: Mutant) -> dict:
        copy = free.get()
        try:
            row = run_mutant(mutant, copy, rows_tests.get(mutant.id, []), broken)
        finally:
            free.put(copy)
        print(f"{mutant.key:34s} {row['verdict']:9s} {row['seconds']:6.0f}s {', '.join(row['caught_by'])[:120]}"
              f"{row['detail'][:200] if row['verdict'] == 'error' else ''}", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=len(copies)) as pool:
        rows = list(pool.map(job, active))
    text = table(rows, pending)
    if broken:
        text += "\nFailing on the unmutated copy (not counted as catching): " + ", ".join(sorted(broken)) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print()
    print(text)
    bad = [row for row in rows if row["verdict"] != "caught"]
    caught_named = sum(1 for row in rows if row["verdict"] == "caught" and set(row["caught_by"]) <= set(row["tests"]))
    print(f"{len(rows)} run: {caught_named} caught by a named test, {len(bad)} survived or error, "
          f"{len(pending)} pending")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
