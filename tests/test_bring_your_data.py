"""README "Bring your data" runs as written for every study and every on-disk format (issue 24, item 5).

Each study's README section has a "Bring your data" subsection: the layout, the `lit-exp data shapes --format F`
lines that write a small example of it and the one command that trains the seed config on it. Here every such
block runs through :class:`tests.test_readme_commands.Session` (the same placeholder mapping: ``MOVI_DIR`` and the
like become temp folders; the study's tiny override composed after the README's configs), each run one step per
stage (``--trainer.max_steps=1``). A run must end ``done``, read its splits from the README's folder (results.json
``splits``) and train every stage for its step (a frames folder once gave a retrieval run with no training
frames: a stage of 0 steps).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.test_readme_commands import README, RUN_COMMANDS, Session

HEADING = re.compile(r"^#+\s")
FORMAT = re.compile(r"--format (\w+)")
STUDIES = ("slots", "retrieval", "multilabel", "distill", "satipatthana")
#: the formats `lit-exp data shapes` writes, each read by some study's seed config
FORMATS = {"movi", "frames", "coco", "multilabel"}


def subsections() -> dict[str, str]:
    """``{study: text}`` of the README's "### Bring your data (<study>)" subsections."""
    found, study, lines = {}, None, []
    for line in README.read_text().splitlines() + ["# end"]:
        if HEADING.match(line):
            if study:
                found[study] = "\n".join(lines)
            match = re.match(r"^###\s+Bring your data \((\w+)\)", line)
            study, lines = (match.group(1) if match else None), []
        elif study:
            lines.append(line)
    return found


def commands(text: str) -> list[str]:
    """The ``lit-exp`` lines of the fenced code blocks of ``text``."""
    out, in_block = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and line.strip().startswith("lit-exp "):
            out.append(line.strip())
    return out


def blocks() -> list[tuple[str, list[str]]]:
    """``(study, [data lines..., run line])`` per run command: the data lines written since the previous run."""
    out = []
    for study, text in subsections().items():
        pending: list[str] = []
        for command in commands(text):
            pending.append(command)
            if command.split()[1] in RUN_COMMANDS:
                out.append((study, pending))
                pending = []
        assert not pending, f"README Bring your data ({study}): data lines without a run after them: {pending}"
    return out


def test_every_study_has_its_subsection_and_every_format_a_run():
    found = subsections()
    assert sorted(found) == sorted(STUDIES), f"README Bring your data subsections: {sorted(found)}"
    assert "reads no files" in found["satipatthana"] and not commands(found["satipatthana"])
    ran = {study for study, _ in blocks()}
    assert ran == set(STUDIES) - {"satipatthana"}
    formats = {FORMAT.search(c).group(1) for _, lines in blocks() for c in lines[:-1]}
    assert formats == FORMATS, f"formats with a run: {sorted(formats)}"
    for study, lines in blocks():
        run = lines[-1]
        assert f"configs/{study}/" in run and "--data.init_args.source.init_args.root" in run, run


def _id(study: str, lines: list[str]) -> str:
    return f"{study}-" + FORMAT.search(lines[0]).group(1)


@pytest.mark.parametrize("study,lines", blocks(), ids=[_id(*b) for b in blocks()])
def test_bring_your_data_runs_as_written(study, lines, tmp_path):
    session = Session(tmp_path)
    for command in lines:
        args, _ = session.concrete(command)
        if args[0] in RUN_COMMANDS:
            args.append("--trainer.max_steps=1")
        out = session.execute(args)
    root = args[args.index("--data.init_args.source.init_args.root") + 1]
    path = Path(next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("results.json: ")))
    results = json.loads(path.read_text())
    assert results["status"] == "done", f"{lines[-1]}: status {results['status']}: {results.get('error')}"
    steps = {name: stage.get("steps", 0) for name, stage in results["stages"].items()}
    assert steps and all(n > 0 for n in steps.values()), f"{lines[-1]}: a stage trained on nothing: {steps}"
    assert root in json.dumps(results["splits"]), f"{lines[-1]}: the splits are not read from {root}: " \
                                                  f"{results['splits']}"

def test_a_label_file_in_a_subfolder_reads_its_own_images(tmp_path):
    """`--format multilabel --out DIR/test` beside `--out DIR`: test/labels.csv names test/images/000000.png, not
    the pool's image of the same name (image paths are relative to the label file, as the layout says)."""
    from lit_experiments.data.multilabel import MultiLabelFiles
    from lit_experiments.data.tools import write_shapes

    write_shapes(tmp_path, "multilabel", n=3, image_size=16)
    write_shapes(tmp_path / "test", "multilabel", n=2, seed=1, image_size=16)
    test = MultiLabelFiles(tmp_path, file="test/labels.csv")
    assert [s["path"] for s in test.samples] == [tmp_path / "test" / "images" / f"00000{i}.png" for i in range(2)]
    assert MultiLabelFiles(tmp_path).samples[0]["path"] == tmp_path / "images" / "000000.png"
