"""Fault cases of issue 25, before and after: each case run as a new user would, through ``lit-exp`` (issue 25).

Every case of the issue's "What was found" list is a row of :data:`CASES`: the issue's "before" text, a setup that
writes files or runs a tiny run into the case's own folder (toy config, tiny data, one epoch; a trained toy run,
sweep, cv, multilabel and distill run are built once and copied where a case changes them), the command (a
subprocess of ``<repo>/.venv/bin/lit-exp`` with ``HF_HUB_OFFLINE=1 WANDB_MODE=disabled``; Ctrl-C is a SIGINT to
the command's process group once its first run trains) and a check that reads the files on disk and the output
and says whether data was lost or misstated (sweep.json states equal each run's results.json status, nothing
written before the error is gone, a failure leaves results.json with status and error, an error names the file).

    .venv/bin/python bench/faults.py                          # every case, with this repo's .venv/bin/lit-exp
    .venv/bin/python bench/faults.py --repo /tmp/fresh_clone  # a fresh clone's lit-exp (after its `make venv`)
    .venv/bin/python bench/faults.py --only sweep-ctrl-c,report-metric-typo

Per case: exit code, output lines (stdout + stderr), first line, whether a Python traceback appears, data lost or
misstated (with why). Prints a progress line per case, writes ``bench/out/faults.md`` (markdown table) and
``bench/out/faults.json``; exits 1 when a case shows a traceback or lost / misstated data.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TRACEBACK = "Traceback (most recent call last)"
TIMEOUT_S = int(os.environ.get("FAULTS_TIMEOUT_S", "600"))

# ------------------------------------------------------------------ tiny overrides (files written per session)
TINY_TOY = "data: {init_args: {n_train: 32, n_val: 16, n_test: 16, batch_size: 8}}\n"
#: a toy run long enough to be interrupted while it trains (the sweep's Ctrl-C case)
LONG_TOY = "data: {init_args: {n_train: 20000, n_val: 64, n_test: 64, batch_size: 32}}\n"
#: a sweep that is still running while a second one starts on its folder
MID_TOY = "data: {init_args: {n_train: 3000, n_val: 64, n_test: 64, batch_size: 32}}\n"
#: the multilabel seed with randomly initialised tiny SigLIP2 towers (tests/studies/multilabel/tiny.py), one step
MULTILABEL_TINY = """\
data:
  init_args:
    frozen:
      class_path: lit_experiments.studies.multilabel.towers.Siglip2Towers
      init_args:
        checkpoint: null
        text_mask_policy: pad_to_max
        config:
          text_config: {{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2, num_hidden_layers: 1,
                        vocab_size: 26, max_position_embeddings: 16, projection_size: 16, pad_token_id: 0,
                        eos_token_id: 1, bos_token_id: 2}}
          vision_config: {{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2, num_hidden_layers: 1,
                          patch_size: 8, num_patches: 4}}
    batch_size: 16
    eval_batch_size: 16
    num_workers: 0
    cache_dir: {cache}
trainer: {{accelerator: cpu, precision: 32-true, enable_progress_bar: false, log_every_n_steps: 1, max_steps: 1}}
"""
#: the distill demo (its stand-in teacher trained for 2 steps) at tiny sizes, one step per stage
DISTILL_TINY = """\
model:
  init_args:
    probe_images: 4
    student:
      init_args:
        dim: 16
        image_encoder: {{init_args: {{pretrained: false, image_size: 32}}}}
        text_encoder: {{init_args: {{pretrained: null, width: 16, layers: 2, heads: 2}}}}
        decoder: {{init_args: {{num_queries: 2, layers: 1, heads: 2}}}}
data:
  init_args:
    source:
      init_args:
        n_train: 8
        n_val: 4
        n_test: 4
        world: {{image_size: 32}}
        clips: {{n_train: 4, n_val: 2, n_test: 2, num_frames: 2}}
    frozen:
      init_args: {{steps: 2, batch_size: 4, cache_dir: {cache}, evaluate_on_build: false}}
    batch_size: 4
    eval_batch_size: 4
    cache_dir: {cache}
trainer: {{log_every_n_steps: 1, max_steps: 1}}
"""


# ------------------------------------------------------------------ running lit-exp
@dataclass
class Outcome:
    code: int | None
    out: str  # stdout
    err: str  # stderr
    lines: list[str]  # stdout and stderr lines in the order they arrived
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _pump(stream: Any, name: str, sink: list[tuple[str, str]], lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        with lock:
            sink.append((name, raw.decode(errors="replace").rstrip("\n")))
    stream.close()


class Ctx:
    """One session: the repo whose ``lit-exp`` runs, a shared folder of fixtures built once, a folder per case."""

    def __init__(self, repo: Path, work: Path, inprocess: bool = False) -> None:
        self.repo, self.work, self.inprocess = repo.resolve(), work, inprocess
        self.exe = self.repo / ".venv" / "bin" / "lit-exp"
        self.shared = work / "_shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        self._fixtures: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        for name, text in (("tiny.yaml", TINY_TOY), ("long.yaml", LONG_TOY), ("mid.yaml", MID_TOY)):
            (self.shared / name).write_text(text)

    # paths of the repo under test
    def config(self, rel: str) -> str:
        return str(self.repo / "configs" / rel)

    @property
    def tiny(self) -> str:
        return str(self.shared / "tiny.yaml")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_EXP_", "PL_", "WANDB_"))}
        env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        env.pop("PYTHONPATH", None)
        env.update(extra or {})
        return env

    def lit(self, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            interrupt: Callable[[], bool] | None = None, delay_s: float = 0.0,
            program: list[str] | None = None) -> Outcome:
        """``lit-exp ARGS`` (or ``program ARGS``) in ``cwd``; SIGINT to its process group once ``interrupt()``."""
        cwd = cwd or self.work
        if self.inprocess and program is None:
            return self._lit_inprocess(args, cwd)
        argv = (program or [str(self.exe)]) + [str(a) for a in args]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=self.env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        sink: list[tuple[str, str]] = []
        lock = threading.Lock()
        pumps = [threading.Thread(target=_pump, args=(s, n, sink, lock), daemon=True)
                 for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for t in pumps:
            t.start()
        sent = False
        while proc.poll() is None:
            if time.perf_counter() - start > TIMEOUT_S:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if interrupt is not None and not sent and interrupt():
                time.sleep(delay_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                sent = True
            time.sleep(0.05)
        proc.wait()
        for t in pumps:
            t.join()
        return Outcome(proc.returncode, "\n".join(t for n, t in sink if n == "out"),
                       "\n".join(t for n, t in sink if n == "err"), [t for _, t in sink],
                       round(time.perf_counter() - start, 2), sent)

    def _lit_inprocess(self, args: list[str], cwd: Path) -> Outcome:
        """The same command through ``lit_experiments.cli.main`` in this process (the catalogue's test: product code
        monkeypatched there reaches the run)."""
        import traceback

        from lit_experiments.cli import main

        out, err = io.StringIO(), io.StringIO()
        old = Path.cwd()
        start = time.perf_counter()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    result = main([str(a) for a in args])
                    code = result if isinstance(result, int) else 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                except Exception:  # noqa: BLE001 - what a console script would print
                    traceback.print_exc()
                    code = 1
        finally:
            os.chdir(old)
        lines = out.getvalue().splitlines() + err.getvalue().splitlines()
        return Outcome(code, out.getvalue(), err.getvalue(), lines, round(time.perf_counter() - start, 2))

    def must(self, args: list[str], **kw: Any) -> Outcome:
        """A setup step: it has to succeed."""
        res = self.lit(args, **kw)
        if res.code != 0:
            raise RuntimeError(f"setup step failed ({res.code}): lit-exp {shlex.join(map(str, args))}\n"
                               + "\n".join(res.lines[-15:]))
        return res

    def fixture(self, name: str) -> Any:
        """A fixture built once per session (``FIXTURES[name](ctx)``), read-only for cases: copy before changing."""
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._fixtures:
                self._fixtures[name] = FIXTURES[name](self)
            return self._fixtures[name]


# ------------------------------------------------------------------ fixtures (built once, copied by cases)
#: the shared sweep: grid hidden=8,16 x these seeds (the catalogue's test shrinks it)
SWEEP_SEEDS = "0,1"


def sweep_args(ctx: Ctx, out: Path, grid: str = "model.init_args.hidden=8,16", seeds: str | None = None,
               extra: list[str] | None = None, data: str | None = None) -> list[str]:
    return ["sweep", "-c", ctx.config("toy/curriculum.yaml"), "-c", data or ctx.tiny, "--grid", grid,
            "--seeds", seeds or SWEEP_SEEDS, "--trainer.max_epochs", "1", "--out", str(out), *(extra or [])]


def cv_args(ctx: Ctx, out: Path, extra: list[str] | None = None) -> list[str]:
    return ["cv", "-c", ctx.config("toy/fit.yaml"), "-c", ctx.tiny, "--trainer.max_epochs", "1", "--folds", "2",
            "--grid", "data.init_args.batch_size=8,16", "--out", str(out), *(extra or [])]


def fx_sweep(ctx: Ctx) -> dict[str, Any]:
    out = ctx.shared / "sweep"
    ctx.must(sweep_args(ctx, out))
    return {"dir": out, "args": lambda o: sweep_args(ctx, o)}


def fx_cv(ctx: Ctx) -> dict[str, Any]:
    out = ctx.shared / "cv"
    ctx.must(cv_args(ctx, out, ["--test", "best"]))
    return {"dir": out, "args": lambda o: cv_args(ctx, o, ["--test", "best"])}


def fx_fit(ctx: Ctx) -> dict[str, Path]:
    run = ctx.shared / "fit"
    ctx.must(["fit", "-c", ctx.config("toy/fit.yaml"), "-c", ctx.tiny, "--trainer.max_epochs", "1",
              "--trainer.run_dir", str(run)])
    (ckpt,) = sorted((run / "checkpoints").glob("*.ckpt"))
    return {"dir": run, "config": run / "config.yaml", "ckpt": ckpt}


def fx_multilabel_data(ctx: Ctx) -> dict[str, Path]:
    """A labels.csv folder with a test folder (ShapesWorld), and the tiny towers override."""
    root = ctx.shared / "ml_labels"
    ctx.must(["data", "shapes", "--format", "multilabel", "--out", str(root), "--n", "12", "--image-size", "16",
              "--max-objects", "2"])
    ctx.must(["data", "shapes", "--format", "multilabel", "--out", str(root / "test"), "--n", "4", "--seed", "4",
              "--image-size", "16", "--max-objects", "2"])
    tiny = ctx.shared / "multilabel_tiny.yaml"
    tiny.write_text(MULTILABEL_TINY.format(cache=ctx.shared / "ml_cache"))
    return {"root": root, "tiny": tiny}


def multilabel_args(ctx: Ctx, tiny: Path, root: Path, run: Path, files: bool = True) -> list[str]:
    delta = "your_data_files.yaml" if files else "your_data.yaml"
    return ["fit", "-c", ctx.config("multilabel/seed_siglip2.yaml"), "-c", ctx.config(f"multilabel/{delta}"),
            "-c", str(tiny), "--data.init_args.source.init_args.root", str(root), "--trainer.run_dir", str(run)]


def fx_multilabel_run(ctx: Ctx) -> dict[str, Path]:
    data = ctx.fixture("multilabel_data")
    run = ctx.shared / "ml_run"
    ctx.must(multilabel_args(ctx, data["tiny"], data["root"], run))
    return {"dir": run}


def distill_args(ctx: Ctx, tiny: Path, run: Path) -> list[str]:
    return ["curriculum", "-c", ctx.config("distill/demo.yaml"), "-c", str(tiny), "--trainer.run_dir", str(run)]


def write_distill_tiny(path: Path, cache: Path) -> Path:
    path.write_text(DISTILL_TINY.format(cache=cache))
    return path


def fx_distill(ctx: Ctx) -> dict[str, Any]:
    cache, run = ctx.shared / "distill_cache", ctx.shared / "distill"
    tiny = write_distill_tiny(ctx.shared / "distill_tiny.yaml", cache)
    res = ctx.must(distill_args(ctx, tiny, run))
    return {"dir": run, "cache": cache, "tiny": tiny, "outcome": res}


FIXTURES: dict[str, Callable[[Ctx], Any]] = {
    "sweep": fx_sweep, "cv": fx_cv, "fit": fx_fit, "multilabel_data": fx_multilabel_data,
    "multilabel_run": fx_multilabel_run, "distill": fx_distill}


# ------------------------------------------------------------------ what the checks read
def read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except (OSError, ValueError) as err:
        return None, f"{path} is unreadable ({type(err).__name__})"


def sweep_state_problems(out: Path) -> list[str]:
    """Every entry of ``<out>/sweep.json`` says what its run's own results.json says."""
    index, why = read_json(out / "sweep.json")
    if index is None:
        return [f"no sweep.json: {why}"]
    problems = []
    for entry in index.get("runs", []):
        data, why = read_json(out / entry.get("results", f"{entry.get('name')}/results.json"))
        status = entry.get("status")
        if data is None:
            if status in ("done", "running"):
                problems.append(f"sweep.json says {entry.get('name')} {status}; its results.json: {why}")
            continue
        own = data.get("status") or "done"
        if own != status:
            problems.append(f"sweep.json says {entry.get('name')} {status}; its results.json says {own}")
    return problems


def results_status(run: Path) -> str | None:
    data, _ = read_json(run / "results.json")
    return None if data is None else str(data.get("status") or "done")


def failure_record_problems(run: Path, names: str | None = None) -> list[str]:
    """A failed run leaves results.json with status failed and its error (naming ``names`` when given)."""
    data, why = read_json(run / "results.json")
    if data is None:
        if run.exists() and not any(run.iterdir()):
            return [f"empty run folder {run}"]
        if run.exists():
            return [f"run folder {run} without a record: {why}"]
        return []  # refused before the run folder was made: nothing to record
    problems = []
    if data.get("status") != "failed":
        problems.append(f"results.json status {data.get('status')!r}, not 'failed'")
    if not data.get("error"):
        problems.append("results.json has no error")
    elif names and names not in str(data["error"]):
        problems.append(f"results.json error does not name {names}")
    return problems


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_line(res: Outcome) -> str:
    return next((line for line in res.lines if line.startswith("lit-exp: error")), "")


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def problems_if(cond: bool, text: str) -> list[str]:
    return [text] if cond else []


# ------------------------------------------------------------------ the cases
@dataclass
class Case:
    id: str
    before: str  # the "before" (short)
    command: Callable[[Ctx, Path, dict], list[str]]  # argv after lit-exp (or after ``program``)
    check: Callable[[Ctx, Path, dict, Outcome], list[str]]  # data lost or misstated: why (empty: no)
    setup: Callable[[Ctx, Path, dict], None] | None = None
    interrupt: Callable[[Path, dict], bool] | None = None  # SIGINT to the group once true
    delay_s: float = 0.0
    program: list[str] | None = None  # a command that is not lit-exp (run in the repo)
    group: str = ""


CASES: list[Case] = []


def case(id: str, before: str, group: str, **kw: Any) -> Callable[[Callable], Callable]:
    """Decorate a check function; the command/setup come as keyword arguments."""
    def wrap(check: Callable) -> Callable:
        CASES.append(Case(id=id, before=before, check=check, group=group, **kw))
        return check
    return wrap


# ---- sweeps
def _ctrl_c_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["out"] = work / "sw"


def _ctrl_c_training(work: Path, st: dict) -> bool:
    return (st["out"] / "hidden=8__seed0" / "stages" / "00_encoder").is_dir()


@case("sweep-ctrl-c", "Ctrl-C: run recorded `failed` (results.json says interrupted), the sweep goes on", "sweep",
      setup=_ctrl_c_setup, interrupt=_ctrl_c_training, delay_s=1.0,
      command=lambda ctx, work, st: ["sweep", "-c", ctx.config("toy/curriculum.yaml"), "-c",
                                     str(ctx.shared / "long.yaml"), "--grid", "model.init_args.hidden=8,16",
                                     "--seeds", "0", "--out", str(st["out"])])
def _(ctx, work, st, res):
    out = st["out"]
    p = sweep_state_problems(out)
    index, _ = read_json(out / "sweep.json")
    states = [r.get("status") for r in (index or {}).get("runs", [])]
    p += problems_if(states[:1] != ["interrupted"], f"interrupted run recorded as {states[:1]}")
    p += problems_if("pending" not in states[1:] or (out / "hidden=16__seed0").exists(),
                     f"the sweep went on after Ctrl-C: {states}")
    p += problems_if(res.code == 0, "exit 0 after Ctrl-C")
    p += problems_if("run the same command again" not in res.text, "does not say how to continue")
    return p


def _two_setup(ctx: Ctx, work: Path, st: dict) -> None:
    out = st["out"] = work / "sw"
    first = sweep_args(ctx, out, grid="model.init_args.hidden=8,16,24,32", seeds="0",
                       data=str(ctx.shared / "mid.yaml"))
    st["first"] = threading.Thread(target=lambda: st.setdefault("first_res", ctx.lit(first)), daemon=True)
    st["first"].start()
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "sweep.json").is_file() and (out / ".sweep.lock").is_file()):
        time.sleep(0.1)


@case("sweep-two-on-one-out", "two sweeps on one --out both print success; sweep.json lists the other's runs "
      "as running / pending", "sweep", setup=_two_setup,
      command=lambda ctx, work, st: sweep_args(ctx, st["out"], grid="model.init_args.hidden=64", seeds="0"))
def _(ctx, work, st, res):
    st["first"].join()
    first = st["first_res"]
    out = st["out"]
    p = sweep_state_problems(out)
    p += problems_if(first.code != 0, f"the first sweep ended {first.code}")
    p += problems_if(res.code == 0, "the second sweep over the same folder ran too")
    p += problems_if(res.code != 0 and "another sweep" not in res.text, "the refusal does not name the holder")
    index, _ = read_json(out / "sweep.json")
    p += problems_if([r.get("status") for r in (index or {}).get("runs", [])] != ["done"] * 4,
                     "the first sweep's 4 runs are not all listed done")
    return p


def _copy_sweep(ctx: Ctx, work: Path, st: dict) -> dict:
    fx = ctx.fixture("sweep")
    out = st["out"] = copy(fx["dir"], work / "sw")
    st["args"] = fx["args"](out)
    index, _ = read_json(out / "sweep.json")
    return index


def _truncated_setup(ctx: Ctx, work: Path, st: dict) -> None:
    index = _copy_sweep(ctx, work, st)
    st["bad"] = st["out"] / index["runs"][1]["results"]
    truncate(st["bad"], 40)


@case("sweep-rerun-truncated", "rerun over a truncated results.json: bare JSONDecodeError naming no file", "sweep",
      setup=_truncated_setup, command=lambda ctx, work, st: st["args"])
def _(ctx, work, st, res):
    p = sweep_state_problems(st["out"])
    p += problems_if(res.code != 0, f"the rerun ended {res.code}")
    p += problems_if(f"{st['bad']} is unreadable" not in res.text, "the truncated file is not named")
    index, _ = read_json(st["out"] / "sweep.json")
    p += problems_if(any(r.get("status") != "done" for r in (index or {}).get("runs", [])), "a run is not done")
    return p


def _stale_setup(ctx: Ctx, work: Path, st: dict) -> None:
    index = _copy_sweep(ctx, work, st)
    index["runs"][0]["status"] = "running"  # what a second sweep over the folder (or a killed one) left behind
    index["runs"][1]["status"] = "pending"
    (st["out"] / "sweep.json").write_text(json.dumps(index))


@case("sweep-states-reconciled", "sweep.json lists another sweep's finished runs as running / pending", "sweep",
      setup=_stale_setup, command=lambda ctx, work, st: st["args"])
def _(ctx, work, st, res):
    return sweep_state_problems(st["out"]) + problems_if(res.code != 0, f"the rerun ended {res.code}")


def _print_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["out"] = work / "sw"


def printed(res: Outcome) -> list[list[str]]:
    return [shlex.split(line)[1:] for line in res.out.splitlines() if line.startswith("lit-exp ")]


@case("sweep-print-index", "--print (SLURM route) writes no sweep.json", "sweep", setup=_print_setup,
      command=lambda ctx, work, st: sweep_args(ctx, st["out"], seeds="0", extra=["--print"]))
def _(ctx, work, st, res):
    index, why = read_json(st["out"] / "sweep.json")
    if index is None:
        return [f"no sweep.json: {why}"]
    runs = index.get("runs", [])
    p = problems_if(not runs or any(r.get("status") != "pending" for r in runs), "planned runs not listed pending")
    p += problems_if([shlex.split(r.get("command", ""))[1:] for r in runs] != printed(res),
                     "sweep.json commands differ from the printed ones")
    return p + problems_if(any(st["out"].glob("*/results.json")), "--print ran something")


def _print_report_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["out"] = work / "sw"
    res = ctx.must(sweep_args(ctx, st["out"], seeds="0", extra=["--print"]))
    for args in printed(res):  # what a SLURM array would run
        ctx.must(args)


@case("report-after-print", "`lit-exp report` refuses a --print sweep folder (no sweep.json)", "sweep",
      setup=_print_report_setup, command=lambda ctx, work, st: ["report", str(st["out"]), "--out", str(work / "rep")])
def _(ctx, work, st, res):
    text = (work / "rep" / "report.md").read_text() if (work / "rep" / "report.md").is_file() else ""
    return (problems_if(res.code != 0 or not text, "no report over the printed sweep")
            + problems_if(text and not all(v in text for v in ("hidden=8", "hidden=16")), "a variant is missing"))


@case("sweep-wandb-run-dir", "--wandb-sweep gives every agent the same run_dir", "sweep", setup=_print_setup,
      command=lambda ctx, work, st: sweep_args(ctx, st["out"], seeds="0", extra=["--wandb-sweep",
                                                                                  str(work / "wb.yaml")]))
def _(ctx, work, st, res):
    try:
        spec = yaml.safe_load((work / "wb.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        return [f"no wandb sweep file: {err}"]
    cmd = [str(a) for a in spec.get("command", [])]
    run_dir = cmd[cmd.index("--trainer.run_dir") + 1] if "--trainer.run_dir" in cmd else ""
    p = problems_if("{wandb_run_id}" not in run_dir, f"every agent writes {run_dir or 'the default run_dir'}")
    if not p:  # one agent's run lands in a folder of its own
        args = [a for a in cmd[1:] if a != "${args}"] + ["--model.init_args.hidden", "8", "--seed_everything", "0"]
        agent = ctx.lit(args, env={"WANDB_RUN_ID": "agent1"})
        p += problems_if(results_status(Path(run_dir.replace("{wandb_run_id}", "agent1"))) != "done",
                         f"the agent's run did not land in its own folder (exit {agent.code})")
    return p


def one_epoch_problems(out: Path) -> list[str]:
    """The per-run override ``--trainer.max_epochs 1`` reached every run's own config.yaml."""
    p: list[str] = []
    for cfg in out.glob("*/config.yaml"):
        epochs = (yaml.safe_load(cfg.read_text()).get("trainer") or {}).get("max_epochs")
        p += problems_if(epochs != 1, f"{cfg} has max_epochs {epochs}")
    return p


@case("sweep-overrides", "sweep takes no per-run overrides (--trainer.max_epochs 1 rejected)", "sweep",
      setup=_print_setup, command=lambda ctx, work, st: sweep_args(ctx, st["out"], grid="model.init_args.hidden=8",
                                                                   seeds="0"))
def _(ctx, work, st, res):
    p = sweep_state_problems(st["out"]) + problems_if(res.code != 0, f"exit {res.code}")
    p += one_epoch_problems(st["out"])
    return p


@case("sweep-override-typo", "(a misspelt per-run override is found only when a run starts)", "sweep",
      setup=_print_setup,
      command=lambda ctx, work, st: ["sweep", "-c", ctx.config("toy/curriculum.yaml"), "-c", ctx.tiny, "--grid",
                                     "model.init_args.hidden=8,16", "--trainer.max_epoch", "1", "--out",
                                     str(st["out"])])
def _(ctx, work, st, res):
    return (problems_if(res.code == 0, "exit 0") + problems_if(any(st["out"].glob("*/results.json")),
                                                              "runs trained before the typo was found")
            + problems_if("--trainer.max_epoch" not in res.text, "the key is not named"))


@case("cv-overrides", "cv takes no per-run overrides; shortening it means a delta file", "cv", setup=_print_setup,
      command=lambda ctx, work, st: ["cv", "-c", ctx.config("toy/fit.yaml"), "-c", ctx.tiny, "--trainer.max_epochs",
                                     "1", "--folds", "2", "--out", str(st["out"])])
def _(ctx, work, st, res):
    p = sweep_state_problems(st["out"]) + problems_if(res.code != 0, f"exit {res.code}")
    p += problems_if(not (st["out"] / "cv.json").is_file(), "no cv.json")
    p += one_epoch_problems(st["out"])
    return p


@case("cv-select-typo", "cv --select misspelt: found after every fold of every variant trained; no cv.json", "cv",
      setup=_print_setup,
      command=lambda ctx, work, st: ["cv", "-c", ctx.config("toy/fit.yaml"), "-c", ctx.tiny, "--trainer.max_epochs",
                                     "1", "--folds", "3", "--grid", "data.init_args.batch_size=8,16", "--select",
                                     "val/acuracy", "--out", str(st["out"])])
def _(ctx, work, st, res):
    trained = len(list(st["out"].glob("*/results.json")))
    saved, why = read_json(st["out"] / "cv.json")
    p = problems_if(res.code == 0, "exit 0") + problems_if(trained > 1, f"{trained} of 6 runs trained first")
    p += problems_if(trained and saved is None, f"a run trained and no cv.json: {why}")
    p += problems_if("did you mean" not in res.text, "no nearest metric named")
    return p + (sweep_state_problems(st["out"]) if (st["out"] / "sweep.json").exists() else [])


# ---- report
def _half_setup(ctx: Ctx, work: Path, st: dict) -> None:
    index = _copy_sweep(ctx, work, st)
    out = st["out"]
    running, pending = index["runs"][-2], index["runs"][-1]
    (out / running["results"]).unlink()  # still training: its folder, no record yet
    shutil.rmtree(out / pending["run_dir"])  # not started
    running["status"], pending["status"] = "running", "pending"
    (out / "sweep.json").write_text(json.dumps(index))
    st["unfinished"] = [running["name"], pending["name"]]


def _report_text(work: Path) -> str:
    path = work / "rep" / "report.md"
    return path.read_text() if path.is_file() else ""


@case("report-half-finished", "over a half-finished sweep: 79 false 'differs besides the studied factor' "
      "warnings", "report", setup=_half_setup,
      command=lambda ctx, work, st: ["report", str(st["out"]), "--out", str(work / "rep")])
def _(ctx, work, st, res):
    text = _report_text(work)
    p = problems_if(res.code != 0 or not text, f"no report (exit {res.code})")
    p += problems_if("differs besides the studied factor" in text or "differs within variant" in text,
                     "false 'differs' flags")
    return p + [f"{name} not listed as unfinished" for name in st["unfinished"] if name not in text]


def _studies_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["a"], st["b"] = ctx.fixture("fit")["dir"], ctx.fixture("multilabel_run")["dir"]


@case("report-different-studies", "pairs runs of different studies by seed and prints deltas", "report",
      setup=_studies_setup,
      command=lambda ctx, work, st: ["report", f"toy={st['a']}", f"multilabel={st['b']}", "--out", str(work / "rep")])
def _(ctx, work, st, res):
    return (problems_if(res.code == 0, "runs of two studies were compared")
            + problems_if("different studies" not in res.text, "the refusal does not say why"))


def _sweep_copy_setup(ctx: Ctx, work: Path, st: dict) -> None:
    _copy_sweep(ctx, work, st)


@case("report-metric-typo", "a misspelt --metric exits 0 with empty tables", "report", setup=_sweep_copy_setup,
      command=lambda ctx, work, st: ["report", str(st["out"]), "--metric", "test/accc", "--out", str(work / "rep")])
def _(ctx, work, st, res):
    return (problems_if(res.code == 0, "exit 0") + problems_if("did you mean" not in res.text, "no nearest metric")
            + problems_if((work / "rep").exists(), "a report was written"))


def _report_truncated_setup(ctx: Ctx, work: Path, st: dict) -> None:
    index = _copy_sweep(ctx, work, st)
    st["bad_run"] = index["runs"][1]["name"]
    truncate(st["out"] / index["runs"][1]["results"], 30)
    st["others"] = [r["name"] for r in index["runs"] if r["name"] != st["bad_run"]]


@case("report-truncated-results", "one truncated results.json blocks the whole report", "report",
      setup=_report_truncated_setup, command=lambda ctx, work, st: ["report", str(st["out"]), "--out",
                                                                     str(work / "rep")])
def _(ctx, work, st, res):
    text = _report_text(work)
    p = problems_if(res.code != 0 or not text, f"no report (exit {res.code})")
    line = next((ln for ln in text.splitlines() if ln.startswith(f"| {st['bad_run']} ")), "")
    p += problems_if("unreadable" not in line, f"{st['bad_run']} not listed as unreadable")
    index, _ = read_json(st["out"] / "sweep.json")
    n = {}
    for ln in text.splitlines():
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if ln.startswith("| hidden=") and len(cells) > 2 and cells[1].isdigit():
            n.setdefault(cells[0], int(cells[1]))
    p += problems_if(n and sum(n.values()) != len(st["others"]), f"runs reported {n}, expected {len(st['others'])}")
    return p


def _cv_copy_setup(ctx: Ctx, work: Path, st: dict) -> None:
    fx = ctx.fixture("cv")
    st["out"] = copy(fx["dir"], work / "cv")
    st["args"] = fx["args"](st["out"])


@case("report-after-cv", "after `cv --test best` the report shows one test number per variant, not the folds",
      "report", setup=_cv_copy_setup,
      command=lambda ctx, work, st: ["report", str(st["out"]), "--out", str(work / "rep")])
def _(ctx, work, st, res):
    text = _report_text(work)
    titles = [ln[3:] for ln in text.splitlines() if ln.startswith("## Metric ")]
    p = problems_if(res.code != 0 or not titles, f"no metric table (exit {res.code})")
    p += problems_if(bool(titles) and "val/" not in titles[0], f"the first table is {titles[:1]}, not the folds'")
    return p + problems_if("folds" not in text, "the variance source is not the folds")


def _figures_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["run"] = ctx.fixture("distill")["dir"]
    st["figures"] = sorted(p.relative_to(st["run"]).as_posix() for p in st["run"].rglob("*.png")
                           if "thumbs" not in p.parts)


@case("report-figures-linked", "a run's figures (e.g. per_class.png) are not in the report", "report",
      setup=_figures_setup, command=lambda ctx, work, st: ["report", str(st["run"]), "--out", str(work / "rep")])
def _(ctx, work, st, res):
    text = _report_text(work)
    missing = [f for f in st["figures"] if f not in text]
    return problems_if(not st["figures"], "the run wrote no figure") + [f"{f} not linked" for f in missing]


# ---- every failure leaves a record
def _health_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["run"] = work / "run"


@case("fit-failed-record", "a failed fit writes no results.json", "record", setup=_health_setup,
      command=lambda ctx, work, st: ["fit", "-c", ctx.config("toy/fit.yaml"), "-c", ctx.tiny,
                                     "--trainer.max_epochs", "2", "--model.init_args.optimizer.lr", "1e30",
                                     "--trainer.run_dir", str(st["run"])])
def _(ctx, work, st, res):  # a diverging fit: the health guard stops it
    return (problems_if(res.code == 0, "exit 0") + problems_if(not (st["run"] / "results.json").is_file(),
                                                              "no results.json")
            + failure_record_problems(st["run"], "not finite"))


@case("fit-trains-nothing", "a stage that trains nothing can still end `done` (plain fit, "
      "limit_train_batches=0)", "record", setup=_health_setup,
      command=lambda ctx, work, st: ["fit", "-c", ctx.config("toy/fit.yaml"), "-c", ctx.tiny,
                                     "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "0",
                                     "--trainer.run_dir", str(st["run"])])
def _(ctx, work, st, res):
    return (problems_if(res.code == 0, "exit 0") + problems_if(results_status(st["run"]) == "done", "ended done")
            + failure_record_problems(st["run"]))


def _coco_setup(ctx: Ctx, work: Path, st: dict) -> None:
    root = st["root"] = work / "coco"
    for split, n, seed in (("pool", 12, "0"), ("test", 4, "1")):
        ctx.must(["data", "shapes", "--format", "coco", "--out", str(root / split), "--n", str(n), "--seed", seed,
                  "--image-size", "16", "--max-objects", "2"])
    ann_path = root / "pool" / "annotations" / "instances.json"
    ann = json.loads(ann_path.read_text())
    ann["annotations"][2]["image_id"] = 987654
    ann_path.write_text(json.dumps(ann))
    st["tiny"], st["run"] = ctx.fixture("multilabel_data")["tiny"], work / "run"


@case("coco-missing-image", "a COCO annotation naming a missing image leaves an empty run folder", "record",
      setup=_coco_setup,
      command=lambda ctx, work, st: multilabel_args(ctx, st["tiny"], st["root"], st["run"], files=False))
def _(ctx, work, st, res):
    return (problems_if(res.code == 0, "exit 0") + problems_if("987654" not in error_line(res),
                                                               "the error does not name the image id")
            + failure_record_problems(st["run"], "987654"))


def _bad_png_setup(ctx: Ctx, work: Path, st: dict) -> None:
    data = ctx.fixture("multilabel_data")
    st["root"] = copy(data["root"], work / "labels")
    st["bad"] = sorted((st["root"] / "images").glob("*.png"))[1]
    truncate(st["bad"])
    st["tiny"], st["run"] = data["tiny"], work / "run"


@case("bad-sample-skip-counted", "samples skipped with on_bad_sample: skip are not counted in results.json",
      "record", setup=_bad_png_setup,
      command=lambda ctx, work, st: multilabel_args(ctx, st["tiny"], st["root"], st["run"])
      + ["--data.init_args.source.init_args.on_bad_sample", "skip"])
def _(ctx, work, st, res):
    data, why = read_json(st["run"] / "results.json")
    if data is None:
        return [f"no results.json: {why}"]
    skipped = data.get("data") or {}
    return (problems_if(skipped.get("skipped_samples") != 1, f"skipped_samples {skipped.get('skipped_samples')}")
            + problems_if(str(st["bad"]) not in skipped.get("skipped_files", []), "the skipped file is not named"))


def _undefined_setup(ctx: Ctx, work: Path, st: dict) -> None:
    _cv_copy_setup(ctx, work, st)
    index, _ = read_json(st["out"] / "sweep.json")
    run = index["runs"][1]  # a run whose metric came out NaN: results.json writes null (strict JSON)
    path = st["out"] / run["results"]
    data = json.loads(path.read_text())
    data["final"]["val/acc"] = None
    path.write_text(json.dumps(data))
    st["run"], st["variant"] = run["name"], run["variant"]
    (st["out"] / "cv.json").unlink()


@case("cv-undefined-metric", "a metric undefined for one variant vanishes instead of null and listed", "record",
      setup=_undefined_setup, command=lambda ctx, work, st: st["args"])
def _(ctx, work, st, res):
    saved, why = read_json(st["out"] / "cv.json")
    if saved is None:
        return [f"no cv.json: {why}"]
    metric = ((saved.get("variants") or {}).get(st["variant"]) or {}).get("val/acc")
    p = problems_if(metric is None, f"val/acc of {st['variant']} vanished from cv.json")
    p += problems_if(bool(metric) and metric.get("mean") is not None, "averaged over the defined runs only")
    listed = [u for u in saved.get("undefined", []) if st["run"] in u.get("runs", [])]
    p += problems_if(not listed, "not listed as undefined")
    return p + problems_if(f"undefined in {st['run']}" not in res.text, "not said on the console")


def _zero_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["delta"] = work / "zero.yaml"
    st["delta"].write_text("stages:\n  - {name: head, max_epochs: 0}\n")
    st["run"] = work / "run"


@case("stage-trains-nothing", "a stage configured to train nothing can end `done`", "record", setup=_zero_setup,
      command=lambda ctx, work, st: ["curriculum", "-c", ctx.config("toy/curriculum.yaml"), "-c", ctx.tiny, "-c",
                                     str(st["delta"]), "--trainer.run_dir", str(st["run"])])
def _(ctx, work, st, res):
    return (problems_if(res.code == 0, "exit 0") + problems_if(results_status(st["run"]) == "done", "ended done")
            + problems_if("trains nothing" not in res.text, "not said why") + failure_record_problems(st["run"]))


@case("stage-runs-no-batch", "a stage whose trainer runs no batch (limit_train_batches=0) ends `done`", "record",
      setup=_health_setup,
      command=lambda ctx, work, st: ["curriculum", "-c", ctx.config("toy/curriculum.yaml"), "-c", ctx.tiny,
                                     "--trainer.limit_train_batches", "0", "--trainer.run_dir", str(st["run"])])
def _(ctx, work, st, res):
    data, _ = read_json(st["run"] / "results.json")
    stage = ((data or {}).get("stages") or {}).get("encoder") or {}
    return (problems_if(res.code == 0, "exit 0") + problems_if(stage.get("status") != "failed",
                                                              f"stage encoder {stage.get('status')}")
            + failure_record_problems(st["run"]))


@case("only-selects-nothing", "an --only that selects nothing exits 0", "record", setup=_health_setup,
      command=lambda ctx, work, st: ["curriculum", "-c", ctx.config("toy/curriculum.yaml"), "-c", ctx.tiny,
                                     "--trainer.run_dir", str(st["run"]), "--only", ","])
def _(ctx, work, st, res):
    return (problems_if(res.code == 0, "exit 0") + problems_if(results_status(st["run"]) == "done", "ended done")
            + problems_if("selects no stage" not in res.text, "not said why"))


# ---- corruption names the file
def _standin_setup(ctx: Ctx, work: Path, st: dict) -> None:
    fx = ctx.fixture("distill")
    cache = copy(fx["cache"], work / "cache")
    (st["bad"],) = sorted(cache.glob("sam3-standin-*.pt"))
    st["bad"].write_bytes(bytes(range(256)) * 64)
    st["tiny"] = write_distill_tiny(work / "tiny.yaml", cache)
    st["run"] = work / "run"


def _names_file_no_unsafe(res: Outcome, path: Path) -> list[str]:
    return (problems_if(res.code == 0, "exit 0") + problems_if(str(path) not in error_line(res),
                                                              "the error does not name the file")
            + problems_if("weights_only" in res.text, "advises weights_only=False")
            + problems_if("Union subtypes" in res.text, "a 'Union subtypes' block"))


@case("standin-cache-corrupt", "a corrupt stand-in cache: 'Union subtypes' block naming no file; random bytes "
      "advise weights_only=False", "corruption", setup=_standin_setup,
      command=lambda ctx, work, st: distill_args(ctx, st["tiny"], st["run"]))
def _(ctx, work, st, res):
    return _names_file_no_unsafe(res, st["bad"]) + failure_record_problems(st["run"])


def _teacher_cache_setup(ctx: Ctx, work: Path, st: dict) -> None:
    fx = ctx.fixture("distill")
    cache = copy(fx["cache"], work / "cache")
    st["bad"] = sorted(cache.glob("distill-teacher-*/shard_*.npy"))[0]
    data = st["bad"].read_bytes()
    st["bad"].write_bytes(data[:-64] + bytes(b ^ 0xFF for b in data[-64:]))  # same length: only a checksum sees it
    st["tiny"] = write_distill_tiny(work / "tiny.yaml", cache)
    st["run"] = work / "run"


@case("teacher-cache-corrupt", "teacher-output caches were not checksummed like the feature cache", "corruption",
      setup=_teacher_cache_setup, command=lambda ctx, work, st: distill_args(ctx, st["tiny"], st["run"]))
def _(ctx, work, st, res):
    if res.code == 0:  # rebuilt: acceptable only when the damaged cache was said and not read
        return problems_if(f"{st['bad'].parent.name}" not in res.text, "the damaged cache was read silently")
    return _names_file_no_unsafe(res, st["bad"].parent) + failure_record_problems(st["run"])


def _ckpt_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["bad"] = work / "final.ckpt"
    st["bad"].write_bytes(bytes(range(256)) * 16)
    st["run"] = work / "run"


@case("checkpoint-random-bytes", "a random-bytes checkpoint advises loading with weights_only=False",
      "corruption", setup=_ckpt_setup,
      command=lambda ctx, work, st: ["test", "-c", ctx.config("toy/fit.yaml"), "-c", ctx.tiny, "--ckpt_path",
                                     str(st["bad"]), "--trainer.run_dir", str(st["run"])])
def _(ctx, work, st, res):
    return _names_file_no_unsafe(res, st["bad"])


def _strict_png_setup(ctx: Ctx, work: Path, st: dict) -> None:
    _bad_png_setup(ctx, work, st)


@case("truncated-png", "a truncated PNG prints 3-4 chained tracebacks (96 lines) before its good last line",
      "corruption", setup=_strict_png_setup,
      command=lambda ctx, work, st: multilabel_args(ctx, st["tiny"], st["root"], st["run"]))
def _(ctx, work, st, res):
    return (problems_if(str(st["bad"]) not in error_line(res), "the error does not name the image")
            + problems_if("direct cause" in res.text, "chained exceptions") + problems_if(res.code == 0, "exit 0")
            + failure_record_problems(st["run"], str(st["bad"])))


def _movi_setup(ctx: Ctx, work: Path, st: dict) -> None:
    for split in ("train", "validation"):
        ctx.must(["data", "shapes", "--format", "movi", "--out", str(work / "movi" / split), "--n", "6",
                  "--image-size", "32", "--num-frames", "3"])
    st["bad"] = sorted((work / "movi" / "train").glob("*.npz"))[0]
    truncate(st["bad"], 300)
    st["delta"] = work / "movi.yaml"
    st["delta"].write_text(
        "data:\n  init_args:\n    source:\n      class_path: lit_experiments.studies.slots.sources.MoviClipSplits\n"
        f"      init_args: {{root: {work / 'movi'}, folders: {{train: train, val: train, test: validation}}, "
        "val_fraction: 0.25}\n    cache_dir: null\nstages:\n  - {name: slots, max_steps: 2}\n")
    st["run"] = work / "run"


@case("truncated-movi-clip", "a truncated MOVi clip prints chained tracebacks before its good last line",
      "corruption", setup=_movi_setup,
      command=lambda ctx, work, st: ["curriculum", "-c", ctx.config("slots/demo.yaml"), "-c", str(st["delta"]),
                                     "--trainer.run_dir", str(st["run"])])
def _(ctx, work, st, res):
    return (problems_if(str(st["bad"]) not in error_line(res), "the error does not name the clip")
            + problems_if("direct cause" in res.text, "chained exceptions") + problems_if(res.code == 0, "exit 0")
            + failure_record_problems(st["run"], str(st["bad"])))


def _deploy_setup(ctx: Ctx, work: Path, st: dict) -> None:
    fx = ctx.fixture("fit")
    st["run"] = copy(fx["dir"], work / "run")
    st["ckpt"] = st["run"] / fx["ckpt"].relative_to(fx["dir"])
    config = yaml.safe_load((st["run"] / "config.yaml").read_text())
    config["trainer"]["run_dir"] = str(st["run"])  # the copied run is the run these tools read
    (st["run"] / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    st["before"] = digest(st["run"] / "results.json")


@case("quantize-own-folder", "quantize rewrites the run's results.json (run folders are records)", "corruption",
      setup=_deploy_setup,
      command=lambda ctx, work, st: ["quantize", "-c", str(st["run"] / "config.yaml"), "--ckpt", str(st["ckpt"]),
                                     "--mode", "fp32,int8_weight_only", "--repeats", "1", "--threads", "1"])
def _(ctx, work, st, res):
    return (problems_if(digest(st["run"] / "results.json") != st["before"], "the run's results.json was rewritten")
            + problems_if(res.code != 0, f"exit {res.code}")
            + problems_if(not list(st["run"].glob("quantize*/quantize.json")), "no quantize.json of its own"))


@case("export-part-verdicts", "export.json does not record which parts passed", "corruption", setup=_deploy_setup,
      command=lambda ctx, work, st: ["export", "-c", str(st["run"] / "config.yaml"), "--ckpt", str(st["ckpt"]),
                                     "--format", "onnx", "--out", str(work / "onnx")])
def _(ctx, work, st, res):
    saved, why = read_json(work / "onnx" / "export.json")
    if saved is None:
        return [f"no export.json: {why}"]
    parts = saved.get("parts") or {}
    items = parts.items() if isinstance(parts, dict) else [(p.get("name"), p) for p in parts]
    verdicts = {name: (p.get("verdict") or p.get("status") or p.get("passed")) for name, p in items}
    return (problems_if(not verdicts, "no parts in export.json")
            + [f"part {n} has no verdict" for n, v in verdicts.items() if v in (None, "")]
            + problems_if(digest(st["run"] / "results.json") != st["before"], "the run's results.json was rewritten")
            + problems_if(res.code != 0, f"exit {res.code}"))


# ---- console
def _delta_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["delta"] = work / "delta.yaml"
    st["delta"].write_text(f"# base: {ctx.config('toy/fit.yaml')}\nmodel:\n  init_args:\n    num_classes: 3\n")


@case("print-config-delta", "--print_config of a delta is not valid YAML (the 'composing' line on stdout)",
      "console", setup=_delta_setup, command=lambda ctx, work, st: ["fit", "-c", str(st["delta"]), "--print_config"])
def _(ctx, work, st, res):
    try:
        parsed = yaml.safe_load(res.out)
    except yaml.YAMLError as err:
        return [f"stdout is not YAML: {str(err).splitlines()[0]}"]
    return (problems_if(not isinstance(parsed, dict) or "model" not in parsed, "stdout is not the config")
            + problems_if(res.code != 0, f"exit {res.code}"))


def _typo_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["part"] = work / "part.yaml"
    st["part"].write_text("# a delta\nmodel:\n  init_args: {hiden: 3}\n")


@case("nested-key-typo", "a nested-key typo names neither the file nor the nearest key", "console",
      setup=_typo_setup, command=lambda ctx, work, st: ["fit", "-c", ctx.config("toy/fit.yaml"), "-c",
                                                        str(st["part"]), "--print_config"])
def _(ctx, work, st, res):
    return (problems_if(res.code == 0, "exit 0") + problems_if(f"{st['part']}:3" not in res.text,
                                                              "the file and line are not named")
            + problems_if("did you mean 'hidden'" not in res.text, "no nearest key"))


WARNING = re.compile(r"\b(DeprecationWarning|FutureWarning|deprecated)\b")


def _distill_test_setup(ctx: Ctx, work: Path, st: dict) -> None:
    fx = ctx.fixture("distill")
    st["run"] = fx["dir"]
    st["ckpt"] = sorted(fx["dir"].glob("stages/*/final.ckpt"))[-1]


@case("distill-console", "torch deprecation warnings on every distill command; the test prints ~70 lines, "
      "metrics twice under two names", "console", setup=_distill_test_setup,
      command=lambda ctx, work, st: ["test", "-c", str(st["run"] / "config.yaml"), "--ckpt_path", str(st["ckpt"]),
                                     "--trainer.run_dir", str(work / "run")])
def _(ctx, work, st, res):
    noise = [line for line in res.lines if WARNING.search(line)]
    names = [name for name, _ in printed_metrics(res)]
    p = [f"deprecation noise: {noise[0].strip()[:100]}"] if noise else []
    return p + problems_if(not names, "no metric printed") \
        + problems_if(len(names) != len(set(names)), f"a metric printed twice ({len(names)} rows)") \
        + problems_if(res.code != 0, f"exit {res.code}")


def _fit_setup(ctx: Ctx, work: Path, st: dict) -> None:
    st["run"] = work / "run"


def printed_metrics(res: Outcome) -> list[tuple[str, float]]:
    """``(name, value)`` of every metric row printed: the workbench's ``  name  value`` lines and Lightning's
    ``│ name │ value │`` table rows."""
    out = []
    for line in res.out.splitlines():
        parts = [p for p in re.split(r"[│\s]+", line) if p]
        if len(parts) >= 2 and "/" in parts[0] and (line.startswith("  ") or line.startswith("│")):
            with contextlib.suppress(ValueError):
                out.append((parts[0], float(parts[1])))
    return out


@case("fit-prints-metrics", "fit prints no metric on the console", "console", setup=_fit_setup,
      command=lambda ctx, work, st: ["fit", "-c", ctx.config("toy/fit.yaml"), "-c", ctx.tiny,
                                     "--trainer.max_epochs", "1", "--trainer.run_dir", str(st["run"])])
def _(ctx, work, st, res):
    data, why = read_json(st["run"] / "results.json")
    shown = dict(printed_metrics(res))
    final = (data or {}).get("final") or {}
    p = problems_if("val/acc" not in shown, "val/acc not printed") + problems_if(data is None, f"no record: {why}")
    return p + [f"{k} printed {v}, recorded {final.get(k)}" for k, v in shown.items()
                if k in final and final[k] is not None and abs(final[k] - v) > 5e-5]


def _validate_setup(ctx: Ctx, work: Path, st: dict) -> None:
    fx = ctx.fixture("fit")
    st["config"], st["ckpt"], st["run"] = fx["config"], fx["ckpt"], work / "run"


@case("validate-prints-metrics", "validate prints no metric on the console", "console", setup=_validate_setup,
      command=lambda ctx, work, st: ["validate", "-c", str(st["config"]), "--ckpt_path", str(st["ckpt"]),
                                     "--trainer.run_dir", str(st["run"])])
def _(ctx, work, st, res):
    return problems_if(not any(k.startswith("val/") for k, _ in printed_metrics(res)), "no val metric printed") \
        + problems_if(res.code != 0, f"exit {res.code}")


def _readme_intro(ctx: Ctx) -> str:
    text = (ctx.repo / "README.md").read_text()
    return text.split("\n## ", 1)[0]


@case("readme-intro", "the README intro still calls distill and multilabel 'planned'", "console",
      program=["sed", "-n", "/^## /q;p"], command=lambda ctx, work, st: [str(ctx.repo / "README.md")])
def _(ctx, work, st, res):
    intro = _readme_intro(ctx)
    return problems_if(bool(re.search(r"\bplanned\b", intro, re.I)), "the intro says 'planned'") \
        + [f"the intro does not name {s}" for s in ("distill", "multilabel") if s not in intro]


# ------------------------------------------------------------------ running cases
@dataclass
class Row:
    id: str
    group: str
    before: str
    command: str = ""
    exit: int | None = None
    lines: int = 0
    first_line: str = ""
    error_line: str = ""
    traceback: bool = False
    data_lost: bool = False
    why: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    setup_error: str = ""
    noise: int = 0  # third-party deprecation / future warning lines (not data: counted, not failed)


def run_case(ctx: Ctx, c: Case) -> Row:
    work = ctx.work / c.id
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    st: dict[str, Any] = {}
    row = Row(c.id, c.group, c.before)
    start = time.perf_counter()
    try:
        if c.setup:
            c.setup(ctx, work, st)
        argv = c.command(ctx, work, st)
        row.command = shlex.join(["lit-exp" if c.program is None else c.program[0], *map(str, argv)])
        interrupt = (lambda: c.interrupt(work, st)) if c.interrupt else None
        res = ctx.lit(argv, cwd=work if c.program is None else ctx.repo, interrupt=interrupt, delay_s=c.delay_s,
                      program=c.program)
        row.exit, row.lines = res.code, len(res.lines)
        row.first_line = next((line for line in res.lines if line.strip()), "")
        row.error_line = error_line(res)
        row.traceback = TRACEBACK in res.text
        row.noise = sum(1 for line in res.lines if WARNING.search(line))
        row.why = list(c.check(ctx, work, st, res))
        row.data_lost = bool(row.why)
        (work / "output.txt").write_text(res.text + "\n")
    except Exception as exc:  # noqa: BLE001 - a broken setup is reported as such, never as a pass
        row.setup_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row.data_lost = True
        row.why = [f"case could not run: {row.setup_error}"]
        (work / "setup_error.txt").write_text(str(exc))
    row.wall_s = round(time.perf_counter() - start, 1)
    return row


def md_cell(text: str, width: int = 90) -> str:
    text = text.replace("|", "\\|").replace("\n", " ").strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: list[Row]) -> str:
    head = ["| case | before | exit | lines | first line | traceback | data lost |", "|---|---|---|---|---|---|---|"]
    body = [f"| {r.id} | {md_cell(r.before, 110)} | {r.exit if r.exit is not None else '-'} | {r.lines} | "
            f"`{md_cell(r.first_line, 70)}` | {'yes' if r.traceback else 'no'} | "
            f"{'yes: ' + md_cell('; '.join(r.why), 120) if r.data_lost else 'no'} |" for r in rows]
    return "\n".join(head + body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the clone whose .venv/bin/lit-exp runs (default: "
                        "this repo)")
    parser.add_argument("--only", default="", help="comma-separated case ids (or groups: sweep, cv, report, record, "
                        "corruption, console)")
    parser.add_argument("--jobs", type=int, default=1, help="cases at once (default 1; the machine has 2 cores)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--list", action="store_true", help="print the catalogue and exit")
    args = parser.parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.id:<28} {c.group:<11} {c.before}")
        return 0
    wanted = {w for w in args.only.split(",") if w}
    cases = [c for c in CASES if not wanted or c.id in wanted or c.group in wanted]
    unknown = wanted - {c.id for c in CASES} - {c.group for c in CASES}
    if unknown or not cases:
        parser.error(f"--only {args.only}: unknown case(s) {sorted(unknown)}; see --list")
    exe = args.repo / ".venv" / "bin" / "lit-exp"
    if not exe.is_file():
        parser.error(f"{exe} does not exist (run `make venv` in {args.repo})")
    work = args.work or Path(tempfile.mkdtemp(prefix="faults-"))
    ctx = Ctx(args.repo, work)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.repo, capture_output=True,
                         text=True).stdout.strip()
    print(f"faults: {len(cases)} cases, lit-exp of {args.repo} ({sha}), scratch {work}", flush=True)
    start = time.perf_counter()
    rows: dict[str, Row] = {}

    def one(c: Case) -> Row:
        row = run_case(ctx, c)
        verdict = "ok" if not (row.traceback or row.data_lost) else "FAIL"
        print(f"[{len(rows) + 1:>2}/{len(cases)}] {c.id:<26} exit {row.exit!s:<4} lines {row.lines:<4} "
              f"traceback {'yes' if row.traceback else 'no ':<3} lost {'yes' if row.data_lost else 'no '} "
              f"{row.wall_s:>6.1f} s  {verdict}{'  ' + '; '.join(row.why) if row.why else ''}", flush=True)
        rows[c.id] = row
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, cases))
    ordered = [rows[c.id] for c in cases]
    wall = round(time.perf_counter() - start, 1)
    bad = [r for r in ordered if r.traceback or r.data_lost]
    summary = (f"{len(ordered)} cases on {args.repo} ({sha}): {sum(r.traceback for r in ordered)} with a traceback, "
               f"{sum(r.data_lost for r in ordered)} with lost or misstated data; wall {wall} s"
               + (f"; deprecation-warning lines in {', '.join(r.id for r in ordered if r.noise)}"
                  if any(r.noise for r in ordered) else ""))
    md = f"# Fault cases of issue 25 (bench/faults.py)\n\n{summary}\n\n{table(ordered)}\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "faults.md").write_text(md)
    (OUT / "faults.json").write_text(json.dumps({"repo": str(args.repo), "sha": sha, "wall_s": wall,
                                                 "rows": [r.__dict__ for r in ordered]}, indent=1))
    print("\n" + table(ordered) + "\n\n" + summary + f"\nwritten: {OUT / 'faults.md'}, {OUT / 'faults.json'}")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
