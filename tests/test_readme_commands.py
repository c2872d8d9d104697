"""Every `lit-exp ...` line in README.md's code blocks runs as written (issue 11, item 3).

Each line goes through `lit_experiments.cli.main` in order, with two kinds of change only:

* placeholders become real files: `a.yaml` / `cfg.yaml` are study configs with the stages the line names,
  `b.yaml` a small delta, `DIR` a temp dir (`MOVI_DIR`, `COCO_DIR`, ... one each, `MOVI_DIR/train` inside it), `RUN_DIR` / `runs/X/2026...` the run dir an earlier line of the same
  config wrote (for `curves`, the run that logged the metric);
* a run gets the study's tiny override (`tests/studies/<study>/tiny.py`) composed after the README's configs,
  so it takes seconds; its command-line options still apply on top.

A line that needs a GPU is parsed with `--print_config` instead when there is none (the reason is printed);
`lit-exp demo` (with or without `--seeds`), `lit-exp multilabel-demo` and `lit-exp distill-demo` (minutes, what `make demo` runs) are replaced by their `--help`.
A new README line with an unknown placeholder fails here until it is mapped.
"""

from __future__ import annotations

import importlib
import re
import shlex
import time
from pathlib import Path

import pytest
import torch
import yaml

from lit_experiments.cli import main
from lit_experiments.core.configs import load_composed

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PLACEHOLDER_CONFIGS = {"a.yaml": "configs/toy/curriculum.yaml", "cfg.yaml": "configs/satipatthana/demo.yaml"}
RUN_COMMANDS = {"fit", "curriculum", "validate", "test", "predict"}
#: commands that build the study from its configs too (they get the same tiny override)
BUILD_COMMANDS = RUN_COMMANDS | {"export", "quantize"}
#: extra options per study for a tiny run (slots configs count steps in thousands)
TINY_ARGS = {"slots": ["--trainer.max_steps=2", "--trainer.val_check_interval=1"]}


def readme_commands() -> list[str]:
    """The `lit-exp ...` lines of README.md's fenced code blocks, comments removed."""
    commands, in_block = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and line.strip().startswith("lit-exp "):
            commands.append(re.split(r"\s+#\s", line.strip(), maxsplit=1)[0].strip())
    return commands


class Session:
    """Placeholders and run dirs shared by the README's lines, in order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runs: dict[str, Path] = {}  # first config of a command -> the run dir it wrote
        self.tiny_files: dict[tuple[str, ...], Path] = {}

    def tiny(self, *configs: str) -> list[str]:
        """``-c <tiny override>`` for the study of ``configs`` (``configs/<study>/...``, all of a command's)."""
        study = Path(configs[0]).relative_to(ROOT / "configs").parts[0]
        if configs not in self.tiny_files:
            module = importlib.import_module(f"tests.studies.{study}.tiny")
            raw = load_composed(*configs)  # a delta's bases included, every -c of the line (a swapped source)
            path = self.tmp / f"tiny_{study}_{len(self.tiny_files)}.yaml"
            path.write_text(yaml.safe_dump(module.tiny(Path(configs[-1]), raw, self.tmp / f"tiny_{study}")))
            self.tiny_files[configs] = path
        return ["-c", str(self.tiny_files[configs]), *TINY_ARGS.get(study, [])]

    def run_with_metric(self, metric: str) -> Path:
        for run_dir in reversed(list(self.runs.values())):
            if any(metric in p.read_text().splitlines()[0] for p in run_dir.rglob("metrics.csv")):
                return run_dir
        config = str(ROOT / "configs" / metric.split("/")[0] / "demo.yaml")  # a study's metric: run its demo
        self.execute(["curriculum", "-c", config, *self.tiny(config)])
        return self.run_with_metric(metric)

    def concrete(self, command: str) -> tuple[list[str], str | None]:
        """The README line as arguments for ``main`` and, when changed beyond placeholders, why."""
        args = shlex.split(command)[1:]
        note = None
        if args[:1] == ["demo"]:  # also `demo --seeds ...` (`make demo-seeds`: three times as long)
            return ["demo", "--help"], "`lit-exp demo` runs every demo for minutes (`make demo`); --help instead"
        if args and args[0] in ("multilabel-demo", "distill-demo"):
            return [args[0], "--help"], "a study's demo runs for minutes (`make demo`); --help instead"
        configs = []
        for i, arg in enumerate(args):
            if i > 0 and args[i - 1] in ("-c", "--config"):
                arg = str(ROOT / PLACEHOLDER_CONFIGS.get(arg, arg)) if arg != "b.yaml" else self.delta()
                configs.append(arg)
            elif arg == "DIR":
                arg = str(self.tmp / "shapes")
            elif arg.startswith("runs/X/"):
                arg = str(self.runs[configs[0]])
            elif arg.startswith("RUN_DIR"):
                if configs:
                    arg = arg.replace("RUN_DIR", str(self.runs[configs[0]]))
                else:
                    arg = str(self.run_with_metric(args[args.index("--metric") + 1]))
            elif re.fullmatch(r"[A-Z]+_DIR(/.*)?", arg):  # a "Bring your data" folder: one temp folder per name
                head, _, rest = arg.partition("/")
                arg = str(self.tmp / head.lower() / rest)
            elif re.search(r"\b[A-Z_]{3,}\b", arg) and not arg.startswith("--"):
                pytest.fail(f"README line {command!r}: placeholder {arg!r} has no mapping in this test")
            args[i] = arg
        gpu = any("configs/trainer/gpu.yaml" in a or "configs/trainer/ddp.yaml" in a for a in args)
        if gpu and not torch.cuda.is_available():
            return [*args, "--print_config"], "needs a GPU (none here): parsed with --print_config only"
        if args and args[0] in BUILD_COMMANDS and configs and "--print_config" not in args and "--help" not in args:
            last = max(i for i, a in enumerate(args) if a in configs)
            args[last + 1:last + 1] = self.tiny(*configs)
            note = "tiny override composed after the README's configs"
        return args, note

    def delta(self) -> str:
        path = self.tmp / "b.yaml"
        path.write_text("data:\n  init_args:\n    seed: 1\n")  # same parts, so later lines can load its weights
        return str(path)

    def execute(self, args: list[str]) -> str:
        """Run ``lit-exp ARGS``; returns stdout; records the run dir a run printed."""
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args) or 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        assert code == 0, f"lit-exp {' '.join(args)} exited {code}:\n{err.getvalue()[-3000:]}"
        for line in out.getvalue().splitlines():
            if line.startswith("results.json: ") and args[0] in ("fit", "curriculum"):
                config = next(args[i + 1] for i, a in enumerate(args) if a in ("-c", "--config"))
                self.runs[config] = Path(line.split(": ", 1)[1]).resolve().parent
        return out.getvalue()


def test_readme_has_the_commands_this_test_maps():
    commands = readme_commands()
    assert len(commands) >= 10
    assert any(c.startswith("lit-exp test ") for c in commands) and any(c.startswith("lit-exp predict ")
                                                                        for c in commands)


def test_every_readme_command_runs_as_written(tmp_path):
    session = Session(tmp_path)
    for command in readme_commands():
        args, note = session.concrete(command)
        start = time.perf_counter()
        session.execute(args)
        print(f"README ok ({time.perf_counter() - start:5.1f} s): {command}" + (f"  [{note}]" if note else ""))
